package test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	k8s "k8s.io/client-go/kubernetes"

	"github.com/khook/khook/internal/kubetest"
)

// crdChartDir is the chart that installs and upgrades the Hook CRD; hookCRD is its CRD as a
// plain file, which the tests apply directly where the chart is not what they test.
const (
	crdChartDir = "../helm/khook-crds"
	hookCRD     = crdChartDir + "/files/kagent.dev_hooks.yaml"
)

var hooksGVR = schema.GroupVersionResource{Group: "kagent.dev", Version: "v1alpha2", Resource: "hooks"}

// helmOn returns a function that runs helm against cluster, with helm's own state in
// temporary directories; it returns helm's combined output and error.
func helmOn(t *testing.T, cluster *kubetest.Cluster) func(args ...string) (string, error) {
	t.Helper()
	env := append(os.Environ(), "KUBECONFIG="+cluster.Kubeconfig, "HELM_CACHE_HOME="+t.TempDir(),
		"HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	return func(args ...string) (string, error) {
		cmd := exec.Command(helmBin(t), args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
}

// mustHelm runs helm and fails the test when it fails.
func mustHelm(t *testing.T, run func(args ...string) (string, error), args ...string) string {
	t.Helper()
	out, err := run(args...)
	require.NoError(t, err, "helm %s\n%s", strings.Join(args, " "), out)
	return out
}

func TestCRDChartLintsAndKeepsTheCRD(t *testing.T) {
	helm(t, "lint", "--strict", crdChartDir)
	out := helm(t, "template", "khook-crds", crdChartDir, "--namespace", "kagent")
	require.Contains(t, out, "name: hooks.kagent.dev")
	require.Contains(t, out, "helm.sh/resource-policy: keep")
	require.Contains(t, out, "app.kubernetes.io/instance: khook-crds")
	require.NotContains(t, helm(t, "template", "khook-crds", crdChartDir, "--set", "keep=false"), "resource-policy")
	// The main chart ships no CRD: two charts owning one CRD cannot both install it.
	require.NotContains(t, helm(t, "template", "khook", chartDir, "--include-crds"), "CustomResourceDefinition")
}

// TestCRDUpgradeFromUpstream is the upgrade of a cluster that ran upstream kagent-dev/khook:
// its khook-crds release installed the CRD from crds/, with the four-type enum and no khook
// extensions. `helm upgrade --take-ownership` with khook's khook-crds chart must replace the
// schema, keep the existing Hooks, and then accept Hooks with the new types and fields.
func TestCRDUpgradeFromUpstream(t *testing.T) {
	cluster := kubetest.Start(t, kubetest.Options{})
	dyn, err := dynamic.NewForConfig(cluster.Config)
	require.NoError(t, err)
	run := helmOn(t, cluster)
	ctx := context.Background()
	hooks := dyn.Resource(hooksGVR).Namespace("shop")

	mustHelm(t, run, "install", "khook-crds", "testdata/upstream-khook-crds", "--namespace", "kagent", "--create-namespace")
	ensureNamespace(t, mustClientset(t, cluster), "shop")
	var old *unstructured.Unstructured
	require.Eventually(t, func() bool {
		old, err = hooks.Create(ctx, hookFor("shop", "restarts", "pod-restart", "sre", "{{.ResourceName}} restarted"), metav1.CreateOptions{})
		return err == nil
	}, 30*time.Second, 50*time.Millisecond, "the upstream CRD is served: %v", err)

	// What upstream's schema does to khook's Hooks: a webhook type is refused, and the
	// extensions are pruned silently.
	_, err = hooks.Create(ctx, hookFor("shop", "deploys", "deploy-failed", "sre", "{{.ResourceName}} failed"), metav1.CreateOptions{})
	require.True(t, apierrors.IsInvalid(err), "upstream's enum refuses deploy-failed: %v", err)
	ext := withExtensions(hookFor("shop", "pruned", "pod-restart", "sre", "x"))
	got, err := hooks.Create(ctx, ext, metav1.CreateOptions{})
	require.NoError(t, err)
	_, found, _ := unstructured.NestedString(got.Object, "spec", "suppressionWindow")
	require.False(t, found, "upstream's schema prunes the extensions")

	// Without --take-ownership Helm refuses to adopt a CRD that crds/ installed, and says why;
	// the CRD is left as it was.
	out, err := run("upgrade", "khook-crds", crdChartDir, "--namespace", "kagent")
	require.Error(t, err)
	require.Contains(t, out, "invalid ownership metadata")

	mustHelm(t, run, "upgrade", "khook-crds", crdChartDir, "--namespace", "kagent", "--take-ownership")
	var created *unstructured.Unstructured
	require.Eventually(t, func() bool {
		// The API server applies a CRD's new schema shortly after the update is stored.
		created, err = hooks.Create(ctx, withExtensions(hookFor("shop", "deploys", "deploy-failed", "sre", "{{.ResourceName}} failed")), metav1.CreateOptions{})
		return err == nil
	}, 30*time.Second, 50*time.Millisecond, "the upgraded CRD accepts deploy-failed: %v", err)
	window, _, _ := unstructured.NestedString(created.Object, "spec", "suppressionWindow")
	require.Equal(t, "5m", window, "the extensions are kept")
	groupBy, _, _ := unstructured.NestedStringSlice(created.Object, "spec", "groupBy")
	require.Equal(t, []string{"owner", "tags.team"}, groupBy, "the grouping extensions are kept")
	maxEvents, _, _ := unstructured.NestedInt64(created.Object, "spec", "maxEventsPerTask")
	require.Equal(t, int64(50), maxEvents)
	configs, _, _ := unstructured.NestedSlice(created.Object, "spec", "eventConfigurations")
	require.Equal(t, "error", configs[0].(map[string]any)["minSeverity"])
	require.Equal(t, map[string]any{"team": "payments"}, configs[0].(map[string]any)["tagSelector"])
	// The new schema's validation is in force, not just a wider enum.
	bad := hookFor("shop", "bad", "Deploy Failed", "sre", "x")
	_, err = hooks.Create(ctx, bad, metav1.CreateOptions{})
	require.True(t, apierrors.IsInvalid(err), "eventType must match the type syntax: %v", err)
	badGroup := withExtensions(hookFor("shop", "bad-group", "pod-restart", "sre", "x"))
	_ = unstructured.SetNestedStringSlice(badGroup.Object, []string{"pod"}, "spec", "groupBy")
	_, err = hooks.Create(ctx, badGroup, metav1.CreateOptions{})
	require.True(t, apierrors.IsInvalid(err), "groupBy names a known label: %v", err)

	// The Hook made under upstream's schema is untouched.
	kept, err := hooks.Get(ctx, "restarts", metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, old.GetUID(), kept.GetUID())

	// Uninstalling the CRD release keeps the CRD, and so every Hook.
	mustHelm(t, run, "uninstall", "khook-crds", "--namespace", "kagent")
	list, err := hooks.List(ctx, metav1.ListOptions{})
	require.NoError(t, err)
	require.Len(t, list.Items, 3, "restarts, pruned and deploys survive the uninstall")
}

// withExtensions sets khook's extension fields on a Hook made by hookFor.
func withExtensions(h *unstructured.Unstructured) *unstructured.Unstructured {
	_ = unstructured.SetNestedField(h.Object, "5m", "spec", "suppressionWindow")
	_ = unstructured.SetNestedStringSlice(h.Object, []string{"owner", "tags.team"}, "spec", "groupBy")
	_ = unstructured.SetNestedField(h.Object, "30s", "spec", "groupWait")
	_ = unstructured.SetNestedField(h.Object, "5m", "spec", "groupInterval")
	_ = unstructured.SetNestedField(h.Object, int64(50), "spec", "maxEventsPerTask")
	configs, _, _ := unstructured.NestedSlice(h.Object, "spec", "eventConfigurations")
	c := configs[0].(map[string]any)
	c["minSeverity"] = "error"
	c["tagSelector"] = map[string]any{"team": "payments"}
	_ = unstructured.SetNestedSlice(h.Object, configs, "spec", "eventConfigurations")
	return h
}

// TestCRDChartInstallsOnAFreshCluster is the first install: khook-crds, then a Hook with the
// extensions and a webhook type.
func TestCRDChartInstallsOnAFreshCluster(t *testing.T) {
	cluster := kubetest.Start(t, kubetest.Options{})
	dyn, err := dynamic.NewForConfig(cluster.Config)
	require.NoError(t, err)
	run := helmOn(t, cluster)
	// The main chart, installed first by mistake, says what is missing.
	ensureNamespace(t, mustClientset(t, cluster), "kagent")
	notes := mustHelm(t, run, "install", "khook", chartDir, "--namespace", "kagent", "--dry-run=server")
	require.Contains(t, notes, "WARNING: the Hook CRD (hooks.kagent.dev) is not served")
	mustHelm(t, run, "install", "khook-crds", crdChartDir, "--namespace", "kagent", "--create-namespace")
	ensureNamespace(t, mustClientset(t, cluster), "shop")
	hooks := dyn.Resource(hooksGVR).Namespace("shop")
	require.Eventually(t, func() bool {
		_, err = hooks.Create(context.Background(), withExtensions(hookFor("shop", "deploys", "deploy-failed", "sre", "x")), metav1.CreateOptions{})
		return err == nil
	}, 30*time.Second, 50*time.Millisecond, "the CRD is served: %v", err)
	// An upgrade of the same chart is a no-op for Hooks, and is how later schemas arrive.
	mustHelm(t, run, "upgrade", "khook-crds", crdChartDir, "--namespace", "kagent")
	_, err = hooks.Get(context.Background(), "deploys", metav1.GetOptions{})
	require.NoError(t, err)
	notes = mustHelm(t, run, "install", "khook", chartDir, "--namespace", "kagent", "--dry-run=server")
	require.NotContains(t, notes, "WARNING")
}

func mustClientset(t *testing.T, cluster *kubetest.Cluster) k8s.Interface {
	t.Helper()
	cs, err := k8s.NewForConfig(cluster.Config)
	require.NoError(t, err)
	return cs
}

// Upstream khook's chart values are refused by name, each with its replacement, rather than
// ignored into a khook that calls the wrong agent URL.
func TestChartRefusesUpstreamValues(t *testing.T) {
	out, err := exec.Command(helmBin(t), "template", "khook", chartDir, "--values", "testdata/upstream-values.yaml").CombinedOutput()
	require.Error(t, err, string(out))
	for _, want := range []string{"kagent.apiUrl: set kagent.url", "kagent.retryAttempts/retryBackoff", "controller.*: set logLevel",
		"crds.install: the CRD is the khook-crds chart", "healthCheck: set probes", "image.registry", "namespace.*", "metrics.enabled/metrics.port",
		"docs/kubernetes.md#migrating-from-upstream-khook"} {
		require.Contains(t, string(out), want)
	}
	// userId and timeout are read by both charts, so they alone pass.
	helm(t, "template", "khook", chartDir, "--set", "kagent.userId=admin@kagent.dev,kagent.timeout=30s")
}

// values.schema.json turns a typo or a wrong type into an error at `helm install`, naming the
// key, instead of a pod that crash-loops.
func TestChartValuesSchema(t *testing.T) {
	for _, tc := range []struct{ set, want string }{
		{"webhok.enabled=true", "additional properties 'webhok' not allowed"},
		{"dispatcher.workers=many", "/dispatcher/workers': got string, want integer"},
		{"hooks.source=crd", "/hooks/source"},
		{"producers.perPlugin.webhook.replicaCont=2", "additional properties 'replicaCont' not allowed"},
		{"image.pullPolicy=Sometimes", "/image/pullPolicy"},
	} {
		out, err := exec.Command(helmBin(t), "template", "khook", chartDir, "--set", tc.set).CombinedOutput()
		require.Error(t, err, tc.set)
		require.Contains(t, string(out), tc.want, tc.set)
	}
	// Stage overrides take the stage keys, per plugin too.
	helm(t, "template", "khook", chartDir, "--set", "producers.perPlugin.kubernetes.replicaCount=2,dispatcher.workers=32,mapper.autoscaling.enabled=true")
}
