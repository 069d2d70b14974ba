package test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/internal/kubetest"
)

// The chart's pods, run as a kubelet would run them but without one: `helm install` puts the
// release in a real API server, then every Deployment's and the streams Job's container runs
// as a local process with the command, environment and files its pod spec gives it. The
// differences from a kubelet are only where a process cannot have a pod of its own: each
// process gets its own metrics and probe ports (a pod has its own network namespace), mount
// paths live under a temporary root (the path is rewritten in the arguments and in the
// mounted files), and a pod whose service account token is mounted gets that account's
// token in a kubeconfig (client-go reads the in-cluster token from a fixed path).
type podRunner struct {
	t       *testing.T
	cs      k8s.Interface
	cluster *kubetest.Cluster
	ns      string
	root    string
	// services are the release's Services, for the Service-link variables.
	services []corev1.Service
}

// podProc is one running container.
type podProc struct {
	*proc
	probes int
}

// envFor is the container's environment as a kubelet builds it: the Service-link variables
// of every Service in the namespace (always, even with enableServiceLinks: false, so that
// khook is shown to ignore them), then envFrom, then env with its references resolved.
func (r *podRunner) envFor(pod corev1.PodSpec, c corev1.Container, podName string) []string {
	t := r.t
	ctx := context.Background()
	env := map[string]string{}
	for _, s := range r.services {
		if s.Spec.ClusterIP == "" || s.Spec.ClusterIP == corev1.ClusterIPNone {
			continue
		}
		name := strings.ToUpper(strings.ReplaceAll(s.Name, "-", "_"))
		p := s.Spec.Ports[0]
		env[name+"_SERVICE_HOST"] = s.Spec.ClusterIP
		env[name+"_SERVICE_PORT"] = strconv.Itoa(int(p.Port))
		env[name+"_PORT"] = fmt.Sprintf("tcp://%s:%d", s.Spec.ClusterIP, p.Port)
		for _, p := range s.Spec.Ports {
			if p.Name != "" {
				env[name+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_"))] = strconv.Itoa(int(p.Port))
			}
			prefix := fmt.Sprintf("%s_PORT_%d_TCP", name, p.Port)
			env[prefix] = fmt.Sprintf("tcp://%s:%d", s.Spec.ClusterIP, p.Port)
			env[prefix+"_PROTO"] = "tcp"
			env[prefix+"_PORT"] = strconv.Itoa(int(p.Port))
			env[prefix+"_ADDR"] = s.Spec.ClusterIP
		}
	}
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, err := r.cs.CoreV1().ConfigMaps(r.ns).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			require.NoError(t, err)
			for k, v := range cm.Data {
				env[from.Prefix+k] = v
			}
		case from.SecretRef != nil:
			s, err := r.cs.CoreV1().Secrets(r.ns).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			require.NoError(t, err)
			for k, v := range s.Data {
				env[from.Prefix+k] = string(v)
			}
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil:
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.namespace":
				env[e.Name] = r.ns
			case "metadata.name":
				env[e.Name] = podName
			default:
				t.Fatalf("%s: downward API field %s is not supported by the pod runner", podName, e.ValueFrom.FieldRef.FieldPath)
			}
		case e.ValueFrom.SecretKeyRef != nil:
			s, err := r.cs.CoreV1().Secrets(r.ns).Get(ctx, e.ValueFrom.SecretKeyRef.Name, metav1.GetOptions{})
			require.NoError(t, err)
			env[e.Name] = string(s.Data[e.ValueFrom.SecretKeyRef.Key])
		case e.ValueFrom.ConfigMapKeyRef != nil:
			cm, err := r.cs.CoreV1().ConfigMaps(r.ns).Get(ctx, e.ValueFrom.ConfigMapKeyRef.Name, metav1.GetOptions{})
			require.NoError(t, err)
			env[e.Name] = cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]
		default:
			t.Fatalf("%s: env %s: reference not supported by the pod runner", podName, e.Name)
		}
	}
	out := []string{"PATH=/usr/bin:/bin", "HOSTNAME=" + podName}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

// mount materializes the pod's volumes under root/podName and returns the rewrite from each
// mount path to its place there.
func (r *podRunner) mount(pod corev1.PodSpec, c corev1.Container, podName string) *strings.Replacer {
	t := r.t
	ctx := context.Background()
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	mounts := slices.Clone(c.VolumeMounts)
	// Longer paths first, so that a mount inside another is rewritten whole.
	slices.SortFunc(mounts, func(a, b corev1.VolumeMount) int { return len(b.MountPath) - len(a.MountPath) })
	var pairs []string
	for _, m := range mounts {
		pairs = append(pairs, m.MountPath, filepath.Join(r.root, podName, m.MountPath))
	}
	rewrite := strings.NewReplacer(pairs...)
	for _, m := range mounts {
		dir := filepath.Join(r.root, podName, m.MountPath)
		require.NoError(t, os.MkdirAll(dir, 0o755))
		v, ok := volumes[m.Name]
		require.True(t, ok, "%s mounts the undeclared volume %s", podName, m.Name)
		files := map[string][]byte{}
		switch {
		case v.ConfigMap != nil:
			cm, err := r.cs.CoreV1().ConfigMaps(r.ns).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			require.NoError(t, err, "%s: volume %s", podName, m.Name)
			for k, d := range cm.Data {
				// The files name other mounted files by absolute path (khook.yaml names
				// plugins.yaml), so they are rewritten like the arguments.
				files[k] = []byte(rewrite.Replace(d))
			}
		case v.Secret != nil:
			s, err := r.cs.CoreV1().Secrets(r.ns).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
			require.NoError(t, err, "%s: volume %s", podName, m.Name)
			maps.Copy(files, s.Data)
		case v.EmptyDir != nil:
		case v.PersistentVolumeClaim != nil:
			// A directory that outlives the process, as a claim outlives its pod; the claim
			// itself must exist, as the kubelet would wait for it.
			_, err := r.cs.CoreV1().PersistentVolumeClaims(r.ns).Get(ctx, v.PersistentVolumeClaim.ClaimName, metav1.GetOptions{})
			require.NoError(t, err, "%s: volume %s", podName, m.Name)
		default:
			t.Fatalf("%s: volume %s: only ConfigMap, Secret, emptyDir and claim volumes are supported by the pod runner", podName, m.Name)
		}
		for k, d := range files {
			// Replaced through a rename, as the kubelet swaps a volume's files atomically.
			tmp := filepath.Join(dir, "."+k+".tmp")
			require.NoError(t, os.WriteFile(tmp, d, 0o600))
			require.NoError(t, os.Rename(tmp, filepath.Join(dir, k)))
		}
	}
	return rewrite
}

// kubeconfigFor writes a kubeconfig holding a token of the pod's service account, as the
// kubelet's projected token would give it: the process then has exactly that account's
// rights.
func (r *podRunner) kubeconfigFor(pod corev1.PodSpec, podName string) string {
	t := r.t
	tok, err := r.cs.CoreV1().ServiceAccounts(r.ns).CreateToken(context.Background(), pod.ServiceAccountName,
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{}}, metav1.CreateOptions{})
	require.NoError(t, err, "%s: token of service account %s", podName, pod.ServiceAccountName)
	kc := clientcmdapi.NewConfig()
	kc.Clusters["c"] = &clientcmdapi.Cluster{Server: r.cluster.Config.Host, InsecureSkipTLSVerify: r.cluster.Config.Insecure,
		CertificateAuthorityData: r.cluster.Config.CAData}
	kc.AuthInfos["sa"] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	kc.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "sa", Namespace: r.ns}
	kc.CurrentContext = "c"
	path := filepath.Join(r.root, podName+".kubeconfig")
	require.NoError(t, clientcmd.WriteToFile(*kc, path))
	return path
}

// start runs one container of a pod template as a process named podName.
func (r *podRunner) start(pod corev1.PodSpec, podName string) *podProc {
	require.Len(r.t, pod.Containers, 1, podName)
	c := pod.Containers[0]
	require.Empty(r.t, c.Command, "%s: the image's entrypoint is khook; the chart sets only args", podName)
	cmd, probes := r.command(pod, podName, c.Args)
	return &podProc{proc: startCmd(r.t, podName, cmd), probes: probes}
}

// exec runs khook with args in the running pod podName, as `kubectl exec` would: with the
// container's environment and files, and none of the test's. It returns the output.
func (r *podRunner) exec(pod corev1.PodSpec, podName string, args ...string) (string, error) {
	cmd, _ := r.command(pod, podName, args)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// command is khook with args (paths inside the pod rewritten to their files here) in the
// environment the kubelet gives the pod's container, and the port of its probes.
func (r *podRunner) command(pod corev1.PodSpec, podName string, args []string) (*exec.Cmd, int) {
	t := r.t
	c := pod.Containers[0]
	rewrite := r.mount(pod, c, podName)
	env := r.envFor(pod, c, podName)
	probes := freePort(t)
	env = append(env, "KHOOK_SERVER_METRICS_ADDR=127.0.0.1:"+strconv.Itoa(freePort(t)),
		"KHOOK_SERVER_PROBES_ADDR=127.0.0.1:"+strconv.Itoa(probes))
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		env = append(env, "KUBECONFIG="+r.kubeconfigFor(pod, podName))
	}
	rewritten := make([]string, len(args))
	for i, a := range args {
		rewritten[i] = rewrite.Replace(a)
	}
	cmd := exec.Command(bins.khook(), rewritten...)
	cmd.Env = env // exactly the pod's: nothing of the test's own environment
	cmd.Dir = filepath.Join(r.root, podName)
	require.NoError(t, os.MkdirAll(cmd.Dir, 0o755))
	return cmd, probes
}

// ready waits for the container's readiness probe, as the chart declares it.
func (p *podProc) ready(t *testing.T, c corev1.Container) {
	t.Helper()
	require.NotNil(t, c.ReadinessProbe, p.name)
	require.Equal(t, "probes", c.ReadinessProbe.HTTPGet.Port.String(), p.name)
	url := fmt.Sprintf("http://127.0.0.1:%d%s", p.probes, c.ReadinessProbe.HTTPGet.Path)
	exited := false
	require.Eventually(t, func() bool {
		select {
		case <-p.done:
			exited = true
			return true
		default:
		}
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 60*time.Second, 50*time.Millisecond, "%s ready on %s", p.name, url)
	require.False(t, exited, "%s exited before it was ready: %v\n%s", p.name, p.err, p.out.String())
}

// decodeManifests decodes the objects of one kind in a manifest stream.
func decodeManifests[T any](t *testing.T, manifest, kind string) []T {
	t.Helper()
	var out []T
	for _, o := range decodeRendered(t, manifest).objects {
		if o.GetKind() != kind {
			continue
		}
		var v T
		require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &v))
		out = append(out, v)
	}
	return out
}

// chartCluster is what a chart install runs against: an API server with the Hook CRD from
// khook-crds and the namespace shop, a NATS server, and an A2A agent.
type chartCluster struct {
	cluster  *kubetest.Cluster
	cs       k8s.Interface
	hooks    dynamic.ResourceInterface // the Hooks of shop
	run      func(args ...string) (string, error)
	dir      string
	natsURL  string
	agent    *demoagent.Server
	agentURL string
}

func startChartCluster(t *testing.T) *chartCluster {
	t.Helper()
	c := &chartCluster{cluster: kubetest.Start(t, kubetest.Options{}), dir: t.TempDir()}
	c.cs = mustClientset(t, c.cluster)
	dyn, err := dynamic.NewForConfig(c.cluster.Config)
	require.NoError(t, err)
	c.hooks = dyn.Resource(hooksGVR).Namespace("shop")
	c.run = helmOn(t, c.cluster)
	mustHelm(t, c.run, "install", "khook-crds", crdChartDir, "--namespace", "kagent", "--create-namespace")
	ensureNamespace(t, c.cs, "shop")
	_, c.natsURL = startNATS(t, filepath.Join(c.dir, "nats"), freePort(t))
	c.agent, c.agentURL = startAgent(t)
	return c
}

// runner returns a pod runner for the release's namespace, once its Services exist.
func (c *chartCluster) runner(t *testing.T) *podRunner {
	t.Helper()
	svcs, err := c.cs.CoreV1().Services("kagent").List(context.Background(), metav1.ListOptions{})
	require.NoError(t, err)
	require.NotEmpty(t, svcs.Items)
	return &podRunner{t: t, cs: c.cs, cluster: c.cluster, ns: "kagent", root: filepath.Join(c.dir, "pods"), services: svcs.Items}
}

// runJob runs the release's one Job (the streams apply hook) to completion.
func (c *chartCluster) runJob(t *testing.T, r *podRunner, hooks string) {
	t.Helper()
	jobs := decodeManifests[batchv1.Job](t, hooks, "Job")
	require.Len(t, jobs, 1)
	job := r.start(jobs[0].Spec.Template.Spec, jobs[0].Name+"-0")
	select {
	case <-job.done:
		require.NoError(t, job.err, "the streams Job fails\n%s", job.out.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the streams Job did not finish\n%s", job.out.String())
	}
}

func TestChartPodsRunAsInstalled(t *testing.T) {
	c := startChartCluster(t)
	cluster, cs, run, dir, natsURL, agent, agentURL := c.cluster, c.cs, c.run, c.dir, c.natsURL, c.agent, c.agentURL
	ctx := context.Background()
	webhookPort, alertPort := freePort(t), freePort(t)
	// The release is installed as a user would install it (the streams Job is run by the
	// test below, as there is no kubelet for Helm to wait on).
	mappings := `eventMappings=[{"eventSource":"webhook","eventType":"deploy-failed","severity":"error"},` +
		`{"eventSource":"alertmanager","eventType":"firing","internalType":"alert-firing","severity":"critical"}]`
	mustHelm(t, run, "install", "khook", chartDir, "--namespace", "kagent", "--no-hooks",
		"--set", "nats.url="+natsURL+",kagent.url="+agentURL,
		"--set", fmt.Sprintf("webhook.enabled=true,webhook.port=%d,alertmanager.enabled=true,alertmanager.port=%d", webhookPort, alertPort),
		"--set", "dispatcher.terminationGracePeriodSeconds=20,logFormat=console",
		"--set-json", mappings)
	manifest := mustHelm(t, run, "get", "manifest", "khook", "--namespace", "kagent")
	hooks := mustHelm(t, run, "get", "hooks", "khook", "--namespace", "kagent")
	r := c.runner(t)
	c.runJob(t, r, hooks) // the post-install Job first: it must complete

	// Every Deployment's pod becomes ready on its readiness probe.
	deployments := decodeManifests[appsv1.Deployment](t, manifest, "Deployment")
	names := []string{}
	pods := map[string]*podProc{}
	specs := map[string]corev1.PodSpec{}
	for _, d := range deployments {
		names = append(names, d.Name)
		specs[d.Name] = d.Spec.Template.Spec
		pods[d.Name] = r.start(d.Spec.Template.Spec, d.Name+"-0")
	}
	require.Equal(t, []string{"khook-dispatcher", "khook-mapper", "khook-producer-alertmanager", "khook-producer-kubernetes", "khook-producer-webhook"},
		slices.Sorted(slices.Values(names)))
	for _, name := range names {
		pods[name].ready(t, specs[name].Containers[0])
	}
	for _, p := range pods {
		require.NotContains(t, p.out.String(), "no such setting", "%s: a Service-link variable was taken for a setting", p.name)
	}

	// `helm test`: its Pod publishes an event and succeeds once the mapper has taken it.
	testPods := decodeManifests[corev1.Pod](t, hooks, "Pod")
	require.Len(t, testPods, 1)
	require.Equal(t, "test", testPods[0].Annotations["helm.sh/hook"])
	helmTest := r.start(testPods[0].Spec, testPods[0].Name)
	select {
	case <-helmTest.done:
		require.NoError(t, helmTest.err, helmTest.out.String())
		require.Contains(t, helmTest.out.String(), "the mapper took the event")
	case <-time.After(90 * time.Second):
		t.Fatalf("the helm test Pod did not finish\n%s", helmTest.out.String())
	}

	// A webhook POST reaches one agent through a Hook resource of its type, and an
	// Alertmanager notification another through its own.
	hookRes := c.hooks
	_, err := hookRes.Create(ctx, hookFor("shop", "deploys", "deploy-failed", "sre-agent", "Deployment {{.ResourceName}} failed: {{.Message}}"), metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = hookRes.Create(ctx, hookFor("shop", "alerts", "alert-firing", "alert-agent", "Alert {{.Reason}} on {{.ResourceName}}"), metav1.CreateOptions{})
	require.NoError(t, err)
	// The dispatcher takes Hook changes within a moment; a first event may find no hook yet,
	// so each probe event has its own id until one arrives.
	deliveredTo := func(agentName string) int {
		n := 0
		for _, m := range agent.Received() {
			if m.Agent == "kagent/"+agentName {
				n++
			}
		}
		return n
	}
	postJSON := func(port int, path, body string) int {
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d%s", port, path), "application/json", strings.NewReader(body))
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	i := 0
	require.Eventually(t, func() bool {
		i++
		require.Equal(t, http.StatusAccepted, postJSON(webhookPort, "/webhook",
			fmt.Sprintf(`{"type":"deploy-failed","id":"probe-%d","namespace":"shop","resourceName":"cart","message":"rollout stuck"}`, i)))
		return deliveredTo("sre-agent") > 0
	}, 30*time.Second, 500*time.Millisecond, "a webhook event reaches sre-agent through its Hook")
	alert := `{"version":"4","status":"firing","receiver":"khook","alerts":[{"status":"firing",` +
		`"labels":{"alertname":"KubePodCrashLooping","namespace":"shop","pod":"cart-7d9"},` +
		`"annotations":{"summary":"cart is crash-looping"},"startsAt":"2026-11-28T10:00:00Z","fingerprint":"f1"}]}`
	require.Equal(t, http.StatusAccepted, postJSON(alertPort, "/alerts", alert))
	require.Eventually(t, func() bool { return deliveredTo("alert-agent") > 0 }, 30*time.Second, 20*time.Millisecond,
		"the Alertmanager notification reaches alert-agent through its Hook")
	for _, m := range agent.Received() {
		if m.Agent == "kagent/alert-agent" {
			require.Contains(t, m.Text, "Alert KubePodCrashLooping on cart-7d9")
		}
	}

	// The operations commands run in a stage's pod, as docs/operations.md shows with
	// `kubectl exec`: the pod's configuration, credentials and service account suffice.
	inDispatcher := func(args ...string) string {
		out, err := r.exec(specs["khook-dispatcher"], "khook-dispatcher-0", append(args, "--config", "/etc/khook/config/khook.yaml")...)
		require.NoError(t, err, "kubectl exec deploy/khook-dispatcher -- /khook %s\n%s", strings.Join(args, " "), out)
		return out
	}
	status := inDispatcher("status")
	require.Contains(t, status, "KHOOK_RAW")
	require.Contains(t, status, "shop/deploys")
	require.NotContains(t, status, "hooks:", "the hooks are read from the cluster with the dispatcher's account")
	var letters []json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(inDispatcher("dlq", "list", "-o", "json")), &letters))

	// A rollout of the dispatcher: SIGTERM the pod while events arrive, start its
	// replacement; every event reaches the agent once.
	before := deliveredTo("sre-agent")
	const events = 200
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for n := range events {
			body := fmt.Sprintf(`{"type":"deploy-failed","id":"rollout-%d","namespace":"shop","resourceName":"cart-%d","message":"m"}`, n, n)
			resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/webhook", webhookPort), "application/json", strings.NewReader(body))
			if err != nil {
				t.Errorf("post %d: %v", n, err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				t.Errorf("post %d: %d", n, resp.StatusCode)
			}
		}
	}()
	require.Eventually(t, func() bool { return deliveredTo("sre-agent") > before+20 }, 30*time.Second, 20*time.Millisecond)
	require.NoError(t, pods["khook-dispatcher"].stop(t), "the dispatcher stops cleanly on SIGTERM")
	replacement := r.start(specs["khook-dispatcher"], "khook-dispatcher-1")
	replacement.ready(t, specs["khook-dispatcher"].Containers[0])
	<-sent
	waitReceived(t, agent, before+events+deliveredTo("alert-agent"), 60*time.Second)
	seen := map[string]int{}
	for _, m := range agent.Received() {
		if strings.Contains(m.Text, "Resource: cart-") && m.Agent == "kagent/sre-agent" {
			seen[m.MessageID]++
		}
	}
	require.Len(t, seen, events, "every rollout event reached the agent")
	for id, n := range seen {
		require.Equal(t, 1, n, "message %s was delivered %d times", id, n)
	}
	pods["khook-dispatcher"] = replacement

	// The one-plugin rollback docs/helm.md gives: `khook plugins disable` edits one entry of
	// the plugin ConfigMap; once the kubelet has updated the mounted files, the alertmanager
	// plugin stops and the webhook keeps delivering. `enable` brings it back.
	toggle := func(verb string) {
		t.Helper()
		out, err := exec.Command(bins.khook(), "plugins", verb, "alertmanager", "--configmap", "khook-plugin-config",
			"--namespace", "kagent", "--kubeconfig", cluster.Kubeconfig).CombinedOutput()
		require.NoError(t, err, string(out))
		require.Contains(t, string(out), "plugin alertmanager "+verb+"d in configmap kagent/khook-plugin-config")
		for name, p := range pods { // the kubelet's sync of every pod's volumes
			r.mount(specs[name], specs[name].Containers[0], p.name)
		}
	}
	alertUp := func() bool {
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/alerts", alertPort), "application/json", strings.NewReader(alert))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusAccepted
	}
	toggle("disable")
	require.Eventually(t, func() bool { return !alertUp() }, 30*time.Second, 50*time.Millisecond, "the alertmanager plugin stops")
	before = deliveredTo("sre-agent")
	require.Equal(t, http.StatusAccepted, postJSON(webhookPort, "/webhook",
		`{"type":"deploy-failed","id":"while-disabled","namespace":"shop","resourceName":"while-disabled","message":"m"}`))
	require.Eventually(t, func() bool { return deliveredTo("sre-agent") > before }, 30*time.Second, 20*time.Millisecond,
		"the webhook keeps delivering while alertmanager is rolled back")
	toggle("enable")
	require.Eventually(t, alertUp, 30*time.Second, 50*time.Millisecond, "the alertmanager plugin is back")

	// `helm upgrade` to the production values, then the guide's `helm rollback`: after each,
	// the pods are replaced from what the API server then holds, and an event goes through.
	// The production values are kept but for what needs infrastructure this test does not
	// have: three NATS servers for three stream replicas, and NATS credentials.
	apply(t, cluster.Config, stubCRDs, "")
	ensureNamespace(t, cs, "production") // the production kubernetes plugin watches it
	certs := filepath.Join(dir, "certs")
	writeSelfSigned(t, certs)
	crt, err := os.ReadFile(filepath.Join(certs, "tls.crt"))
	require.NoError(t, err)
	key, err := os.ReadFile(filepath.Join(certs, "tls.key"))
	require.NoError(t, err)
	_, err = cs.CoreV1().Secrets("kagent").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "khook-webhook-tls"},
		Type: corev1.SecretTypeTLS, Data: map[string][]byte{"tls.crt": crt, "tls.key": key}}, metav1.CreateOptions{})
	require.NoError(t, err)
	replaceAll := func(suffix string) {
		t.Helper()
		for name, p := range pods {
			require.NoError(t, p.stop(t), "%s stops cleanly", name)
		}
		manifest := mustHelm(t, run, "get", "manifest", "khook", "--namespace", "kagent")
		pods, specs = map[string]*podProc{}, map[string]corev1.PodSpec{}
		for _, d := range decodeManifests[appsv1.Deployment](t, manifest, "Deployment") {
			specs[d.Name] = d.Spec.Template.Spec
			pods[d.Name] = r.start(d.Spec.Template.Spec, d.Name+suffix)
		}
		for name, p := range pods {
			p.ready(t, specs[name].Containers[0])
		}
	}
	deliver := func(client *http.Client, scheme, id string) {
		t.Helper()
		before := deliveredTo("sre-agent")
		// A resource of its own: another event for an earlier resource would be suppressed.
		body := fmt.Sprintf(`{"type":"deploy-failed","id":%q,"namespace":"shop","resourceName":%q,"message":"m"}`, id, id)
		resp, err := client.Post(fmt.Sprintf("%s://127.0.0.1:%d/webhook", scheme, webhookPort), "application/json", strings.NewReader(body))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
		require.Eventually(t, func() bool { return deliveredTo("sre-agent") > before }, 30*time.Second, 20*time.Millisecond,
			"event %s reaches the agent", id)
	}
	mustHelm(t, run, "upgrade", "khook", chartDir, "--namespace", "kagent", "--no-hooks", "--reuse-values",
		"--values", filepath.Join(chartDir, "values-prod.yaml"),
		"--set", "streams.replicas=1,nats.credentialsSecret.name=,nats.url="+natsURL,
		"--set", fmt.Sprintf("plugins[1].config.port=%d", webhookPort),
		// The production values map only Kubernetes events; without the webhook's mapping
		// its events would be dropped as unmapped.
		"--set-json", mappings)
	replaceAll("-prod")
	require.Contains(t, names, "khook-producer-alertmanager")
	require.NotContains(t, keys(pods), "khook-producer-alertmanager", "the production plugins list has no alertmanager")
	tlsClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the test's own certificate
	deliver(tlsClient, "https", "after-upgrade")

	mustHelm(t, run, "rollback", "khook", "1", "--namespace", "kagent", "--no-hooks")
	replaceAll("-rolled-back")
	require.Contains(t, keys(pods), "khook-producer-alertmanager", "the rollback brings the first release's plugins back")
	deliver(http.DefaultClient, "http", "after-rollback")
}

func keys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// TestChartSingleDeploymentRuns is the small-cluster install of values-single.yaml: one
// Deployment named khook runs every stage, the ConfigMaps have the deployment guide's names,
// and the guide's objects (deployment/khook, configmap plugin-config) are what the commands
// name. The pod runs as installed; a webhook event reaches the agent through a Hook, and the
// one-plugin rollback on the guide's ConfigMap stops the webhook.
func TestChartSingleDeploymentRuns(t *testing.T) {
	c := startChartCluster(t)
	cluster, cs, run, natsURL, agent, agentURL := c.cluster, c.cs, c.run, c.natsURL, c.agent, c.agentURL
	ctx := context.Background()
	webhookPort := freePort(t)
	mustHelm(t, run, "install", "khook", chartDir, "--namespace", "kagent", "--no-hooks",
		"--values", filepath.Join(chartDir, "values-single.yaml"),
		"--set", fmt.Sprintf("nats.url=%s,kagent.url=%s,webhook.port=%d,logFormat=console", natsURL, agentURL, webhookPort),
		"--set-json", `eventMappings=[{"eventSource":"webhook","eventType":"deploy-failed","severity":"error"}]`)
	_, err := cs.AppsV1().Deployments("kagent").Get(ctx, "khook", metav1.GetOptions{})
	require.NoError(t, err, "the guide's deployment/khook")
	for _, name := range []string{"plugin-config", "event-mappings"} {
		_, err = cs.CoreV1().ConfigMaps("kagent").Get(ctx, name, metav1.GetOptions{})
		require.NoError(t, err, "the guide's configmap %s", name)
	}

	manifest := mustHelm(t, run, "get", "manifest", "khook", "--namespace", "kagent")
	r := c.runner(t)
	c.runJob(t, r, mustHelm(t, run, "get", "hooks", "khook", "--namespace", "kagent"))
	deployments := decodeManifests[appsv1.Deployment](t, manifest, "Deployment")
	require.Len(t, deployments, 1)
	require.Equal(t, "khook", deployments[0].Name)
	spec := deployments[0].Spec.Template.Spec
	require.Equal(t, []string{"run"}, spec.Containers[0].Args[:1])
	pod := r.start(spec, "khook-0")
	pod.ready(t, spec.Containers[0])

	_, err = c.hooks.Create(ctx,
		hookFor("shop", "deploys", "deploy-failed", "sre-agent", "Deployment {{.ResourceName}} failed"), metav1.CreateOptions{})
	require.NoError(t, err)
	post := func(id string) (int, error) {
		body := fmt.Sprintf(`{"type":"deploy-failed","id":%q,"namespace":"shop","resourceName":%q,"message":"m"}`, id, id)
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/webhook", webhookPort), "application/json", strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	// The dispatcher may not have seen the new Hook yet: each try is a new resource.
	i := 0
	require.Eventually(t, func() bool {
		i++
		code, err := post(fmt.Sprintf("single-%d", i))
		return err == nil && code == http.StatusAccepted && len(agent.Received()) > 0
	}, 30*time.Second, 500*time.Millisecond, "a webhook event reaches the agent through the single Deployment")
	require.Equal(t, "kagent/sre-agent", agent.Received()[0].Agent)

	out, err := exec.Command(bins.khook(), "plugins", "disable", "webhook", "--configmap", "plugin-config",
		"--namespace", "kagent", "--kubeconfig", cluster.Kubeconfig).CombinedOutput()
	require.NoError(t, err, string(out))
	r.mount(spec, spec.Containers[0], "khook-0")
	require.Eventually(t, func() bool {
		_, err := post("after-disable")
		return err != nil
	}, 30*time.Second, 50*time.Millisecond, "the webhook stops once the guide's ConfigMap disables it")
	// The listener closes before the supervisor logs the stop, so the line is awaited too.
	require.Eventually(t, func() bool { return strings.Contains(pod.out.String(), "plugin stopped") },
		10*time.Second, 10*time.Millisecond, "the supervisor logs the plugin's stop")
}

// The helm test's check fails, and says why, when no mapper takes the event.
func TestPublishWaitFailsWithoutAMapper(t *testing.T) {
	dir := t.TempDir()
	_, natsURL := startNATS(t, filepath.Join(dir, "nats"), freePort(t))
	out, err := exec.Command(bins.khook(), "streams", "apply", "--nats-url", natsURL).CombinedOutput()
	require.NoError(t, err, string(out))
	out, err = exec.Command(bins.khook(), "publish", "--nats-url", natsURL, "--source", "helm-test", "--type", "helm-test",
		"--data", `{"message":"m"}`, "--wait", "1s").CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "the mapper did not take the event")
	out, err = exec.Command(bins.khook(), "publish", "--nats-url", natsURL, "--source", "helm-test", "--wait", "1s").CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "--wait needs --data")
}

// TestChartEdgeAndHubRun installs the chart twice in one API server, as two clusters would:
// a hub (values-hub.yaml, its stages against a NATS server with a leaf port and a domain of
// its own) and an edge (values-edge.yaml, in its own namespace, with the leaf password from
// a Secret and its store on a claim). Each pod runs with what its spec gives it. An event
// posted to the edge's webhook reaches the hub's agent, named with the edge's cluster; the
// edge restarted on its claim keeps taking events.
func TestChartEdgeAndHubRun(t *testing.T) {
	c := startChartCluster(t)
	ctx := context.Background()

	// The hub's NATS: JetStream in domain hub, and the leaf port with the edges' password.
	leaf, natsPort := freePort(t), freePort(t)
	natsConf := filepath.Join(c.dir, "hub-nats.conf")
	require.NoError(t, os.WriteFile(natsConf, []byte(fmt.Sprintf(`listen: 127.0.0.1:%d
jetstream { store_dir: %q, domain: hub }
leafnodes { listen: 127.0.0.1:%d, authorization { user: edge, password: s3cret } }
`, natsPort, filepath.Join(c.dir, "hub-nats"), leaf)), 0o600))
	_, hubNATS := startNATSArgs(t, natsPort, "-c", natsConf)

	mustHelm(t, c.run, "install", "khook", chartDir, "--namespace", "kagent", "--no-hooks",
		"--values", filepath.Join(chartDir, "values-hub.yaml"),
		"--set", fmt.Sprintf("nats.url=%s,kagent.url=%s,logFormat=console,clusters={eu-1}", hubNATS, c.agentURL),
		"--set", "mapper.autoscaling.enabled=false,dispatcher.autoscaling.enabled=false",
		"--set-json", `eventMappings=[{"eventSource":"webhook","eventType":"deploy-failed","severity":"error"}]`)
	hub := c.runner(t)
	c.runJob(t, hub, mustHelm(t, c.run, "get", "hooks", "khook", "--namespace", "kagent"))
	for _, d := range decodeManifests[appsv1.Deployment](t, mustHelm(t, c.run, "get", "manifest", "khook", "--namespace", "kagent"), "Deployment") {
		spec := d.Spec.Template.Spec
		hub.start(spec, d.Name+"-0").ready(t, spec.Containers[0])
	}
	_, err := c.hooks.Create(ctx, hookFor("shop", "deploys", "deploy-failed", "sre-agent", "Deployment {{.ResourceName}} in {{.Cluster}} failed"), metav1.CreateOptions{})
	require.NoError(t, err)

	// The edge, in a namespace of its own, with the password from a Secret.
	ensureNamespace(t, c.cs, "edge")
	_, err = c.cs.CoreV1().Secrets("edge").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "khook-leaf"},
		Data: map[string][]byte{"password": []byte("s3cret\n")}}, metav1.CreateOptions{})
	require.NoError(t, err)
	webhookPort := freePort(t)
	mustHelm(t, c.run, "install", "edge", chartDir, "--namespace", "edge", "--no-hooks",
		"--values", filepath.Join(chartDir, "values-edge.yaml"),
		"--set", fmt.Sprintf("cluster=eu-1,edge.hub.url=nats-leaf://127.0.0.1:%d,webhook.port=%d,logFormat=console", leaf, webhookPort))
	manifest := mustHelm(t, c.run, "get", "manifest", "edge", "--namespace", "edge")
	require.Empty(t, decodeManifests[batchv1.Job](t, mustHelm(t, c.run, "get", "hooks", "edge", "--namespace", "edge"), "Job"))
	deployments := decodeManifests[appsv1.Deployment](t, manifest, "Deployment")
	require.Len(t, deployments, 1)
	svcs, err := c.cs.CoreV1().Services("edge").List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	edge := &podRunner{t: t, cs: c.cs, cluster: c.cluster, ns: "edge", root: filepath.Join(c.dir, "edge-pods"), services: svcs.Items}
	spec := deployments[0].Spec.Template.Spec
	pod := edge.start(spec, "edge-khook-edge-0")
	pod.ready(t, spec.Containers[0])

	post := func(name string) (int, error) {
		body := fmt.Sprintf(`{"type":"deploy-failed","namespace":"shop","resourceName":%q,"message":"m"}`, name)
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/webhook", webhookPort), "application/json", strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	// The dispatcher may not have seen the new Hook yet: each try is a new resource.
	i := 0
	require.Eventually(t, func() bool {
		i++
		code, err := post(fmt.Sprintf("web-%d", i))
		return err == nil && code == http.StatusAccepted && len(c.agent.Received()) > 0
	}, 2*time.Minute, 500*time.Millisecond, "an event posted to the edge reaches the hub's agent")
	require.Contains(t, c.agent.Received()[0].Text, "in eu-1 failed")
	require.Contains(t, c.agent.Received()[0].Text, "\nCluster: eu-1\n")

	// The edge restarted on its claim: its store is where it was, and it takes events again.
	pod.kill()
	pod = edge.start(spec, "edge-khook-edge-0")
	pod.ready(t, spec.Containers[0])
	code, err := post("after-restart")
	require.NoError(t, err)
	require.Equal(t, http.StatusAccepted, code)
	require.Eventually(t, func() bool {
		for _, r := range c.agent.Received() {
			if strings.Contains(r.Text, "Deployment after-restart in eu-1 failed") {
				return true
			}
		}
		return false
	}, 3*time.Minute, 200*time.Millisecond, "the restarted edge's event at the hub's agent")
}
