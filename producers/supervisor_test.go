package producers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/khook/khook/internal/filewatch"
	"github.com/khook/khook/internal/telemetry"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/streamstest"
)

// ticker is a test plugin that emits an event every few milliseconds, and panics on every
// panicEvery-th event when panicEvery is set.
type ticker struct {
	name       string
	panicEvery int64
	count      *atomic.Int64
	runs       *atomic.Int64
}

func (p *ticker) Name() string                  { return p.name }
func (p *ticker) Version() string               { return "test" }
func (p *ticker) SupportedEventTypes() []string { return []string{"tick"} }
func (p *ticker) Run(ctx context.Context, emit Emit) error {
	p.runs.Add(1)
	for {
		n := p.count.Add(1)
		if p.panicEvery > 0 && n%p.panicEvery == 0 {
			panic(fmt.Sprintf("tick %d", n))
		}
		if _, err := emit(ctx, Event{ID: fmt.Sprintf("%s-%d", p.name, n), Type: "tick", Data: []byte(`{}`)}); err != nil && ctx.Err() == nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Millisecond):
		}
	}
}

type testPlugins struct {
	counts, runs map[string]*atomic.Int64
}

func (tp *testPlugins) table() map[string]Constructor {
	build := func(panicEvery int64) Constructor {
		return func(spec Spec, _ *zap.Logger, _ prometheus.Registerer) (EventSource, error) {
			var cfg struct {
				Extra string `yaml:"extra"`
			}
			if err := spec.DecodeConfig(&cfg); err != nil {
				return nil, err
			}
			return &ticker{name: spec.Name, panicEvery: panicEvery, count: tp.counts[spec.Name], runs: tp.runs[spec.Name]}, nil
		}
	}
	return map[string]Constructor{"steady": build(0), "flaky": build(3)}
}

func newSupervisor(t *testing.T, file string) (*Supervisor, *testPlugins, *prometheus.Registry, *telemetry.Probes) {
	t.Helper()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	_, err := streams.Apply(context.Background(), js, streams.Default())
	require.NoError(t, err)
	tp := &testPlugins{counts: map[string]*atomic.Int64{}, runs: map[string]*atomic.Int64{}}
	for _, n := range []string{"steady", "flaky"} {
		tp.counts[n], tp.runs[n] = &atomic.Int64{}, &atomic.Int64{}
	}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	probes := telemetry.NewProbes()
	return &Supervisor{
		Path: file, Table: tp.table(), Pub: NewPublisher(js, streams.Default().Subjects(), m), Metrics: m,
		Reg: reg, Probes: probes, Logger: zaptest.NewLogger(t),
	}, tp, reg, probes
}

// runSupervisor loads and runs s, and follows edits of its file as khook does: the file's
// watcher hands each new version to Reload.
func runSupervisor(t *testing.T, s *Supervisor) {
	t.Helper()
	initial, err := s.Load()
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- s.Run(ctx) }()
	go func() {
		done <- filewatch.Watch(ctx, s.Path, initial, 20*time.Millisecond, func(b []byte) {
			if err := s.Reload(b); err != nil {
				t.Logf("plugins file rejected: %v", err)
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
		require.NoError(t, <-done)
	})
}

func TestPanickingPluginIsRestartedWithBackoff(t *testing.T) {
	file := filepath.Join(t.TempDir(), "plugins.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`plugins:
  - name: steady
  - name: flaky
    config:
      retryInterval: 20ms
      maxRetries: -1
`), 0o600))
	s, tp, _, probes := newSupervisor(t, file)
	runSupervisor(t, s)

	require.Eventually(t, func() bool { return tp.runs["flaky"].Load() >= 4 }, 20*time.Second, 5*time.Millisecond,
		"the panicking plugin is restarted again and again")
	require.GreaterOrEqual(t, testutil.ToFloat64(s.Metrics.errors.WithLabelValues("flaky")), 3.0, "each panic is counted")
	require.GreaterOrEqual(t, testutil.ToFloat64(s.Metrics.restarts.WithLabelValues("flaky")), 3.0)

	// The steady plugin was never restarted and kept delivering throughout.
	before := testutil.ToFloat64(s.Metrics.events.WithLabelValues("steady", "tick", "stored"))
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(s.Metrics.events.WithLabelValues("steady", "tick", "stored")) > before+10
	}, 20*time.Second, 5*time.Millisecond)
	require.Equal(t, int64(1), tp.runs["steady"].Load())
	require.Equal(t, 1.0, testutil.ToFloat64(s.Metrics.active.WithLabelValues("steady")))
	status, _ := probes.Ready(context.Background())
	require.Equal(t, "ok", status["plugin steady"])
}

func TestPluginGivesUpAfterMaxRetries(t *testing.T) {
	file := filepath.Join(t.TempDir(), "plugins.yaml")
	require.NoError(t, os.WriteFile(file, []byte("plugins:\n  - name: flaky\n    config:\n      retryInterval: 5ms\n      maxRetries: 2\n"), 0o600))
	s, tp, _, probes := newSupervisor(t, file)
	runSupervisor(t, s)
	// Not ready with three runs is also the moment between the third run's start and its
	// panic, so the wait is for the supervisor's verdict, and the run count is checked after.
	require.Eventually(t, func() bool {
		status, ready := probes.Ready(context.Background())
		return !ready && strings.Contains(status["plugin flaky"], "failed and will not be restarted")
	}, 20*time.Second, 5*time.Millisecond)
	require.Equal(t, int64(3), tp.runs["flaky"].Load(), "the first run and maxRetries restarts, no more")
	require.Equal(t, 0.0, testutil.ToFloat64(s.Metrics.active.WithLabelValues("flaky")))
}

func TestPluginsFileEditsTouchOnlyTheirPlugin(t *testing.T) {
	file := filepath.Join(t.TempDir(), "plugins.yaml")
	write := func(body string) { require.NoError(t, os.WriteFile(file, []byte(body), 0o600)) }
	write("plugins:\n  - name: steady\n  - name: flaky\n    enabled: false\n")
	s, tp, reg, _ := newSupervisor(t, file)
	runSupervisor(t, s)
	require.Eventually(t, func() bool { return tp.counts["steady"].Load() > 0 }, 10*time.Second, time.Millisecond)
	require.Equal(t, int64(0), tp.runs["flaky"].Load(), "a disabled plugin does not run")

	// A reconfigured plugin is restarted; a new config with a bad key is refused whole.
	write("plugins:\n  - name: steady\n    config:\n      extra: changed\n  - name: flaky\n    enabled: false\n")
	require.Eventually(t, func() bool { return tp.runs["steady"].Load() == 2 }, 10*time.Second, time.Millisecond)
	write("plugins:\n  - name: steady\n    config:\n      extr: typo\n")
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(s.reloads.WithLabelValues("error")) == 1
	}, 10*time.Second, time.Millisecond)
	require.Equal(t, int64(2), tp.runs["steady"].Load(), "a refused file leaves plugins as they are")
	_, err := reg.Gather()
	require.NoError(t, err)

	// Disabling a plugin (the guide's quick rollback) stops it and removes its active gauge,
	// so PluginDown does not fire for a plugin that was turned off on purpose.
	require.Equal(t, 1, testutil.CollectAndCount(s.Metrics.active))
	write("plugins:\n  - name: steady\n    enabled: false\n")
	require.Eventually(t, func() bool { return testutil.CollectAndCount(s.Metrics.active) == 0 }, 10*time.Second, time.Millisecond)
	require.Equal(t, 0, testutil.CollectAndCount(s.Metrics.processing))
}

// With --plugin, disabling the plugin in plugins.yaml stops it and enabling it starts it
// again: the one-plugin rollback of a per-plugin Deployment. The process itself keeps
// running, so the Deployment does not crash-loop.
func TestOnlyPluginFollowsEnabled(t *testing.T) {
	file := filepath.Join(t.TempDir(), "plugins.yaml")
	write := func(enabled string) {
		require.NoError(t, os.WriteFile(file, []byte("plugins:\n  - name: steady\n    enabled: "+enabled+"\n  - name: flaky\n"), 0o600))
	}
	write("'true'")
	s, tp, _, _ := newSupervisor(t, file)
	s.Only = "steady"
	runSupervisor(t, s)
	require.Eventually(t, func() bool { return tp.counts["steady"].Load() > 0 }, 20*time.Second, 5*time.Millisecond)
	require.Zero(t, tp.runs["flaky"].Load(), "only the named plugin runs")

	out, err := SetEnabled(mustRead(t, file), "steady", false)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(file, out, 0o600))
	require.Eventually(t, func() bool { return testutil.ToFloat64(s.Metrics.active.WithLabelValues("steady")) == 0 },
		20*time.Second, 5*time.Millisecond, "disabling the plugin stops it")
	stopped := tp.counts["steady"].Load()
	write("true")
	require.Eventually(t, func() bool { return tp.counts["steady"].Load() > stopped }, 20*time.Second, 5*time.Millisecond,
		"enabling it starts it again")
	require.Equal(t, int64(2), tp.runs["steady"].Load())
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}
