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
	cmd := exec.Command(bin, "--events", "300", "--rates", "200", "--rate-duration", "1s", "--timeout", "60s",
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
				Sent, Received int
			} `json:"latency"`
			PeakRSSMiB map[string]float64 `json:"peakRssMiB"`
		} `json:"results"`
	}
	require.NoError(t, json.Unmarshal(b, &rep))
	var names []string
	for _, r := range rep.Results {
		names = append(names, r.Name)
		require.Equal(t, 300, r.Events, r.Name)
		require.Greater(t, r.EventsPerSec, 0.0, r.Name)
		require.Len(t, r.Latency, 1, r.Name)
		require.Equal(t, r.Latency[0].Sent, r.Latency[0].Received, r.Name)
		if r.Baseline != "" {
			require.Greater(t, r.Ratio, 0.0, r.Name)
		}
	}
	require.Equal(t, []string{"raw-publish", "raw-relay", "raw-call", "raw-two-stage", "raw-two-stage-call",
		"webhook", "mapper", "dispatcher", "end-to-end"}, names)
	for _, f := range []string{"results.md", "results.png"} {
		st, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		require.Greater(t, st.Size(), int64(100), f)
	}
}
