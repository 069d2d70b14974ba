package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8s "k8s.io/client-go/kubernetes"

	"github.com/khook/khook/consumers/dispatch/state"
	"github.com/khook/khook/hook/hooktest"
	"github.com/khook/khook/internal/kubetest"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
)

// groupedRestarts is the Hook of the grouping test: pod restarts grouped by their owning
// workload, 10 s to gather, 15 s before a task for a group's new events. groupWait must cover
// the burst's way through the pipeline and the killed dispatcher's in-flight events, which
// come back after its 3 s ack wait: on a loaded two-core machine that took up to 5 s, and an
// event that arrives after groupWait goes, as designed, into the group's next task.
const groupedRestarts = `- apiVersion: kagent.dev/v1alpha2
  kind: Hook
  metadata: {name: crashloops, namespace: shop}
  spec:
    groupBy: [owner]
    groupWait: 10s
    groupInterval: 15s
    eventConfigurations:
      - eventType: pod-restart
        agentRef: {name: k8s-agent, namespace: kagent}
        prompt: "{{.Group.Count}} restarts across {{len .Events}} pods of {{.Group.Labels.owner}}."
`

// webPods creates pods web-<from>..web-<to-1> of the Deployment web's ReplicaSet.
func webPods(t *testing.T, cs k8s.Interface, from, to int) []string {
	t.Helper()
	var names []string
	for i := from; i < to; i++ {
		name := fmt.Sprintf("web-7c9d-%03d", i)
		_, err := cs.CoreV1().Pods("shop").Create(context.Background(), &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", OwnerReferences: kubetest.ControlledBy("ReplicaSet", "web-7c9d")},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/web:2"}}},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		names = append(names, name)
	}
	return names
}

// restartBurst records n BackOff Events spread over pods, from a few goroutines.
func restartBurst(t *testing.T, cs k8s.Interface, pods []string, n int, tag string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < n; i += 4 {
				errs <- createBackOff(cs, "shop", pods[i%len(pods)], fmt.Sprintf("%s-%03d", tag, i))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// podsNamed returns the pods an agent task lists, from the group listing after the prompt.
func podsNamed(text string) []string {
	var out []string
	for line := range strings.SplitSeq(text, "\n") {
		if rest, ok := strings.CutPrefix(line, "- shop Pod/"); ok {
			name, _, _ := strings.Cut(rest, " ")
			out = append(out, strings.TrimSuffix(name, ":"))
		}
	}
	slices.Sort(out)
	return out
}

// groupRecords reads the dispatchers' group records, as khook status does.
func groupRecords(t *testing.T, st *state.Store) map[string]state.GroupRecord {
	t.Helper()
	groups, err := st.Groups(context.Background())
	require.NoError(t, err)
	return groups
}

// TestGroupingAcrossDispatcherProcesses is the crash-looping rollout: 200 BackOff Events
// across 50 pods of one Deployment, recorded in a real API server within seconds, go through
// the Kubernetes producer (which resolves each pod to Deployment/web), the mapper and three
// dispatcher processes, one of which is SIGKILLed while the group gathers. The agent gets
// exactly one task naming all 50 pods. A second burst inside groupInterval is held until the
// interval ends and then sent as one more task naming only the new pods.
func TestGroupingAcrossDispatcherProcesses(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	cs, err := k8s.NewForConfig(c.Config)
	require.NoError(t, err)
	ensureNamespace(t, cs, "shop")
	_, err = cs.AppsV1().ReplicaSets("shop").Create(context.Background(), &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web-7c9d", Namespace: "shop", OwnerReferences: kubetest.ControlledBy("Deployment", "web")},
		Spec: appsv1.ReplicaSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/web:2"}}}},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	first := webPods(t, cs, 0, 50)

	dir := t.TempDir()
	_, natsURL := startNATS(t, dir+"/nats", freePort(t))
	agent, agentURL := startAgent(t)
	// The killed dispatcher's unacknowledged events come back after the ack wait: 3 s, inside
	// the 10 s groupWait, so they join the group's first task.
	base := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: agentURL, webhook: freePort(t), extraHooks: groupedRestarts, dispatcherAckWait: "3s",
		extraPlugins: "  - name: kubernetes\n    config:\n      kubeconfig: " + c.Kubeconfig + "\n      namespace: shop\n"}
	runOnce(t, "streams", "apply", "--config", base.write(t))
	startStage(t, base, "khook producer", "producer")
	startStage(t, base, "khook mapper", "mapper")
	var dispatchers []*proc
	for i := range 3 {
		dispatchers = append(dispatchers, startStage(t, base, fmt.Sprint("khook dispatcher ", i), "dispatcher"))
	}
	js := connectJS(t, natsURL)
	topo := streams.Default()
	st, err := state.Open(context.Background(), js, topo)
	require.NoError(t, err)

	began := time.Now()
	restartBurst(t, cs, first, 200, "first")
	t.Logf("200 BackOff Events recorded in %s", time.Since(began).Round(time.Millisecond))
	// Kill a dispatcher while the group gathers: the group lives in JetStream, not in it.
	require.Eventually(t, func() bool {
		for _, r := range groupRecords(t, st) {
			return r.Pending > 0 && r.Sent == 0
		}
		return false
	}, time.Minute, 10*time.Millisecond, "the group opened")
	dispatchers[0].kill()

	got := waitReceived(t, agent, 1, time.Minute)
	require.Equal(t, first, podsNamed(got[0].Text), "one task naming all 50 pods:\n%s", got[0].Text)
	require.True(t, strings.HasPrefix(got[0].Text, "200 restarts across 50 pods of Deployment/web.\nGroup: owner=Deployment/web\nEvents: 200 on 50 resources"), got[0].Text)
	var notified time.Time
	require.Eventually(t, func() bool {
		for _, r := range groupRecords(t, st) {
			notified = r.Notified
			return r.Sent == 1 && r.Pending == 0 && r.Lease == nil
		}
		return false
	}, time.Minute, 10*time.Millisecond)
	events, err := js.Stream(context.Background(), topo.Events.Name)
	require.NoError(t, err)
	info, err := events.Info(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(200), info.State.Msgs, "every Event was mapped")
	waitSettled(t, js, topo.Events.Name, topo.Dispatcher.Durable, 200)
	require.Len(t, agent.Received(), 1, "exactly one agent call for the incident")

	// A second burst inside groupInterval, on ten new pods: held, then one task with only
	// them when the interval ends.
	second := webPods(t, cs, 50, 60)
	restartBurst(t, cs, second, 30, "second")
	require.Eventually(t, func() bool {
		for _, r := range groupRecords(t, st) {
			return r.Pending == 30
		}
		return false
	}, time.Minute, 10*time.Millisecond)
	for _, r := range groupRecords(t, st) {
		require.Equal(t, notified.Add(15*time.Second), r.Due, "due when groupInterval ends, not groupWait after the burst")
	}
	require.Len(t, agent.Received(), 1, "nothing within groupInterval")
	got = waitReceived(t, agent, 2, time.Minute)
	require.False(t, got[1].At.Before(notified.Add(15*time.Second)), "sent at %s, the interval ended at %s", got[1].At, notified.Add(15*time.Second))
	require.Equal(t, second, podsNamed(got[1].Text), "only the new pods:\n%s", got[1].Text)
	require.Contains(t, got[1].Text, "Events: 30 on 10 resources since the last task (1 tasks, 230 events in all)")
	require.Equal(t, got[0].ContextID, got[1].ContextID, "the group's tasks share one agent session")
}

// publishIncident publishes a normalized incident of severity on resource.
func publishIncident(t *testing.T, js jetstream.JetStream, id, resource, severity string) {
	t.Helper()
	data, err := json.Marshal(mapping.Event{ID: id, Source: "webhook", SourceType: "deploy-failed", Type: "deploy-failed",
		Severity: severity, Namespace: "shop", Resource: mapping.Resource{Name: resource}, Message: "m"})
	require.NoError(t, err)
	body, err := cloudevent.Encode(&cloudevent.Event{ID: id, Source: "webhook", Type: "deploy-failed", Data: data})
	require.NoError(t, err)
	msg := nats.NewMsg("khook.events.deploy-failed")
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, id)
	_, err = js.PublishMsg(context.Background(), msg)
	require.NoError(t, err)
}

// TestBudgetAcrossDispatcherProcesses gives the agent a budget of one task at a time and 10
// an hour, across three dispatcher processes. 100 distinct warning incidents arrive while
// the first task is still running; a critical one arrives after them. The agent gets 10
// tasks, the critical one first among those that waited; the other 91 wait, visible in khook
// status, neither dropped nor dead-lettered.
func TestBudgetAcrossDispatcherProcesses(t *testing.T) {
	dir := t.TempDir()
	_, natsURL := startNATS(t, dir+"/nats", freePort(t))
	agent, agentURL := startAgent(t)
	calls, release := agent.HoldFirst()
	base := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: agentURL, webhook: freePort(t),
		extraConfig: "dispatcher:\n  budgets:\n    - agent: kagent/*\n      max_concurrent_tasks: 1\n      max_tasks_per_hour: 10\n"}
	config := base.write(t)
	runOnce(t, "streams", "apply", "--config", config)
	for i := range 3 {
		startStage(t, base, fmt.Sprint("khook dispatcher ", i), "dispatcher")
	}
	js := connectJS(t, natsURL)
	topo := streams.Default()
	for i := range 100 {
		publishIncident(t, js, fmt.Sprint("warning-", i), fmt.Sprintf("svc-%03d", i), "warning")
	}
	require.Eventually(t, func() bool { return calls.Load() == 1 }, time.Minute, 5*time.Millisecond)
	publishIncident(t, js, "critical-0", "payments", "critical")
	waitSettled(t, js, topo.Events.Name, topo.Dispatcher.Durable, 101)
	status := func() ops.Status {
		out, err := exec.Command(bins.khook(), "status", "-o", "json", "--config", config).Output()
		require.NoError(t, err)
		var s ops.Status
		require.NoError(t, json.Unmarshal(out, &s))
		return s
	}
	require.Eventually(t, func() bool {
		s := status()
		return len(s.Agents) == 1 && s.Agents[0].Waiting == 100
	}, time.Minute, 50*time.Millisecond, "100 wait while the first task runs")
	release()

	got := waitReceived(t, agent, 10, time.Minute)
	require.Equal(t, "kagent/sre-agent", got[1].Agent)
	require.Contains(t, got[1].Text, "Deployment payments in shop failed", "the critical incident goes before the waiting warnings")
	var s ops.Status
	require.Eventually(t, func() bool {
		s = status()
		return len(s.Agents) == 1 && s.Agents[0].Waiting == 91 && s.Agents[0].InFlight == 0
	}, time.Minute, 50*time.Millisecond, "status: %+v", &s)
	require.Equal(t, ops.AgentStatus{Agent: "kagent/sre-agent", Waiting: 91, OldestWaiting: s.Agents[0].OldestWaiting,
		MaxConcurrentTasks: 1, LastHour: 10, MaxTasksPerHour: 10}, s.Agents[0])
	require.Len(t, agent.Received(), 10, "no task past the hourly budget")
	out, err := exec.Command(bins.khook(), "status", "--config", config).Output()
	require.NoError(t, err)
	require.Contains(t, string(out), "kagent/sre-agent  91", "the table shows the waiting tasks")
	require.Zero(t, deadLetterCount(t, js, topo), "waiting is not dead-lettering")
}

func deadLetterCount(t *testing.T, js jetstream.JetStream, topo streams.Config) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), topo.DLQ.Name)
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	return info.State.Msgs
}

var opsGroupedHook = hooktest.Fixture("hooks/ops-grouped.yaml")

// TestReplayDoesNotRetriggerAGroup runs the real `khook replay`, through the mapper and
// through the dispatcher, over an incident that a grouped Hook has just sent: the copies
// (new ids, new stream sequences) are recognised as the events the group already counted,
// by the raw event they came from, so the group counts nothing new and the agent is not
// called again.
func TestReplayDoesNotRetriggerAGroup(t *testing.T) {
	agent, agentURL := startAgent(t)
	f := embeddedPipeline(t, agentURL)
	f.extraHooks = opsGroupedHook
	cfg := f.write(t)
	p := start(t, "khook run", bins.khook(), "run", "--config", cfg)
	waitReady(t, p, f.probes)
	natsURL := f.embeddedURL()
	js := connectJS(t, natsURL)
	st, err := state.Open(context.Background(), js, streams.Default())
	require.NoError(t, err)

	for i := range 3 {
		body := fmt.Sprintf(`{"type":"deploy-failed","namespace":"ops","resourceName":"api-%d","message":"rollout stuck"}`, i)
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/webhook", f.webhook), "application/json", strings.NewReader(body))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
	}
	got := waitReceived(t, agent, 1, 30*time.Second)
	require.True(t, strings.HasPrefix(got[0].Text, "3 failed deploys in ops"), got[0].Text)

	events := uint64(3)
	for _, through := range []string{"mapper", "dispatcher"} {
		code, out := khookCmd(t, "replay", "--config", cfg, "--nats-url", natsURL, "--through", through, "--since", "1h", "--namespace", "ops")
		require.Equal(t, 0, code, out)
		require.Contains(t, out, "sent 3 events", out)
		events += 3
		waitSettled(t, js, "KHOOK_EVENTS", "khook-dispatcher", events)
		groups := groupRecords(t, st)
		require.Len(t, groups, 1)
		for _, g := range groups {
			require.Equal(t, 3, g.Total, "replayed through the %s, the copies were not counted again", through)
			require.Zero(t, g.Pending, "nothing waits for a second task")
		}
	}
	require.Len(t, agent.Received(), 1, "the replays called nobody")
}
