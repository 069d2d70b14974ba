// The producers' metrics, per plugin; docs/metrics.md describes each.

package producers

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the per-plugin metrics of the deployment guide, kept by the runtime so that no
// plugin has to.
type Metrics struct {
	active     *prometheus.GaugeVec
	errors     *prometheus.CounterVec
	processing *prometheus.GaugeVec
	duration   *prometheus.HistogramVec
	events     *prometheus.CounterVec
	restarts   *prometheus.CounterVec
	collisions *prometheus.CounterVec

	mu       sync.Mutex
	inflight map[string]map[*time.Time]struct{} // start times of emits in progress, per plugin
	last     map[string]time.Duration           // duration of the last completed emit
}

// NewMetrics registers the plugin metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "khook_plugin_active",
			Help: "1 while the plugin is running, 0 while it is restarting or failed; a plugin disabled in or removed from plugins.yaml has no series.",
		}, []string{"plugin"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_plugin_errors_total",
			Help: "Plugin failures (errors, panics), invalid events and events JetStream did not store.",
		}, []string{"plugin"}),
		processing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "khook_plugin_event_processing_duration_seconds",
			Help: "How long the plugin's oldest event in progress has been waiting to be stored, or, with none in progress, how long the last one took. Above 30 the guide's PluginEventProcessingLag alert fires.",
		}, []string{"plugin"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "khook_plugin_emit_duration_seconds",
			Help:    "Time from a plugin's emit to JetStream's acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"plugin"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_plugin_events_total",
			Help: "Events emitted by plugins, by type (\"*\" for plugins that accept any type) and result (stored, duplicate, invalid, unavailable).",
		}, []string{"plugin", "type", "result"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_plugin_restarts_total",
			Help: "Times the runtime restarted a plugin after it failed.",
		}, []string{"plugin"}),
		collisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_producer_id_collisions_total",
			Help: "Events whose id was already taken in the raw stream's duplicate window by a message on another source's subjects; each was stored under a fresh id.",
		}, []string{"source"}),
		inflight: map[string]map[*time.Time]struct{}{},
		last:     map[string]time.Duration{},
	}
	reg.MustRegister(m.active, m.errors, m.processing, m.duration, m.events, m.restarts, m.collisions)
	return m
}

// Init pre-creates the series of a plugin so dashboards show zeros.
func (m *Metrics) Init(plugin string, types []string) {
	m.active.WithLabelValues(plugin)
	m.errors.WithLabelValues(plugin)
	m.processing.WithLabelValues(plugin)
	m.restarts.WithLabelValues(plugin)
	if len(types) == 0 {
		types = []string{"*"}
	}
	for _, t := range types {
		for _, r := range []string{"stored", "duplicate", "invalid", "unavailable"} {
			m.events.WithLabelValues(plugin, t, r)
		}
	}
}

// SetActive records whether a plugin is running.
func (m *Metrics) SetActive(plugin string, active bool) {
	v := 0.0
	if active {
		v = 1
	}
	m.active.WithLabelValues(plugin).Set(v)
}

// Forget removes the gauges of a plugin that was disabled or removed from plugins.yaml, so
// that a deliberate stop (the guide's quick rollback) does not read as a plugin that is down
// and fire PluginDown. Its counters stay: they only ever grow, and rates over them end.
func (m *Metrics) Forget(plugin string) {
	m.active.DeletePartialMatch(prometheus.Labels{"plugin": plugin})
	m.processing.DeletePartialMatch(prometheus.Labels{"plugin": plugin})
}

// Failed counts one failure of a plugin itself (an error or a panic from Run).
func (m *Metrics) Failed(plugin string) { m.errors.WithLabelValues(plugin).Inc() }

// Restarted counts one restart of a plugin.
func (m *Metrics) Restarted(plugin string) { m.restarts.WithLabelValues(plugin).Inc() }

// begin records an emit in progress and returns the function that ends it.
func (m *Metrics) begin(plugin string, start time.Time) func() {
	m.mu.Lock()
	if m.inflight[plugin] == nil {
		m.inflight[plugin] = map[*time.Time]struct{}{}
	}
	key := &start
	m.inflight[plugin][key] = struct{}{}
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		delete(m.inflight[plugin], key)
		m.last[plugin] = time.Since(start)
		m.mu.Unlock()
		m.refresh(plugin)
	}
}

// refresh sets the processing gauge: the age of the oldest emit in progress, else the
// duration of the last one. It is called after every emit and by the supervisor's ticker, so
// an emit stuck behind an unavailable JetStream shows its growing age.
func (m *Metrics) refresh(plugin string) {
	m.mu.Lock()
	v := m.last[plugin]
	for start := range m.inflight[plugin] {
		if age := time.Since(*start); age > v {
			v = age
		}
	}
	m.mu.Unlock()
	m.processing.WithLabelValues(plugin).Set(v.Seconds())
}

func (m *Metrics) observe(plugin, typeLabel string, start time.Time, res Result, err error) {
	m.duration.WithLabelValues(plugin).Observe(time.Since(start).Seconds())
	result := "stored"
	switch {
	case err == nil && res.Duplicate:
		result = "duplicate"
	case err == nil:
	case errors.Is(err, ErrInvalidEvent):
		result = "invalid"
		m.errors.WithLabelValues(plugin).Inc()
	default:
		result = "unavailable"
		m.errors.WithLabelValues(plugin).Inc()
	}
	m.events.WithLabelValues(plugin, typeLabel, result).Inc()
}
