package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	authv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/khook/khook/consumers/dispatch/kubehooks"
	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/internal/kubetest"
	"github.com/khook/khook/streams"
)

// apply creates every object of a YAML file in the cluster (namespace ns for namespaced
// objects without one), waiting for CRDs to be served.
func apply(t *testing.T, rc *rest.Config, path, ns string) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	dyn, err := dynamic.NewForConfig(rc)
	require.NoError(t, err)
	cs, err := k8s.NewForConfig(rc)
	require.NoError(t, err)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(cs.Discovery()))
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
			break
		} else {
			require.NoError(t, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		m, err := mapper.RESTMapping(obj.GroupVersionKind().GroupKind(), obj.GroupVersionKind().Version)
		require.NoError(t, err, obj.GetKind())
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == "namespace" {
			if obj.GetNamespace() == "" {
				obj.SetNamespace(ns)
			}
			ensureNamespace(t, cs, obj.GetNamespace())
			ri = dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
		}
		_, err = ri.Create(context.Background(), &obj, metav1.CreateOptions{})
		require.NoError(t, err, "%s %s", obj.GetKind(), obj.GetName())
		if obj.GetKind() == "CustomResourceDefinition" {
			group, _, _ := unstructured.NestedString(obj.Object, "spec", "group")
			versions, _, _ := unstructured.NestedSlice(obj.Object, "spec", "versions")
			gv := group + "/" + versions[0].(map[string]any)["name"].(string)
			plural, _, _ := unstructured.NestedString(obj.Object, "spec", "names", "plural")
			require.Eventually(t, func() bool {
				list, err := cs.Discovery().ServerResourcesForGroupVersion(gv)
				if err != nil {
					return false
				}
				for _, r := range list.APIResources {
					if r.Name == plural {
						return true
					}
				}
				return false
			}, 30*time.Second, 50*time.Millisecond, "the CRD %s is served", obj.GetName())
			mapper.Reset()
		}
	}
}

func ensureNamespace(t *testing.T, cs k8s.Interface, ns string) {
	t.Helper()
	_, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		require.NoError(t, err)
	}
}

// hookCluster is a real API server with the Hook CRD installed and one namespace created.
type hookCluster struct {
	*kubetest.Cluster
	cs    k8s.Interface
	hooks dynamic.ResourceInterface // the Hooks of the namespace
}

// startHookCluster starts an API server, installs the chart's Hook CRD and creates ns.
func startHookCluster(t *testing.T, ns string) hookCluster {
	t.Helper()
	c := kubetest.Start(t, kubetest.Options{})
	cs, err := k8s.NewForConfig(c.Config)
	require.NoError(t, err)
	dyn, err := dynamic.NewForConfig(c.Config)
	require.NoError(t, err)
	apply(t, c.Config, hookCRD, "")
	ensureNamespace(t, cs, ns)
	return hookCluster{Cluster: c, cs: cs, hooks: dyn.Resource(kubehooks.GVR).Namespace(ns)}
}

func hookObject(ns, name, prompt, window string) *unstructured.Unstructured {
	spec := map[string]any{
		"eventConfigurations": []any{map[string]any{
			"eventType": "pod-restart",
			"agentRef":  map[string]any{"name": "k8s-agent", "namespace": "kagent"},
			"prompt":    prompt,
		}},
	}
	if window != "" {
		spec["suppressionWindow"] = window
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "kagent.dev/v1alpha2", "kind": "Hook",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	}}
}

// backOff records a Warning BackOff Event about a pod, as the kubelet does.
func backOff(t *testing.T, cs k8s.Interface, ns, pod, name string) {
	t.Helper()
	require.NoError(t, createBackOff(cs, ns, pod, name))
}

// createBackOff is backOff for goroutines: it returns the error, retrying while the API
// server sheds load.
func createBackOff(cs k8s.Interface, ns, pod, name string) error {
	var err error
	for attempt := range 10 {
		if err = tryBackOff(cs, ns, pod, name); err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond) // backoff between retries, not synchronisation
	}
	return err
}

func tryBackOff(cs k8s.Interface, ns, pod, name string) error {
	_, err := cs.EventsV1().Events(ns).Create(context.Background(), &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, EventTime: metav1.NowMicro(),
		ReportingController: "kubelet", ReportingInstance: "worker-1", Action: "Restarting",
		Type: "Warning", Reason: "BackOff", Note: "Back-off restarting failed container app in pod " + pod,
		Regarding: corev1.ObjectReference{Kind: "Pod", Name: pod, Namespace: ns, APIVersion: "v1"},
	}, metav1.CreateOptions{})
	return err
}

// TestKubernetesEndToEnd runs khook against a real API server: a pod's BackOff Event
// reaches the agent through a Hook resource; the Hook's status shows the event firing, then
// resolved; changing and deleting the Hook takes effect without a restart; and the Hook
// carries Events about its calls.
func TestKubernetesEndToEnd(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	cs, err := k8s.NewForConfig(c.Config)
	require.NoError(t, err)
	dyn, err := dynamic.NewForConfig(c.Config)
	require.NoError(t, err)
	apply(t, c.Config, hookCRD, "")
	ensureNamespace(t, cs, "shop")
	hooks := dyn.Resource(kubehooks.GVR).Namespace("shop")
	_, err = hooks.Create(context.Background(), hookObject("shop", "restarts", "Pod {{.ResourceName}} in {{.Namespace}} keeps restarting", "3s"), metav1.CreateOptions{})
	require.NoError(t, err)

	// A second Hook whose agent refuses every task, for AgentCallFailure.
	broken := hookObject("shop", "broken", "OOM in {{.ResourceName}}", "")
	broken.Object["spec"].(map[string]any)["eventConfigurations"] = []any{map[string]any{
		"eventType": "oom-kill", "agentRef": map[string]any{"name": "broken-agent", "namespace": "kagent"}, "prompt": "OOM in {{.ResourceName}}",
	}}
	_, err = hooks.Create(context.Background(), broken, metav1.CreateOptions{})
	require.NoError(t, err)

	agent, agentURL := startAgent(t)
	agent.OnMessage = func(r demoagent.Received) error {
		if r.Agent == "kagent/broken-agent" {
			return errors.New("agent kagent/broken-agent is not deployed")
		}
		return nil
	}
	f := pipelineFiles{
		dir: t.TempDir(), agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		embeddedListen: "127.0.0.1:" + strconv.Itoa(freePort(t)), kubeconfig: c.Kubeconfig,
		extraPlugins: "  - name: kubernetes\n    config:\n      kubeconfig: " + c.Kubeconfig + "\n",
	}
	f.storeDir = f.dir + "/data"
	p := start(t, "khook run", bins.khook(), "run", "--config", f.write(t))
	waitReady(t, p, f.probes)

	_, err = cs.CoreV1().Pods("shop").Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "cart-7d9f8", Namespace: "shop"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.example/cart:1"}}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	backOff(t, cs, "shop", "cart-7d9f8", "cart-backoff-1")
	got := waitReceived(t, agent, 1, 30*time.Second)
	require.True(t, strings.HasPrefix(got[0].Text, "Pod cart-7d9f8 in shop keeps restarting\nNamespace: shop\nReason: BackOff"), got[0].Text)
	require.Equal(t, "kagent/k8s-agent", got[0].Agent)

	// Status: firing while the event recurs, resolved a window (3s) after it stops.
	status := func() string {
		h, err := hooks.Get(context.Background(), "restarts", metav1.GetOptions{})
		require.NoError(t, err)
		items, _, _ := unstructured.NestedSlice(h.Object, "status", "activeEvents")
		if len(items) != 1 {
			return ""
		}
		e := items[0].(map[string]any)
		return fmt.Sprint(e["eventType"], "/", e["resourceName"], "/", e["status"])
	}
	require.Eventually(t, func() bool { return status() == "pod-restart/cart-7d9f8/firing" }, 30*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool { return status() == "pod-restart/cart-7d9f8/resolved" }, 30*time.Second, 50*time.Millisecond)

	// The Hook carries Events about what happened to it.
	reasons := func() map[string]bool {
		evs, err := cs.EventsV1().Events("shop").List(context.Background(), metav1.ListOptions{FieldSelector: "regarding.name=restarts"})
		require.NoError(t, err)
		out := map[string]bool{}
		for _, e := range evs.Items {
			out[e.Reason] = true
		}
		return out
	}
	require.Eventually(t, func() bool { r := reasons(); return r["EventFiring"] && r["AgentCallSuccess"] }, 30*time.Second, 50*time.Millisecond)

	// A call the agent refuses is a Warning Event on its Hook; the task is dead-lettered,
	// not retried.
	_, err = cs.EventsV1().Events("shop").Create(context.Background(), &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: "cart-oom", Namespace: "shop"}, EventTime: metav1.NowMicro(),
		ReportingController: "kubelet", ReportingInstance: "worker-1", Action: "Killing",
		Type: "Warning", Reason: "OOMKilling", Note: "Memory cgroup out of memory: killed process app",
		Regarding: corev1.ObjectReference{Kind: "Pod", Name: "cart-7d9f8", Namespace: "shop", APIVersion: "v1"},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	var failure eventsv1.Event
	require.Eventually(t, func() bool {
		evs, err := cs.EventsV1().Events("shop").List(context.Background(), metav1.ListOptions{FieldSelector: "regarding.name=broken"})
		require.NoError(t, err)
		for _, e := range evs.Items {
			if e.Reason == "AgentCallFailure" {
				failure = e
				return true
			}
		}
		return false
	}, 30*time.Second, 50*time.Millisecond)
	require.Equal(t, corev1.EventTypeWarning, failure.Type)
	require.Contains(t, failure.Note, "dead-lettered")
	require.Contains(t, failure.Note, "kagent/broken-agent")

	// A changed prompt applies to the next event, without a restart.
	h, err := hooks.Get(context.Background(), "restarts", metav1.GetOptions{})
	require.NoError(t, err)
	require.NoError(t, unstructured.SetNestedSlice(h.Object, []any{map[string]any{
		"eventType": "pod-restart", "agentRef": map[string]any{"name": "k8s-agent", "namespace": "kagent"},
		"prompt": "CHANGED: {{.ResourceName}}",
	}}, "spec", "eventConfigurations"))
	_, err = hooks.Update(context.Background(), h, metav1.UpdateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		backOff(t, cs, "shop", "cart-7d9f8", fmt.Sprintf("cart-backoff-%d", time.Now().UnixNano()))
		rs := agent.Received()
		return strings.HasPrefix(rs[len(rs)-1].Text, "CHANGED: cart-7d9f8")
	}, 60*time.Second, 3500*time.Millisecond, "one event per suppression window until the new prompt is in use")

	// A deleted Hook calls nothing more. Everything already under way settles first.
	require.NoError(t, hooks.Delete(context.Background(), "restarts", metav1.DeleteOptions{}))
	require.Eventually(t, func() bool {
		return strings.Contains(p.out.String(), `"hooks": 0`)
	}, 30*time.Second, 20*time.Millisecond, "the dispatcher saw the deletion")
	js := connectJS(t, "nats://"+f.embeddedListen)
	topo := streams.Default()
	s, err := js.Stream(context.Background(), topo.Events.Name)
	require.NoError(t, err)
	settled := func() uint64 {
		info, err := s.Info(context.Background())
		require.NoError(t, err)
		waitSettled(t, js, topo.Events.Name, topo.Dispatcher.Durable, info.State.LastSeq)
		return info.State.LastSeq
	}
	last := settled()
	calls := len(agent.Received())
	backOff(t, cs, "shop", "other-pod", "other-backoff")
	require.Eventually(t, func() bool {
		info, err := s.Info(context.Background())
		return err == nil && info.State.LastSeq > last
	}, 30*time.Second, 20*time.Millisecond, "the new event was mapped")
	settled()
	require.Len(t, agent.Received(), calls, "no hook, no call")
}

// TestRBACIsLeastPrivilege applies the shipped RBAC and asks the API server what each
// service account may do.
func TestRBACIsLeastPrivilege(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	apply(t, c.Config, hookCRD, "")
	apply(t, c.Config, "../helm/manifests/rbac.yaml", "kagent")
	cs, err := k8s.NewForConfig(c.Config)
	require.NoError(t, err)
	can := func(sa, ns, verb, group, resource, sub string) bool {
		r, err := cs.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authv1.SubjectAccessReview{
			Spec: authv1.SubjectAccessReviewSpec{
				User:               "system:serviceaccount:kagent:" + sa,
				ResourceAttributes: &authv1.ResourceAttributes{Namespace: ns, Verb: verb, Group: group, Resource: resource, Subresource: sub},
			},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		return r.Status.Allowed
	}
	for _, tt := range []struct {
		sa, ns, verb, group, resource, sub string
		allowed                            bool
	}{
		{"khook-producer", "shop", "watch", "events.k8s.io", "events", "", true},
		{"khook-producer", "shop", "create", "events.k8s.io", "events", "", false},
		{"khook-producer", "shop", "list", "kagent.dev", "hooks", "", false},
		{"khook-producer", "shop", "get", "", "secrets", "", false},
		// Owner resolution gets the objects an Event is about, and nothing more.
		{"khook-producer", "shop", "get", "", "pods", "", true},
		{"khook-producer", "shop", "get", "apps", "replicasets", "", true},
		{"khook-producer", "shop", "get", "batch", "jobs", "", true},
		{"khook-producer", "shop", "list", "", "pods", "", false},
		{"khook-producer", "shop", "watch", "apps", "replicasets", "", false},
		{"khook-producer", "shop", "get", "apps", "deployments", "", false},
		{"khook-dispatcher", "shop", "watch", "kagent.dev", "hooks", "", true},
		{"khook-dispatcher", "shop", "patch", "kagent.dev", "hooks", "status", true},
		{"khook-dispatcher", "shop", "update", "kagent.dev", "hooks", "", false},
		{"khook-dispatcher", "shop", "create", "events.k8s.io", "events", "", true},
		{"khook-dispatcher", "kagent", "update", "coordination.k8s.io", "leases", "", true},
		{"khook-dispatcher", "shop", "update", "coordination.k8s.io", "leases", "", false},
		{"khook-dispatcher", "shop", "list", "", "pods", "", false},
		{"khook-dispatcher", "shop", "get", "", "secrets", "", false},
	} {
		require.Equal(t, tt.allowed, can(tt.sa, tt.ns, tt.verb, tt.group, tt.resource, tt.sub),
			"%s %s %s/%s/%s in %s", tt.sa, tt.verb, tt.group, tt.resource, tt.sub, tt.ns)
	}
}

// TestKubernetesBurst records 5,000 BackOff Events as fast as the API server takes them:
// every one becomes a raw event, and the producer's peak memory stays bounded.
func TestKubernetesBurst(t *testing.T) {
	const total = 5000
	c := kubetest.Start(t, kubetest.Options{})
	cs, err := k8s.NewForConfig(c.Config)
	require.NoError(t, err)
	ensureNamespace(t, cs, "burst")
	dir := t.TempDir()
	_, natsURL := startNATS(t, dir+"/nats", freePort(t))
	_, agentURL := startAgent(t)
	f := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		extraPlugins: "  - name: kubernetes\n    config:\n      kubeconfig: " + c.Kubeconfig + "\n      namespace: burst\n"}
	p := start(t, "khook producer", bins.khook(), "producer", "--plugin", "kubernetes", "--config", f.write(t))
	waitReady(t, p, f.probes)

	began := time.Now()
	var wg sync.WaitGroup
	work := make(chan int)
	errs := make(chan error, total)
	for range 16 {
		wg.Go(func() {
			for i := range work {
				errs <- createBackOff(cs, "burst", fmt.Sprintf("pod-%d", i), fmt.Sprintf("burst-%d", i))
			}
		})
	}
	for i := range total {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	created := time.Since(began)

	js := connectJS(t, natsURL)
	s, err := js.Stream(context.Background(), "KHOOK_RAW")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := s.Info(context.Background())
		return err == nil && info.State.Msgs == total
	}, 2*time.Minute, 50*time.Millisecond)
	rss := peakRSS(t, p.cmd.Process.Pid)
	t.Logf("%d Kubernetes Events created in %s; all %d stored %s after the first; producer peak RSS %d MiB",
		total, created.Round(time.Millisecond), total, time.Since(began).Round(time.Millisecond), rss>>20)
	require.Less(t, rss, int64(256<<20), "the producer's memory stays bounded")
}

// peakRSS reads a process's peak resident set size (VmHWM) from /proc.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// A Hook resource fires on any internal type the mappings produce, not only Kubernetes
// events: a webhook's deploy-failed reaches the agent through a Hook in the cluster, as it
// does through hooks.yaml locally.
func TestWebhookEventTriggersHookResource(t *testing.T) {
	c := startHookCluster(t, "shop")
	h := hookFor("shop", "deploys", "deploy-failed", "sre-agent", "Deployment {{.ResourceName}} in {{ .Namespace }} failed: {{.Message}}")
	_, err := c.hooks.Create(context.Background(), h, metav1.CreateOptions{})
	require.NoError(t, err, "the CRD takes a webhook's event type")
	bad := hookObject("shop", "bad", "x", "")
	bad.Object["spec"].(map[string]any)["eventConfigurations"].([]any)[0].(map[string]any)["eventType"] = "Deploy Failed"
	_, err = c.hooks.Create(context.Background(), bad, metav1.CreateOptions{})
	require.ErrorContains(t, err, "eventType", "a type that is not a subject token is refused")

	agent, agentURL := startAgent(t)
	f := pipelineFiles{dir: t.TempDir(), agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		embeddedListen: "127.0.0.1:" + strconv.Itoa(freePort(t)), kubeconfig: c.Kubeconfig}
	f.storeDir = f.dir + "/data"
	p := start(t, "khook run", bins.khook(), "run", "--config", f.write(t))
	waitReady(t, p, f.probes)
	code, body := postEvent(t, f.webhook, "cart", "rollout stuck")
	require.Equal(t, 202, code, body)
	got := waitReceived(t, agent, 1, 30*time.Second)
	require.Equal(t, wantText("cart", "rollout stuck"), stripTime(got[0].Text))
	require.Equal(t, "kagent/sre-agent", got[0].Agent)
}

// hookFor is a Hook resource with one entry: eventType calls the agent kagent/agent.
func hookFor(ns, name, eventType, agent, prompt string) *unstructured.Unstructured {
	h := hookObject(ns, name, "", "")
	h.Object["spec"].(map[string]any)["eventConfigurations"] = []any{map[string]any{
		"eventType": eventType, "agentRef": map[string]any{"name": agent, "namespace": "kagent"}, "prompt": prompt,
	}}
	return h
}

// TestHooksFromClusterAndFile runs the dispatcher with kubernetes.hooks: both. Hook
// resources and hooks.yaml fire together; a Hook resource wins over a file hook of the same
// namespace and name; an edit of the file applies live, still merged with the cluster's.
func TestHooksFromClusterAndFile(t *testing.T) {
	c := startHookCluster(t, "shop")
	// The same namespace and name as hooks.yaml's shop/shop-deployments, another agent.
	h := hookFor("shop", "shop-deployments", "deploy-failed", "cluster-agent", "from the cluster: {{.ResourceName}}")
	_, err := c.hooks.Create(context.Background(), h, metav1.CreateOptions{})
	require.NoError(t, err)

	fileHook := func(name, agent string) string {
		return fmt.Sprintf(`- apiVersion: kagent.dev/v1alpha2
  kind: Hook
  metadata:
    name: %s
    namespace: shop
  spec:
    eventConfigurations:
      - eventType: deploy-failed
        agentRef:
          name: %s
          namespace: kagent
        prompt: "from the file: {{.ResourceName}}"
`, name, agent)
	}
	agent, agentURL := startAgent(t)
	f := pipelineFiles{dir: t.TempDir(), agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		embeddedListen: "127.0.0.1:" + strconv.Itoa(freePort(t)), kubeconfig: c.Kubeconfig, hooksMode: "both",
		extraHooks: fileHook("file-only", "file-agent")}
	f.storeDir = f.dir + "/data"
	p := start(t, "khook run", bins.khook(), "run", "--config", f.write(t))
	waitReady(t, p, f.probes)

	agents := func(got []demoagent.Received) []string {
		var out []string
		for _, r := range got {
			out = append(out, r.Agent)
		}
		return out
	}
	code, body := postEvent(t, f.webhook, "cart", "rollout stuck")
	require.Equal(t, 202, code, body)
	got := waitReceived(t, agent, 2, 30*time.Second)
	require.ElementsMatch(t, []string{"kagent/cluster-agent", "kagent/file-agent"}, agents(got),
		"the cluster's Hook and the file-only hook; not the file's shop/shop-deployments, which the resource overrides")
	require.Contains(t, p.out.String(), "hook defined by two sources")

	// A live edit of the file adds a hook; the cluster's are kept.
	hooksFile := filepath.Join(f.dir, "hooks.yaml")
	b, err := os.ReadFile(hooksFile)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(hooksFile+".new", append(b, fileHook("file-two", "second-file-agent")...), 0o600))
	require.NoError(t, os.Rename(hooksFile+".new", hooksFile))
	require.Eventually(t, func() bool { return strings.Count(p.out.String(), "hooks reloaded") >= 1 }, 30*time.Second, 20*time.Millisecond)
	code, body = postEvent(t, f.webhook, "checkout", "rollout stuck")
	require.Equal(t, 202, code, body)
	got = waitReceived(t, agent, 5, 30*time.Second)
	require.ElementsMatch(t, []string{"kagent/cluster-agent", "kagent/file-agent", "kagent/second-file-agent"}, agents(got[2:]))
}

// TestHookStatusIsBounded: a Hook that matches many resources lists at most 100 of them in
// status.activeEvents, the most recent first, so that its status stays within what the API
// server accepts (a soak's Hook of 16,000 pods wrote a status etcd refused, past 2 MiB).
func TestHookStatusIsBounded(t *testing.T) {
	c := startHookCluster(t, "soak")
	_, err := c.hooks.Create(context.Background(), hookObject("soak", "restarts", "Pod {{.ResourceName}} restarted", ""), metav1.CreateOptions{})
	require.NoError(t, err)
	agent, agentURL := startAgent(t)
	f := embeddedPipeline(t, agentURL)
	f.kubeconfig = c.Kubeconfig
	f.extraMappings = "  - eventSource: webhook\n    eventType: pod-restart\n    severity: warning\n"
	p := start(t, "khook run", bins.khook(), "run", "--config", f.write(t))
	waitReady(t, p, f.probes)
	const pods = 150
	for i := range pods {
		body := fmt.Sprintf(`{"type":"pod-restart","namespace":"soak","resourceName":"pod-%03d","message":"back-off"}`, i)
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/webhook", f.webhook), "application/json", strings.NewReader(body))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
	}
	waitReceived(t, agent, pods, time.Minute)
	var names []string
	require.Eventually(t, func() bool {
		h, err := c.hooks.Get(context.Background(), "restarts", metav1.GetOptions{})
		require.NoError(t, err)
		items, _, _ := unstructured.NestedSlice(h.Object, "status", "activeEvents")
		names = names[:0]
		for _, it := range items {
			names = append(names, it.(map[string]any)["resourceName"].(string))
		}
		return slices.Contains(names, fmt.Sprintf("pod-%03d", pods-1))
	}, time.Minute, 50*time.Millisecond, "the status lists the latest pod")
	require.Len(t, names, 100, "at most 100 active events")
}
