// Package producertest is the conformance suite every producer plugin passes, like
// Watermill's pub/sub tests: it emits once started, its event ids are stable across
// restarts, it stops when its context ends, and it rejects bad config.
package producertest

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/khook/khook/producers"
	"github.com/khook/khook/streams/subject"
)

// Case describes one plugin to the suite.
type Case struct {
	// Name is the plugin's name in plugins.yaml.
	Name string
	// Build is the plugin's constructor (its line in the built-in table).
	Build producers.Constructor
	// Config is a valid `config:` block, as YAML.
	Config string
	// BadConfigs are invalid `config:` blocks; each must be refused with an error containing
	// its key (the map's key).
	BadConfigs map[string]string
	// Prepare, when set, is called on each new plugin before it runs (to learn its address).
	Prepare func(t *testing.T, p producers.EventSource)
	// Trigger makes a running plugin emit at least one event, from the same input every
	// time it is called, so that ids can be compared across restarts.
	Trigger func(t *testing.T, p producers.EventSource)
}

// Run runs the suite.
func Run(t *testing.T, c Case) {
	t.Run("emits once started", func(t *testing.T) {
		p := c.build(t, c.Config)
		emitted := c.start(t, p)
		c.Trigger(t, p)
		ev := next(t, emitted)
		require.NoError(t, subject.CheckToken("event type", ev.Type))
		if types := p.SupportedEventTypes(); types != nil {
			require.Contains(t, types, ev.Type, "a declared plugin emits only its declared types")
		}
		if len(ev.Data) > 0 {
			require.True(t, json.Valid(ev.Data), "data is JSON")
		}
		require.NotEmpty(t, p.Version())
		require.Equal(t, c.Name, p.Name())
	})
	t.Run("stable ids across restarts", func(t *testing.T) {
		var ids []string
		for range 2 {
			p := c.build(t, c.Config)
			ctx, cancel := context.WithCancel(context.Background())
			emitted, done := c.run(t, ctx, p)
			c.Trigger(t, p)
			ev := next(t, emitted)
			ids = append(ids, ev.ID)
			cancel()
			require.NoError(t, wait(t, done))
		}
		require.NotEmpty(t, ids[0], "every event has an id")
		require.Equal(t, ids[0], ids[1], "the same input after a restart has the same id")
	})
	t.Run("stops on cancel", func(t *testing.T) {
		p := c.build(t, c.Config)
		ctx, cancel := context.WithCancel(context.Background())
		_, done := c.run(t, ctx, p)
		cancel()
		require.NoError(t, wait(t, done), "Run returns nil when its context ends")
	})
	t.Run("rejects bad config", func(t *testing.T) {
		for key, cfg := range c.BadConfigs {
			_, err := c.Build(spec(t, c.Name, cfg), zaptest.NewLogger(t), prometheus.NewRegistry())
			require.Error(t, err, "config %q", cfg)
			require.Contains(t, err.Error(), key)
			require.Contains(t, err.Error(), "plugins."+c.Name, "the error names the plugin")
		}
	})
}

func (c Case) build(t *testing.T, cfg string) producers.EventSource {
	t.Helper()
	p, err := c.Build(spec(t, c.Name, cfg), zaptest.NewLogger(t), prometheus.NewRegistry())
	require.NoError(t, err)
	if c.Prepare != nil {
		c.Prepare(t, p)
	}
	return p
}

func (c Case) start(t *testing.T, p producers.EventSource) <-chan producers.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	emitted, done := c.run(t, ctx, p)
	t.Cleanup(func() {
		cancel()
		require.NoError(t, wait(t, done))
	})
	return emitted
}

// run starts p with an emit that records events and accepts them, as JetStream would.
func (c Case) run(t *testing.T, ctx context.Context, p producers.EventSource) (<-chan producers.Event, <-chan error) {
	t.Helper()
	emitted := make(chan producers.Event, 1000)
	done := make(chan error, 1)
	seen := map[string]bool{}
	emit := func(_ context.Context, ev producers.Event) (producers.Result, error) {
		dup := seen[ev.ID]
		seen[ev.ID] = true
		emitted <- ev
		return producers.Result{ID: ev.ID, Duplicate: dup}, nil
	}
	go func() { done <- p.Run(ctx, emit) }()
	return emitted, done
}

func next(t *testing.T, ch <-chan producers.Event) producers.Event {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("the plugin emitted nothing within 30s")
		return producers.Event{}
	}
}

// wait guards against a plugin that never stops; it is a deadlock guard, not a speed test.
func wait(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of its context ending")
		return nil
	}
}

// spec builds a plugins.yaml entry with the given config block.
func spec(t *testing.T, name, cfg string) producers.Spec {
	t.Helper()
	lines := strings.Split(strings.TrimRight(cfg, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "      " + l
	}
	doc := "plugins:\n  - name: " + name + "\n    config:\n" + strings.Join(lines, "\n") + "\n"
	if strings.TrimSpace(cfg) == "" {
		doc = "plugins:\n  - name: " + name + "\n"
	}
	specs, err := producers.ParseSpecs([]byte(doc), func(string) (string, bool) { return "", true })
	require.NoError(t, err)
	require.True(t, slices.ContainsFunc(specs, func(s producers.Spec) bool { return s.Name == name }))
	return specs[0]
}
