package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/khook/khook/consumers/mapper"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
)

// mapperStage normalizes raw events with the rules of the mapping file.
type mapperStage struct {
	rules *mapping.Rules
	file  []byte
}

func loadMapper(cfg config.Config) (*mapperStage, error) {
	rules, b, err := LoadRules(cfg.Files.Mappings)
	if err != nil {
		return nil, err
	}
	return &mapperStage{rules: rules, file: b}, nil
}

// LoadRules reads and parses a mapping file, returning its content too.
func LoadRules(path string) (*mapping.Rules, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("event mappings: %w", err)
	}
	rules, err := mapping.Parse(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return rules, b, nil
}

// add adds the mapper and the mapping file's watcher.
func (m *mapperStage) add(g *group, js jetstream.JetStream, cfg config.Config, reg prometheus.Registerer, logger *zap.Logger) {
	mp := mapper.New(js, cfg.Streams, m.rules, reg, logger.Named("mapper"))
	g.add("mapper", mp.Run)
	g.follow("mappings", cfg.Files.Mappings, m.file, cfg.Files.ReloadInterval, mp.Reload)
	if len(cfg.Streams.Edges) > 0 {
		trimmed := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_edge_trimmed_messages_total",
			Help: "Events removed from an edge's stream once the hub had stored them, so that the edge's buffer holds only what the hub does not have.",
		}, []string{"cluster"})
		restarts := prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_edge_source_restarts_total",
			Help: "Times the hub restarted its source on an edge that answered while the source stayed silent, rather than wait out NATS's retry backoff.",
		}, []string{"cluster"})
		reg.MustRegister(trimmed, restarts)
		g.add("edge tender", func(ctx context.Context) error {
			return tendEdges(ctx, js.Conn(), cfg, trimmed, restarts, logger.Named("edges"))
		})
	}
}

// edgeTendInterval is how often the hub tends its edges: restarts stale sources and trims
// what it has stored from the edges' streams.
const edgeTendInterval = 10 * time.Second

// tendEdges runs streams.RestartStaleSources and streams.TrimEdges every edgeTendInterval
// until ctx ends. The mapper runs it because it is the stage that reads what the edges
// forward; replicas doing it at once restart or purge the same things, which is harmless.
func tendEdges(ctx context.Context, nc *nats.Conn, cfg config.Config, trimmed, restarts *prometheus.CounterVec, logger *zap.Logger) error {
	tick := time.NewTicker(edgeTendInterval)
	defer tick.Stop()
	restarted := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		tctx, cancel := context.WithTimeout(ctx, edgeTendInterval)
		edges, err := streams.RestartStaleSources(tctx, nc, cfg.Streams, streams.RestartStaleAfter, restarted, time.Now())
		for _, edge := range edges {
			restarts.WithLabelValues(edge).Inc()
			logger.Info("edge answers but its source was silent: restarted the source", zap.String("cluster", edge))
		}
		removed, terr := streams.TrimEdges(tctx, nc, cfg.Streams, time.Now())
		cancel()
		for edge, n := range removed {
			trimmed.WithLabelValues(edge).Add(float64(n))
		}
		if err = errors.Join(err, terr); err != nil && ctx.Err() == nil {
			// Housekeeping: what cannot be done now is tried again at the next tick.
			logger.Debug("edges not tended", zap.Error(err))
		}
	}
}
