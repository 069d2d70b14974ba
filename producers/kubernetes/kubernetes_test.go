package kubernetes

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8s "k8s.io/client-go/kubernetes"

	"github.com/khook/khook/internal/kubetest"
	"github.com/khook/khook/producers"
	"github.com/khook/khook/producers/producertest"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/streamstest"
)

// row is one line of the classification table.
type row struct {
	name, kind, eventType, reason, note, want string
}

var table = []row{
	{"oomkilling", "Pod", "Warning", "OOMKilling", "Memory cgroup out of memory", OOMKill},
	{"oomkilled", "Pod", "Warning", "OOMKilled", "container api", OOMKill},
	{"killing-oom", "Pod", "Warning", "Killing", "Stopping container api: OOM", OOMKill},
	{"killing-out-of-memory", "Pod", "Warning", "Killed", "process ran out of memory", OOMKill},
	{"killing", "Pod", "Warning", "Killing", "Stopping container api", PodRestart},
	{"backoff", "Pod", "Warning", "BackOff", "Back-off restarting failed container api", PodRestart},
	{"failed-container", "Pod", "Warning", "Failed", "Error: failed to start container api", PodRestart},
	{"failed-image", "Pod", "Warning", "Failed", "Failed to pull image", ""},
	{"failedscheduling", "Pod", "Warning", "FailedScheduling", "0/3 nodes are available", PodPending},
	{"pending", "Pod", "Warning", "Pending", "waiting", PodPending},
	{"note-pending", "Pod", "Warning", "Waiting", "volume attach is still pending", PodPending},
	{"unhealthy-liveness", "Pod", "Warning", "Unhealthy", "Liveness probe failed: HTTP 500", ProbeFailed},
	{"unhealthy-readiness", "Pod", "Warning", "Unhealthy", "Readiness probe failed", ProbeFailed},
	{"unhealthy-startup", "Pod", "Warning", "Unhealthy", "Startup probe failed", ProbeFailed},
	{"probe-reason", "Pod", "Warning", "ProbeWarning", "something", ProbeFailed},
	{"node-not-ready", "Node", "Normal", "NodeNotReady", "Node worker-1 status is now: NodeNotReady", NodeNotReady},
	{"normal-pod", "Pod", "Normal", "Killing", "Stopping container api", ""},
	{"normal-scheduled", "Pod", "Normal", "Scheduled", "assigned", ""},
	{"deployment-warning", "Deployment", "Warning", "BackOff", "x", ""},
	{"custom-rule", "Pod", "Warning", "Evicted", "The node was low on resource: memory", "pod-evicted"},
}

var evicted = []Rule{{Reason: "^evicted$", Type: "pod-evicted"}}

func TestClassifyTable(t *testing.T) {
	rules := append([]Rule(nil), evicted...)
	for i := range rules {
		require.NoError(t, rules[i].compile())
	}
	for _, r := range table {
		e := &eventsv1.Event{Type: r.eventType, Reason: r.reason, Note: r.note, Regarding: corev1.ObjectReference{Kind: r.kind}}
		require.Equal(t, r.want, Classify(e, rules), r.name)
	}
}

// newEvent builds an events.k8s.io/v1 Event about a Pod or Node, happening now.
func newEvent(name, ns string, r row) *eventsv1.Event {
	now := metav1.NowMicro()
	return &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: name, Namespace: ns},
		EventTime:           now,
		ReportingController: "kubelet",
		ReportingInstance:   "worker-1",
		Action:              "Test",
		Type:                r.eventType,
		Reason:              r.reason,
		Note:                r.note,
		Regarding:           corev1.ObjectReference{Kind: r.kind, Name: "obj-" + r.name, Namespace: ns, APIVersion: "v1"},
	}
}

// recorder is an Emit that keeps what it is given.
type recorder struct {
	mu     sync.Mutex
	events map[string]producers.Event // by id
	dups   int
}

func (r *recorder) emit(_ context.Context, ev producers.Event) (producers.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, dup := r.events[ev.ID]
	if dup {
		r.dups++
	}
	r.events[ev.ID] = ev
	return producers.Result{ID: ev.ID, Duplicate: dup}, nil
}

func (r *recorder) duplicates() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dups
}

func (r *recorder) bySubject() map[string]producers.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]producers.Event{}
	for _, ev := range r.events {
		out[ev.Subject] = ev
	}
	return out
}

func start(t *testing.T, c *kubetest.Cluster, cfg Config, emit producers.Emit) {
	t.Helper()
	k, err := New(cfg, c.Config, zaptest.NewLogger(t), prometheus.NewRegistry())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx, emit) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}

func clientset(t *testing.T, c *kubetest.Cluster) *k8s.Clientset {
	t.Helper()
	cs, err := k8s.NewForConfig(c.Config)
	require.NoError(t, err)
	return cs
}

func TestEveryClassificationRowThroughTheAPIServer(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	cs := clientset(t, c)
	rec := &recorder{events: map[string]producers.Event{}}
	start(t, c, Config{MaxEventAge: 15 * time.Minute, Rules: evicted}, rec.emit)

	for i, r := range table {
		_, err := cs.EventsV1().Events("default").Create(context.Background(), newEvent(fmt.Sprintf("ev-%d", i), "default", r), metav1.CreateOptions{})
		require.NoError(t, err)
	}
	// A stale event (last seen an hour ago) is dropped however it classifies.
	stale := newEvent("stale", "default", row{name: "stale", kind: "Pod", eventType: "Warning", reason: "BackOff"})
	stale.EventTime = metav1.NewMicroTime(time.Now().Add(-time.Hour))
	_, err := cs.EventsV1().Events("default").Create(context.Background(), stale, metav1.CreateOptions{})
	require.NoError(t, err)

	want := 0
	for _, r := range table {
		if r.want != "" {
			want++
		}
	}
	require.Eventually(t, func() bool { return len(rec.bySubject()) == want }, 30*time.Second, 10*time.Millisecond)
	got := rec.bySubject()
	for _, r := range table {
		ev, ok := got["default/"+r.kind+"/obj-"+r.name]
		if r.want == "" {
			require.False(t, ok, "%s must be dropped", r.name)
			continue
		}
		require.True(t, ok, "%s must be emitted", r.name)
		require.Equal(t, r.want, ev.Type, r.name)
		require.Contains(t, string(ev.Data), `"reason":"`+r.reason+`"`)
	}
	_, ok := got["default/Pod/obj-stale"]
	require.False(t, ok, "stale events are dropped")
}

// TestTwoReplicasStoreEachEventOnce runs two producers against one JetStream: every
// classified Kubernetes Event is one raw event.
func TestTwoReplicasStoreEachEventOnce(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	cs := clientset(t, c)
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	_, err := streams.Apply(context.Background(), js, streams.Default())
	require.NoError(t, err)
	pub := producers.NewPublisher(js, streams.Default().Subjects(), producers.NewMetrics(prometheus.NewRegistry()))
	go func() { _ = pub.Run(t.Context()) }()
	start(t, c, Config{MaxEventAge: 15 * time.Minute}, pub.Emitter(Name))
	start(t, c, Config{MaxEventAge: 15 * time.Minute}, pub.Emitter(Name))

	const n = 50
	for i := range n {
		r := row{name: fmt.Sprint("p", i), kind: "Pod", eventType: "Warning", reason: "BackOff", note: "Back-off restarting failed container"}
		_, err := cs.EventsV1().Events("shop").Create(context.Background(), newEvent(fmt.Sprint("e", i), "shop", r), metav1.CreateOptions{})
		if apierrors.IsNotFound(err) {
			_, err = cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{})
			require.NoError(t, err)
			_, err = cs.EventsV1().Events("shop").Create(context.Background(), newEvent(fmt.Sprint("e", i), "shop", r), metav1.CreateOptions{})
		}
		require.NoError(t, err)
	}
	s, err := js.Stream(context.Background(), "KHOOK_RAW")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := s.Info(context.Background())
		return err == nil && info.State.Msgs == n
	}, 30*time.Second, 10*time.Millisecond)

	// An update that is a new occurrence (the series count grows) is a new raw event.
	e, err := cs.EventsV1().Events("shop").Get(context.Background(), "e0", metav1.GetOptions{})
	require.NoError(t, err)
	e.Series = &eventsv1.EventSeries{Count: 2, LastObservedTime: metav1.NowMicro()}
	_, err = cs.EventsV1().Events("shop").Update(context.Background(), e, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := s.Info(context.Background())
		return err == nil && info.State.Msgs == n+1
	}, 30*time.Second, 10*time.Millisecond)
}

// TestSurvivesWatchExpiryAndAPIServerRestart restarts the API server twice. The first time
// the informer resumes its watch; the second time, etcd has been compacted past the
// informer's resource version, so the resumed watch is refused as expired (410 Gone) and the
// informer must relist. Events created after each restart still arrive, and the relist is
// visible as Events emitted again under their same ids, which JetStream would drop.
func TestSurvivesWatchExpiryAndAPIServerRestart(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{CompactionInterval: time.Second})
	cs := clientset(t, c)
	rec := &recorder{events: map[string]producers.Event{}}
	start(t, c, Config{MaxEventAge: 15 * time.Minute}, rec.emit)
	create := func(name string) {
		t.Helper()
		r := row{name: name, kind: "Pod", eventType: "Warning", reason: "BackOff"}
		_, err := cs.EventsV1().Events("default").Create(context.Background(), newEvent(name, "default", r), metav1.CreateOptions{})
		require.NoError(t, err)
	}
	seen := func(name string) func() bool {
		return func() bool { _, ok := rec.bySubject()["default/Pod/obj-"+name]; return ok }
	}
	create("before")
	require.Eventually(t, seen("before"), 30*time.Second, 10*time.Millisecond)

	began := time.Now()
	c.RestartAPIServer()
	t.Logf("API server restarted in %s", time.Since(began))
	create("after-restart")
	require.Eventually(t, seen("after-restart"), 60*time.Second, 10*time.Millisecond)
	t.Logf("event after the restart arrived %s after the restart began", time.Since(began))

	// Move etcd's revision on with objects the producer does not watch, until a compaction
	// has passed the informer's resource version, then take the API server away again.
	rv := func() int {
		cm, err := cs.CoreV1().ConfigMaps("default").Create(context.Background(),
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "bump-"}}, metav1.CreateOptions{})
		require.NoError(t, err)
		n, _ := strconv.Atoi(cm.ResourceVersion)
		return n
	}
	target := rv()
	require.Eventually(t, func() bool {
		_, err := cs.CoreV1().ConfigMaps("default").List(context.Background(),
			metav1.ListOptions{ResourceVersion: strconv.Itoa(target - 1), ResourceVersionMatch: metav1.ResourceVersionMatchExact})
		rv()
		return apierrors.IsResourceExpired(err) || apierrors.IsGone(err)
	}, 60*time.Second, 100*time.Millisecond, "etcd compacted past the informer's resource version")
	t.Logf("etcd compacted past the informer after %s", time.Since(began))
	before := rec.duplicates()
	began = time.Now()
	c.RestartAPIServer()
	create("after-expiry")
	require.Eventually(t, seen("after-expiry"), 60*time.Second, 10*time.Millisecond)
	t.Logf("event after the expired watch arrived %s after the restart began", time.Since(began))
	require.Eventually(t, func() bool { return rec.duplicates() > before }, 60*time.Second, 10*time.Millisecond,
		"the expired watch made the informer relist, re-emitting known Events under their ids")
}

func TestConformance(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	cs := clientset(t, c)
	producertest.Run(t, producertest.Case{
		Name:   Name,
		Build:  FromSpec,
		Config: "kubeconfig: " + c.Kubeconfig + "\nnamespace: default\n",
		// The same Event is there for every run; a restarted producer relists it.
		Trigger: func(t *testing.T, _ producers.EventSource) {
			r := row{name: "conformance", kind: "Pod", eventType: "Warning", reason: "BackOff"}
			_, err := cs.EventsV1().Events("default").Create(context.Background(), newEvent("conformance", "default", r), metav1.CreateOptions{})
			if !apierrors.IsAlreadyExists(err) {
				require.NoError(t, err)
			}
		},
		BadConfigs: map[string]string{
			"maxEventAge": "kubeconfig: " + c.Kubeconfig + "\nmaxEventAge: -1s\n",
			"rules[0]":    "kubeconfig: " + c.Kubeconfig + "\nrules:\n  - reason: \"(\"\n    type: x\n",
			"kubeconfig":  "kubeconfig: /nonexistent/kubeconfig\n",
		},
	})
}
