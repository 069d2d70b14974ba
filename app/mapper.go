package app

import (
	"fmt"
	"os"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/khook/khook/consumers/mapper"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/mapping"
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
}
