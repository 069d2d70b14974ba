// Package heartbeat is the example plugin of the plugin guide (docs/plugins.md) and a useful
// one: it emits a heartbeat event at a fixed interval, so a hook on `heartbeat` proves the
// whole pipeline, from producer to agent, is alive.
package heartbeat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/khook/khook/producers"
)

// Name is the plugin's name in plugins.yaml.
const Name = "heartbeat"

// Config is the plugin's `config` in plugins.yaml.
type Config struct {
	// Interval between heartbeats.
	Interval time.Duration `yaml:"interval"`
	// Namespace is the namespace of the heartbeat events, so that a hook there receives them.
	Namespace string `yaml:"namespace"`
	// Message is the text of every heartbeat.
	Message string `yaml:"message"`
}

// Validate reports every invalid setting, naming its key.
func (c Config) Validate() error {
	var errs []error
	if c.Interval < time.Second {
		errs = append(errs, fmt.Errorf("interval: must be at least 1s, got %s", c.Interval))
	}
	if c.Namespace == "" {
		errs = append(errs, errors.New("namespace: required"))
	}
	return errors.Join(errs...)
}

// Heartbeat is the plugin.
type Heartbeat struct {
	cfg Config
	now func() time.Time
}

// FromSpec builds the plugin from its plugins.yaml entry (the one line in the built-in table).
func FromSpec(spec producers.Spec, _ *zap.Logger, _ prometheus.Registerer) (producers.EventSource, error) {
	cfg := Config{Interval: time.Minute, Namespace: "khook-system", Message: "khook heartbeat"}
	if err := spec.DecodeConfig(&cfg); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("plugins.%s.config: %w", Name, err)
	}
	return &Heartbeat{cfg: cfg, now: time.Now}, nil
}

// Name implements producers.EventSource.
func (h *Heartbeat) Name() string { return Name }

// Version implements producers.EventSource.
func (h *Heartbeat) Version() string { return "1.0.0" }

// SupportedEventTypes implements producers.EventSource.
func (h *Heartbeat) SupportedEventTypes() []string { return []string{"heartbeat"} }

// Run emits one heartbeat at once and then one per interval, until ctx ends. Each heartbeat's
// id is the start of its interval, so two replicas of this plugin, or a restart within an
// interval, store each heartbeat once.
func (h *Heartbeat) Run(ctx context.Context, emit producers.Emit) error {
	t := time.NewTicker(h.cfg.Interval)
	defer t.Stop()
	for {
		slot := h.now().Truncate(h.cfg.Interval)
		data, _ := json.Marshal(map[string]string{
			"namespace": h.cfg.Namespace, "resourceKind": "Plugin", "resourceName": Name, "message": h.cfg.Message,
		})
		_, err := emit(ctx, producers.Event{
			ID:   "heartbeat-" + strconv.FormatInt(slot.Unix(), 10),
			Type: "heartbeat",
			Time: slot.UTC(),
			Data: data,
		})
		// An event JetStream could not store now is skipped: the next one follows shortly.
		if err != nil && errors.Is(err, producers.ErrInvalidEvent) {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
