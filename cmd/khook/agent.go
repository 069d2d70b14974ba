package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/internal/telemetry"
)

// runAgent serves the demo A2A agent and prints every task it receives, so that `make run`
// shows agent calls without a kagent installation.
func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("khook agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8083", "address to serve A2A on (kagent's layout: /api/a2a/{namespace}/{agent}/)")
	delay := fs.Duration("delay", 0, "answer each task after this long, as a slow agent would (to watch redelivery and drains)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv := demoagent.New()
	srv.OnMessage = func(r demoagent.Received) error {
		fmt.Fprintf(stdout, "\n=== agent %s received a task (message %s, context %s, user %s)\n%s\n===\n",
			r.Agent, r.MessageID, r.ContextID, r.UserID, r.Text)
		select {
		case <-time.After(*delay):
		case <-ctx.Done():
		}
		return nil
	}
	logger, err := telemetry.NewLogger("info", "console")
	if err != nil {
		return err
	}
	hs := &telemetry.HTTPServer{Name: "demo agent", Addr: *addr, Handler: srv.Handler(), Logger: logger.With(zap.String("component", "agent"))}
	return hs.Run(ctx)
}
