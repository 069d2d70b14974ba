package app

import (
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/internal/telemetry"
	"github.com/khook/khook/producers"
	"github.com/khook/khook/producers/builtin"
)

// producerStage runs the plugins of plugins.yaml, publishing what they emit to the raw stream.
type producerStage struct {
	sup     *producers.Supervisor
	file    []byte // plugins.yaml as loaded, for its watcher to start from
	metrics *producers.Metrics
	probes  *telemetry.Probes
}

// loadProducers builds every plugin of plugins.yaml (only one with plugin set), so that an
// unknown plugin or a bad key fails at start.
func loadProducers(cfg config.Config, plugin string, reg *prometheus.Registry, probes *telemetry.Probes, logger *zap.Logger) (*producerStage, error) {
	metrics := producers.NewMetrics(reg)
	sup := &producers.Supervisor{
		Path: cfg.Files.Plugins, Only: plugin, Table: builtin.Table(), Reg: reg, Probes: probes, Metrics: metrics,
		Logger: logger.Named("plugins"),
	}
	file, err := sup.Load()
	if err != nil {
		return nil, err
	}
	return &producerStage{sup: sup, file: file, metrics: metrics, probes: probes}, nil
}

// add adds the publisher, the plugins and the plugins file's watcher.
func (p *producerStage) add(g *group, js jetstream.JetStream, cfg config.Config) {
	// The publisher needs the connection, which exists only now: the plugins were built and
	// checked before connecting. It is handed over before any actor starts.
	p.sup.Pub = producers.NewPublisher(js, cfg.Streams.Subjects(), p.metrics).InCluster(cfg.Cluster)
	g.add("publisher", p.sup.Pub.Run)
	// Unready while JetStream refuses events, so load balancers steer webhooks away.
	p.probes.Set("producer", p.sup.Pub.Ready)
	p.probes.Set("plugins", p.sup.Ready)
	g.add("plugins", p.sup.Run)
	g.follow("plugins", cfg.Files.Plugins, p.file, cfg.Files.ReloadInterval, p.sup.Reload)
}
