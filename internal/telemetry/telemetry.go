// Package telemetry holds what every khook process exposes to operators: the zap logger,
// the Prometheus registry and the /metrics, /healthz and /readyz endpoints.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/term"
)

// NewLogger builds a zap logger writing to stderr. format is json (one object per line) or
// console. Console levels are coloured only when stderr is a terminal and NO_COLOR is not
// set (https://no-color.org), so files and log collectors get plain text.
func NewLogger(level, format string) (*zap.Logger, error) {
	_, noColor := os.LookupEnv("NO_COLOR")
	return newLogger(level, format, os.Stderr, useColour(term.IsTerminal(int(os.Stderr.Fd())), noColor))
}

// useColour says whether console logs get ANSI colours: on a terminal, unless NO_COLOR is
// set to anything.
func useColour(terminal, noColor bool) bool {
	return terminal && !noColor
}

// newLogger builds the logger on out. Nothing is sampled: zap's production preset keeps only
// the first 100 of each message per second, which would drop the "delivered" and "dead
// letter" lines of an event storm, the very lines an operator reads afterwards.
func newLogger(level, format string, out zapcore.WriteSyncer, colour bool) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	var enc zapcore.Encoder
	opts := []zap.Option{zap.AddCaller(), zap.ErrorOutput(out)}
	switch format {
	case "json":
		ec := zap.NewProductionEncoderConfig()
		ec.TimeKey = "ts"
		ec.EncodeTime = zapcore.ISO8601TimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
		opts = append(opts, zap.AddStacktrace(zapcore.ErrorLevel))
	case "console":
		ec := zap.NewDevelopmentEncoderConfig()
		if colour {
			ec.EncodeLevel = zapcore.CapitalColorLevelEncoder
		}
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, fmt.Errorf("log.format: must be json or console, got %q", format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(out), zap.NewAtomicLevelAt(lvl)), opts...), nil
}

// NewRegistry returns a registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// MetricsHandler serves the gatherers in the Prometheus exposition format; reg counts the
// handler's own errors.
func MetricsHandler(reg *prometheus.Registry, more ...prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(append(prometheus.Gatherers{reg}, more...), promhttp.HandlerOpts{Registry: reg})
}

// HTTPServer runs one HTTP server as an actor: Run blocks until ctx ends, then shuts the
// server down gracefully.
type HTTPServer struct {
	Name    string
	Addr    string
	Handler http.Handler
	Logger  *zap.Logger
	// OnListen, when set, is told the bound address (useful with port 0).
	OnListen func(net.Addr)
	// SetBy names what sets Addr (a key, its environment variable, a flag), for the error
	// when the address cannot be bound.
	SetBy string
}

// Run listens on Addr and serves until ctx is done. It returns an error when the address
// cannot be bound or the server fails; a clean shutdown returns nil.
func (s *HTTPServer) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		if s.SetBy != "" {
			return fmt.Errorf("%s server: %w; set %s", s.Name, err, s.SetBy)
		}
		return fmt.Errorf("%s server: %w", s.Name, err)
	}
	if s.OnListen != nil {
		s.OnListen(ln.Addr())
	}
	// Requests see ctx's end, so long-lived responses (the API's event stream) finish when
	// the process stops instead of holding the graceful shutdown open.
	srv := &http.Server{Handler: s.Handler, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	s.Logger.Info("listening", zap.String("server", s.Name), zap.String("addr", ln.Addr().String()))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("%s server: %w", s.Name, err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("%s server shutdown: %w", s.Name, err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("%s server: %w", s.Name, err)
	}
	return nil
}
