// Package app is khook's composition root: it builds the stages one process runs from the
// configuration, and runs them as one group of actors that stop together. `khook run`,
// `khook producer|mapper|dispatcher` and the end-to-end tests all start khook through it,
// so what the tests run is what ships.
//
// Each stage adds its actors in its own file (producers.go, mapper.go, dispatcher.go);
// nats.go connects to JetStream and applies the topology.
package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/internal/filewatch"
	"github.com/khook/khook/internal/telemetry"
	"github.com/khook/khook/internal/tracing"
	"github.com/khook/khook/streams"
)

// Stages says which components one process runs.
type Stages struct {
	Producers  bool
	Plugin     string // with Producers: only this plugin
	Mapper     bool
	Dispatcher bool
	Embedded   bool // start an embedded NATS server when nats.url is empty
	// Edge makes the embedded server a leaf node of the hub (edge.hub) in the cluster's
	// JetStream domain, with only the edge's raw stream (khook edge).
	Edge bool
}

// All is `khook run`: every stage, on an embedded NATS server unless nats.url is set.
var All = Stages{Producers: true, Mapper: true, Dispatcher: true, Embedded: true}

// ServiceName names the process in traces: khook for every stage, else its one stage.
func (st Stages) ServiceName() string {
	switch {
	case st.Edge:
		return "khook-edge"
	case st.Producers && st.Mapper && st.Dispatcher:
		return "khook"
	case st.Producers:
		return "khook-producer"
	case st.Mapper:
		return "khook-mapper"
	default:
		return "khook-dispatcher"
	}
}

// streamStages lists the stages whose streams and consumers this process reports on.
func (st Stages) streamStages() []streams.Stage {
	var out []streams.Stage
	if st.Producers {
		out = append(out, streams.StageProducer)
	}
	if st.Mapper {
		out = append(out, streams.StageMapper)
	}
	if st.Dispatcher {
		out = append(out, streams.StageDispatcher)
	}
	return out
}

// App is the stages of one process, built from one configuration.
type App struct {
	cfg    config.Config
	st     Stages
	logger *zap.Logger
	reg    *prometheus.Registry
	probes *telemetry.Probes

	producers  *producerStage
	mapper     *mapperStage
	dispatcher *dispatcherStage
}

// New reads every file the chosen stages need and checks their secrets, before anything
// connects, so that a broken file fails at start with its line. It starts nothing; with
// Kubernetes Hooks it waits (until ctx ends) for an API server it cannot reach yet.
func New(ctx context.Context, cfg config.Config, st Stages, logger *zap.Logger) (*App, error) {
	a := &App{cfg: cfg, st: st, logger: logger, reg: telemetry.NewRegistry(), probes: telemetry.NewProbes()}
	var err error
	if st.Producers {
		if a.producers, err = loadProducers(cfg, st.Plugin, a.reg, a.probes, logger); err != nil {
			return nil, err
		}
	}
	if st.Mapper {
		if a.mapper, err = loadMapper(cfg); err != nil {
			return nil, err
		}
	}
	if st.Dispatcher {
		if a.dispatcher, err = loadDispatcher(ctx, cfg, logger); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// Registry is the process's metrics registry, as the metrics endpoint serves it.
func (a *App) Registry() *prometheus.Registry { return a.reg }

// Run connects to NATS (starting the embedded server when the stages ask for it), applies
// the stream topology, and runs every actor until ctx ends or one actor fails. It returns
// nil when ctx ended, after the stages have drained.
func (a *App) Run(ctx context.Context) error {
	logger, cfg := a.logger, a.cfg
	tr, stopTracing, err := tracing.Setup(ctx, a.st.ServiceName(), os.Getenv)
	if err != nil {
		return err
	}
	defer func() {
		// Flush the spans of the last events before exiting.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTracing(sctx); err != nil {
			logger.Warn("tracing shutdown", zap.Error(err))
		}
	}()
	if tr.Enabled {
		logger.Info("tracing on", zap.String("service", tr.Service), zap.String("protocol", tr.Protocol), zap.String("endpoint", tr.Endpoint))
	}

	var embedded []nats.Option
	var ns *server.Server
	if a.st.Embedded && cfg.NATS.URL == "" {
		ecfg := cfg.NATS.Embedded
		if a.st.Edge {
			if ecfg, err = edgeServer(cfg); err != nil {
				return err
			}
		}
		var opts []nats.Option
		ns, opts, err = streams.StartEmbedded(ctx, ecfg, cfg.Streams.Subjects())
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopped during start-up
			}
			return err
		}
		defer func() {
			ns.Shutdown()
			ns.WaitForShutdown()
		}()
		logger.Info("embedded nats started", zap.String("store_dir", cfg.NATS.Embedded.StoreDir),
			zap.String("listen", cfg.NATS.Embedded.Listen))
		embedded = append(opts, nats.InProcessServer(ns))
	}
	if len(embedded) == 0 {
		logger.Info("connecting to NATS", zap.String("url", cmp.Or(cfg.NATS.URL, localNATSURL(cfg))))
	}
	nc, js, err := ConnectContext(ctx, cfg, embedded...)
	if err != nil {
		if ctx.Err() != nil {
			// Stopped during start-up (Ctrl-C while NATS was away): nothing to drain.
			return nil
		}
		return err
	}
	// Closed last, after every actor has stopped, so draining stages can still ack.
	defer nc.Close()
	if a.st.Edge {
		err = applyEdge(ctx, js, cfg, logger)
	} else {
		err = applyWithRetry(ctx, js, cfg.Streams, logger)
	}
	if err != nil {
		return err
	}
	a.watchNATS(nc, js, ns)

	g := &group{logger: logger}
	if a.producers != nil {
		a.producers.add(g, js, cfg)
	}
	if a.mapper != nil {
		a.mapper.add(g, js, cfg, a.reg, logger)
	}
	if a.dispatcher != nil {
		if err := a.dispatcher.add(ctx, g, js, cfg, a.reg, a.probes, logger); err != nil {
			return err
		}
	}
	var pluginMetrics []prometheus.Gatherer
	if a.producers != nil {
		pluginMetrics = append(pluginMetrics, a.producers.sup.Gatherer())
	}
	for _, s := range []*telemetry.HTTPServer{
		{Name: "metrics", Addr: cfg.Server.MetricsAddr, Handler: telemetry.MetricsHandler(a.reg, pluginMetrics...), Logger: logger,
			SetBy: "server.metrics_addr or KHOOK_SERVER_METRICS_ADDR"},
		{Name: "probes", Addr: cfg.Server.ProbesAddr, Handler: a.probes.Handler(), Logger: logger,
			SetBy: "server.probes_addr or KHOOK_SERVER_PROBES_ADDR"},
	} {
		g.add(s.Name+" server", s.Run)
	}
	if a.st.Producers && a.st.Mapper && a.st.Dispatcher {
		g.add("ready line", func(ctx context.Context) error { return a.sayReady(ctx) })
	}
	if a.st.Edge {
		g.add("hub link", func(ctx context.Context) error { return a.watchHub(ctx, ns) })
	}
	return g.run(ctx)
}

// sayReady logs one line when every stage of `khook run` is ready: where to post events,
// where the agents are called, and how to stop. It then waits for ctx like any actor.
func (a *App) sayReady(ctx context.Context) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, ready := a.probes.Ready(ctx); ready {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
	agents := a.cfg.Kagent.URL + " (kagent.url)"
	if a.cfg.Dispatcher.Target == "log" {
		agents = "none: tasks are logged (dispatcher.target: log)"
	}
	post := "no HTTP plugin is enabled"
	if urls := a.producers.sup.URLs(); len(urls) > 0 {
		post = "POST events to " + strings.Join(urls, ", ")
	}
	a.logger.Info(fmt.Sprintf("khook is ready: %s; agents at %s; Ctrl-C stops it", post, agents))
	<-ctx.Done()
	return nil
}

// watchNATS reports the connection and the streams on the probes and the metrics.
func (a *App) watchNATS(nc *nats.Conn, js jetstream.JetStream, ns *server.Server) {
	cfg := a.cfg
	a.reg.MustRegister(streams.NewCollector(js, cfg.Streams, a.st.streamStages()...))
	if a.st.Edge {
		a.reg.MustRegister(streams.NewEdgeCollector(func() bool { return hubConnected(ns) }))
	} else if len(cfg.Streams.Edges) > 0 {
		a.reg.MustRegister(streams.NewHubCollector(js, cfg.Streams))
	}
	a.probes.Set("nats", func(context.Context) error {
		if s := nc.Status(); s != nats.CONNECTED {
			return fmt.Errorf("nats connection %s", s)
		}
		return nil
	})
	a.probes.Set("streams", func(ctx context.Context) error {
		names := []string{cfg.Streams.Raw.Name, cfg.Streams.Events.Name, cfg.Streams.DLQ.Name}
		if a.st.Edge {
			names = names[:1]
		}
		for _, name := range names {
			if _, err := js.Stream(ctx, name); err != nil {
				return fmt.Errorf("stream %s: %w", name, err)
			}
		}
		return nil
	})
}

// group is the process's actors. Each runs on its own context, cancelled when any actor
// returns, so that one failing stage stops the process rather than leaving it half alive.
type group struct {
	logger *zap.Logger
	actors []actor
}

type actor struct {
	name string
	run  func(ctx context.Context) error
}

func (g *group) add(name string, fn func(ctx context.Context) error) {
	g.actors = append(g.actors, actor{name, fn})
}

// errStopped is how the group learns that its context ended: not a failure.
var errStopped = errors.New("context ended")

// follow adds the watcher of one stage's file: each edit is handed to reload, which applies
// it or refuses it whole, keeping the active version. It is the one way every stage takes
// an edited file (plugins, mappings, hooks), so they log and behave alike.
func (g *group) follow(what, path string, initial []byte, poll time.Duration, reload func([]byte) error) {
	g.add(what+" file watcher", func(ctx context.Context) error {
		return filewatch.Watch(ctx, path, initial, poll, func(b []byte) {
			if err := reload(b); err != nil {
				g.logger.Error(what+" file rejected, keeping the active "+what, zap.String("file", path), zap.Error(err))
				return
			}
			g.logger.Info(what+" reloaded", zap.String("file", path))
		})
	})
}

func (g *group) run(ctx context.Context) error {
	var rg run.Group
	for _, a := range g.actors {
		actx, cancel := context.WithCancel(ctx)
		rg.Add(func() error {
			if err := a.run(actx); err != nil {
				return fmt.Errorf("%s: %w", a.name, err)
			}
			return nil
		}, func(error) { cancel() })
	}
	done := make(chan struct{})
	rg.Add(func() error {
		select {
		case <-ctx.Done():
			return errStopped
		case <-done:
			return nil
		}
	}, func(error) { close(done) })
	err := rg.Run()
	if errors.Is(err, errStopped) {
		g.logger.Info("stopped", zap.String("reason", context.Cause(ctx).Error()))
		return nil
	}
	return err
}
