package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestUpstreamSetupMigrates runs a dispatcher configured as an upstream khook deployment
// would leave it: the agent API in upstream's older KAGENT_API_BASE_URL (the config file's
// kagent.url points nowhere), and a Hook whose prompt uses a placeholder khook does not know.
// The Hook keeps working with the placeholder sent as written, and carries a Warning Event
// that names it.
func TestUpstreamSetupMigrates(t *testing.T) {
	c := startHookCluster(t, "shop")
	ctx := context.Background()
	_, err := c.hooks.Create(ctx, hookObject("shop", "restarts", "Pod {{.ResourceName}} ({{ .PodUID }}) restarted", ""), metav1.CreateOptions{})
	require.NoError(t, err)

	rig := startRig(t)
	dir, natsURL, js, agent, agentURL := rig.dir, rig.natsURL, rig.js, rig.agent, rig.agentURL
	f := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: "http://127.0.0.1:1", webhook: freePort(t), metrics: freePort(t),
		probes: freePort(t), kubeconfig: c.Kubeconfig}
	d := startEnv(t, "khook dispatcher", []string{"KAGENT_API_BASE_URL=" + agentURL}, bins.khook(), "dispatcher", "--config", f.write(t))
	waitReady(t, d, f.probes)
	publishPodRestarts(t, js, "shop", "pod", 3)
	got := waitReceived(t, agent, 3, 30*time.Second)
	for _, r := range got {
		require.Equal(t, "kagent/k8s-agent", r.Agent)
		require.Regexp(t, `^Pod pod-\d \(\{\{ \.PodUID \}\}\) restarted\n`, r.Text)
	}
	require.Eventually(t, func() bool {
		evs, err := c.cs.EventsV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "regarding.name=restarts"})
		require.NoError(t, err)
		for _, e := range evs.Items {
			if e.Reason == "UnknownPlaceholder" && e.Type == "Warning" && strings.Contains(e.Note, "{{ .PodUID }} is not a field khook knows") {
				return true
			}
		}
		return false
	}, 30*time.Second, 50*time.Millisecond, "the Hook carries UnknownPlaceholder naming the placeholder")
}
