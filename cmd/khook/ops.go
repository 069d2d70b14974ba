// What the operations commands (replay, status, dlq, events) share: a session on the
// pipeline's NATS, and small helpers.

package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
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
	cfg, err := config.Load(common.config, environ(), common.opsOverrides())
	if err != nil {
		return nil, err
	}
	nc, js, err := app.Connect(cfg)
	if err != nil {
		return nil, err
	}
	return &opsSession{cfg: cfg, nc: nc, js: js}, nil
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
