package app

import (
	"context"
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
		reg.MustRegister(trimmed)
		g.add("edge trimmer", func(ctx context.Context) error {
			return trimEdges(ctx, js.Conn(), cfg, trimmed, logger.Named("edges"))
		})
	}
}

// edgeTrimInterval is how often the hub trims what it has stored from its edges' streams.
const edgeTrimInterval = 10 * time.Second

// trimEdges runs streams.TrimEdges every edgeTrimInterval until ctx ends. The mapper runs it
// because it is the stage that reads what the edges forward; replicas trimming at once
// purge the same sequences, which is harmless.
func trimEdges(ctx context.Context, nc *nats.Conn, cfg config.Config, trimmed *prometheus.CounterVec, logger *zap.Logger) error {
	tick := time.NewTicker(edgeTrimInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		tctx, cancel := context.WithTimeout(ctx, edgeTrimInterval)
		removed, err := streams.TrimEdges(tctx, nc, cfg.Streams, streams.TrimAfter)
		cancel()
		for edge, n := range removed {
			trimmed.WithLabelValues(edge).Add(float64(n))
		}
		if err != nil && ctx.Err() == nil {
			// Housekeeping: an edge that cannot be trimmed now is tried at the next tick.
			logger.Debug("edges not trimmed", zap.Error(err))
		}
	}
}
