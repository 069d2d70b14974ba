package test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	cmd := exec.Command(bin, "--events", "300", "--storm", "1000", "--rates", "200", "--rate-duration", "1s", "--timeout", "60s", "--fanin-mib", "1",
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
			FanIn      *struct {
				BacklogEvents  int     `json:"backlogEventsPerEdge"`
				CatchUpSeconds float64 `json:"catchUpSeconds"`
				LiveEvents     int     `json:"liveEventsPerEdge"`
			} `json:"fanIn"`
			Scale []struct {
				Stage        string  `json:"stage"`
				Replicas     int     `json:"replicas"`
				Events       int     `json:"events"`
				EventsPerSec float64 `json:"eventsPerSec"`
				Efficiency   float64 `json:"efficiency"`
			} `json:"scale"`
		} `json:"results"`
		RelativeRate int `json:"relativeRate"`
	}
	require.NoError(t, json.Unmarshal(b, &rep))
	var names []string
	require.Positive(t, rep.RelativeRate, "the relative load comes from raw-two-stage-call's capacity")
	for _, r := range rep.Results {
		names = append(names, r.Name)
		require.Greater(t, r.EventsPerSec, 0.0, r.Name)
		if r.Name == "scale" {
			// Three replica counts of each stage, every run complete (no speed asserted).
			var runs []string
			for _, p := range r.Scale {
				runs = append(runs, fmt.Sprintf("%s-%d", p.Stage, p.Replicas))
				require.Positive(t, p.Events, "%s-%d", p.Stage, p.Replicas)
				require.Positive(t, p.EventsPerSec, "%s-%d", p.Stage, p.Replicas)
				require.Positive(t, p.Efficiency, "%s-%d", p.Stage, p.Replicas)
			}
			require.Equal(t, []string{"dispatcher-1", "dispatcher-2", "dispatcher-4", "mapper-1", "mapper-2", "mapper-4"}, runs)
			continue
		}
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
		case "fan-in":
			// Three edges' 1 MiB backlogs caught up, then 300 events from each (no speed asserted).
			require.NotNil(t, r.FanIn)
			require.Equal(t, 1024, r.FanIn.BacklogEvents)
			require.Positive(t, r.FanIn.CatchUpSeconds)
			require.Equal(t, 300, r.FanIn.LiveEvents)
			require.Equal(t, 900, r.Events)
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
		"webhook", "webhook-batch", "mapper", "dispatcher", "storm", "storm-grouped", "end-to-end", "scale", "fan-in"}, names)
	for _, f := range []string{"results.md", "results.png", "results-scale.png"} {
		st, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		require.Greater(t, st.Size(), int64(100), f)
	}
}

// TestBenchHarnessNamesFailures runs the harness with a stage that dies: it must stop
// waiting at once and say, on its last line, which scenario failed and why, rather than
// wait out its timeout or exit with its table alone.
func TestBenchHarnessNamesFailures(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "khook-bench")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/khook/khook/cmd/khook-bench").CombinedOutput()
	require.NoError(t, err, string(out))
	// A khook that exits at once, as a stage that crashes on start would.
	broken := filepath.Join(dir, "khook")
	require.NoError(t, os.WriteFile(broken, []byte("#!/bin/sh\necho 'boom: the stage fell over' >&2\nexit 3\n"), 0o755))
	cmd := exec.Command(bin, "--only", "raw-relay,mapper", "--events", "50", "--rates", "50", "--rate-duration", "1s",
		"--timeout", "10m", "--out", dir, "--khook", broken, "--nats-server", bins.natsServer())
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "stderr:\n%s", stderr.String())
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	last := lines[len(lines)-1]
	require.Contains(t, last, "1 scenario(s) failed: mapper:")
	require.Contains(t, last, "exited")
	require.Contains(t, stderr.String(), "boom: the stage fell over", "the stage's output is shown")
	require.Contains(t, stdout.String(), "raw-relay", "the table is still printed")
}
