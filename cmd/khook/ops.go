// What the operations commands (replay, status, dlq, events) share: a session on the
// pipeline's NATS, and small helpers.

package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/app"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/ops"
)

// opsSession is what the operations commands share: the configuration and a JetStream
// connection to the pipeline's NATS.
type opsSession struct {
	cfg config.Config
	nc  *nats.Conn
	js  jetstream.JetStream
}

func openOps(common *commonFlags) (*opsSession, error) {
	overrides := common.opsOverrides()
	if u, ok := overrides["nats.url"].(string); ok {
		norm, err := natsURL(u)
		if err != nil {
			return nil, usageError{err}
		}
		overrides["nats.url"] = norm
	}
	cfg, err := config.Load(common.config, environ(), overrides)
	if err != nil {
		return nil, err
	}
	// An operator's command answers at once: a stage waits for a NATS that is starting, a
	// command does not.
	cfg.NATS.ConnectTimeout = min(cfg.NATS.ConnectTimeout, opsConnectTimeout)
	nc, js, err := app.Connect(cfg)
	if err != nil {
		return nil, fmt.Errorf("%w\nis khook run running? pass --config, -s or NATS_URL", err)
	}
	return &opsSession{cfg: cfg, nc: nc, js: js}, nil
}

// opsConnectTimeout bounds how long an operations command tries to reach NATS.
const opsConnectTimeout = 2 * time.Second

// natsURL accepts host:port for nats://host:port, as the nats CLI does, and refuses a
// scheme NATS does not speak (an http:// URL pasted from the wrong place).
func natsURL(u string) (string, error) {
	var out []string
	for _, one := range strings.Split(u, ",") {
		one = strings.TrimSpace(one)
		scheme, _, ok := strings.Cut(one, "://")
		switch {
		case !ok:
			one = "nats://" + one
		case scheme != "nats" && scheme != "tls" && scheme != "ws" && scheme != "wss":
			return "", fmt.Errorf("--nats-url %q: want nats://, tls://, ws:// or wss://, or host:port", one)
		}
		out = append(out, one)
	}
	return strings.Join(out, ","), nil
}

// hooks are the hooks the dispatcher would use: the cluster's Hook resources or hooks.yaml.
func (s *opsSession) hooks(ctx context.Context) (*hook.Index, error) {
	return app.ActiveHooks(ctx, s.cfg)
}

// interruptible ends ctx on SIGINT or SIGTERM, so commands stop cleanly and say where.
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}

// parseWhen reads a time flag; see ops.ParseTime.
func parseWhen(flagName, v string, ago bool) (time.Time, error) {
	t, err := ops.ParseTime(v, ago)
	if err != nil {
		return t, fmt.Errorf("--%s: %w", flagName, err)
	}
	return t, nil
}
