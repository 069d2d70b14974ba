package test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBenchHarnessSmoke runs `make bench`'s harness with a few hundred events, so the
// harness keeps working between full runs. It checks that every scenario ran and every
// event arrived; it asserts no speed.
func TestBenchHarnessSmoke(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "khook-bench")
	build := exec.Command("go", "build", "-o", bin, "github.com/khook/khook/cmd/khook-bench")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))
	cmd := exec.Command(bin, "--events", "300", "--storm", "1000", "--rates", "200", "--rate-duration", "1s", "--timeout", "60s",
		"--out", dir, "--khook", bins.khook(), "--nats-server", bins.natsServer())
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	t.Logf("\n%s", out)

	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	require.NoError(t, err)
	var rep struct {
		Results []struct {
			Name         string  `json:"name"`
			Events       int     `json:"events"`
			EventsPerSec float64 `json:"eventsPerSec"`
			Ratio        float64 `json:"ratio"`
			Baseline     string  `json:"baseline"`
			Latency      []struct {
				Rate, Sent, Received int
				Relative             bool
			} `json:"latency"`
			PeakRSSMiB map[string]float64 `json:"peakRssMiB"`
			AgentCalls int                `json:"agentCalls"`
		} `json:"results"`
		RelativeRate int `json:"relativeRate"`
	}
	require.NoError(t, json.Unmarshal(b, &rep))
	var names []string
	require.Positive(t, rep.RelativeRate, "the relative load comes from raw-two-stage-call's capacity")
	for _, r := range rep.Results {
		names = append(names, r.Name)
		require.Greater(t, r.EventsPerSec, 0.0, r.Name)
		if r.Name != "raw-publish" { // the only scenario without a process under test
			require.NotEmpty(t, r.PeakRSSMiB, r.Name)
		}
		if r.Baseline != "" {
			require.Greater(t, r.Ratio, 0.0, r.Name)
		}
		switch r.Name {
		case "storm":
			// Saturation only: 1,000 events, one call per distinct resource (10) and one for
			// the repeated resource.
			require.Equal(t, 1000, r.Events)
			require.Equal(t, 11, r.AgentCalls)
			require.Empty(t, r.Latency)
			continue
		case "storm-grouped":
			// The same storm as one task.
			require.Equal(t, 1000, r.Events)
			require.Equal(t, 1, r.AgentCalls)
			require.Empty(t, r.Latency)
			continue
		case "webhook-batch":
			require.Equal(t, 300, r.Events)
			require.Empty(t, r.Latency)
			continue
		}
		require.Equal(t, 300, r.Events, r.Name)
		want := 1
		if r.Name == "raw-two-stage-call" || r.Name == "end-to-end" {
			want = 2
			require.True(t, r.Latency[1].Relative, r.Name)
			require.Equal(t, rep.RelativeRate, r.Latency[1].Rate, r.Name)
		}
		require.Len(t, r.Latency, want, r.Name)
		for _, l := range r.Latency {
			require.Equal(t, l.Sent, l.Received, r.Name)
		}
	}
	require.Equal(t, []string{"raw-publish", "raw-ingress", "raw-relay", "raw-call", "raw-call-16", "raw-two-stage", "raw-two-stage-call",
		"webhook", "webhook-batch", "mapper", "dispatcher", "storm", "storm-grouped", "end-to-end"}, names)
	for _, f := range []string{"results.md", "results.png"} {
		st, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		require.Greater(t, st.Size(), int64(100), f)
	}
}
