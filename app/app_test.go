package app

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/khook/khook/internal/config"
)

// One actor failing stops the others and is the group's error, named; the context ending
// stops every actor and is not an error.
func TestGroupStopsTogether(t *testing.T) {
	g := &group{logger: zaptest.NewLogger(t)}
	stopped := make(chan string, 2)
	waiter := func(name string) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			<-ctx.Done()
			stopped <- name
			return nil
		}
	}
	g.add("a", waiter("a"))
	g.add("b", waiter("b"))
	g.add("broken", func(context.Context) error { return errors.New("boom") })
	err := g.run(context.Background())
	require.EqualError(t, err, "broken: boom")
	require.ElementsMatch(t, []string{"a", "b"}, []string{<-stopped, <-stopped})

	g = &group{logger: zaptest.NewLogger(t)}
	g.add("a", waiter("a"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, g.run(ctx))
	require.Equal(t, "a", <-stopped)
}

// New reads every file the stages need before anything connects: a broken file fails with
// its path and line, with no NATS server anywhere.
func TestNewFailsOnABrokenFileBeforeConnecting(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	cfg, err := config.Load("", nil, map[string]any{
		"nats.url":           "nats://127.0.0.1:1",
		"files.plugins":      write("plugins.yaml", "plugins:\n  - name: webhook\n"),
		"files.mappings":     write("event-mappings.yaml", "mappings:\n  - eventSource: webhook\n    eventTyp: x\n"),
		"files.hooks":        write("hooks.yaml", "[]\n"),
		"kubernetes.hooks":   "file",
		"dispatcher.target":  "log",
		"server.probes_addr": "127.0.0.1:0",
	})
	require.NoError(t, err)
	_, err = New(context.Background(), cfg, All, zaptest.NewLogger(t))
	require.ErrorContains(t, err, filepath.Join(dir, "event-mappings.yaml"))
	require.ErrorContains(t, err, "line 3")
	require.ErrorContains(t, err, "eventTyp")

	_, err = New(context.Background(), cfg, Stages{Producers: true, Plugin: "nosuch"}, zaptest.NewLogger(t))
	require.ErrorContains(t, err, `plugin "nosuch" is not listed`)
}
