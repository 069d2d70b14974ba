package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/internal/telemetry"
)

// agentCmd serves the demo A2A agent and prints every task it receives, so that `make run`
// shows agent calls without a kagent installation.
func agentCmd() *cobra.Command {
	return leaf("agent", "run a local A2A demo agent that prints every task it receives", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		addr := fs.String("addr", "127.0.0.1:8083", "address to serve A2A on (kagent's layout: /api/a2a/{namespace}/{agent}/)")
		delay := fs.Duration("delay", 0, "answer each task after this long, as a slow agent would (to watch redelivery and drains)")
		return func(ctx context.Context, _ []string, stdout, _ io.Writer) error {
			return serveAgent(ctx, *addr, *delay, stdout)
		}
	})
}

func serveAgent(ctx context.Context, addr string, delay time.Duration, stdout io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv := demoagent.New()
	srv.OnMessage = func(r demoagent.Received) error {
		fmt.Fprintf(stdout, "\n=== agent %s received a task (message %s, context %s, user %s)\n%s\n===\n",
			r.Agent, r.MessageID, r.ContextID, r.UserID, r.Text)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		}
		return nil
	}
	logger, err := telemetry.NewLogger("info", "console")
	if err != nil {
		return err
	}
	hs := &telemetry.HTTPServer{Name: "demo agent", Addr: addr, Handler: srv.Handler(), Logger: logger.With(zap.String("component", "agent")),
		SetBy: "--addr"}
	return hs.Run(ctx)
}
