package producers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/subject"
)

// Publisher turns emitted events into CloudEvents on the raw stream.
type Publisher struct {
	js       jetstream.JetStream
	subjects subject.Builder
	metrics  *Metrics
	now      func() time.Time

	mu          sync.Mutex
	lastFailure time.Time // of the latest publish JetStream did not acknowledge
	lastSuccess time.Time
}

// NewPublisher returns a publisher writing to the raw subjects of subjects.
func NewPublisher(js jetstream.JetStream, subjects subject.Builder, m *Metrics) *Publisher {
	return &Publisher{js: js, subjects: subjects, metrics: m, now: time.Now}
}

// Emitter returns the Emit function for the plugin called plugin.
func (p *Publisher) Emitter(plugin string) Emit {
	return func(ctx context.Context, ev Event) (Result, error) {
		start := p.now()
		res, err := p.publish(ctx, plugin, ev)
		p.metrics.observe(plugin, start, res, err)
		p.mu.Lock()
		switch {
		case err == nil:
			p.lastSuccess = p.now()
		case errors.Is(err, ErrUnavailable):
			p.lastFailure = p.now()
		}
		p.mu.Unlock()
		return res, err
	}
}

// unreadyFor is how long one failed publish keeps the producer unready when no publish has
// succeeded since. It lets load balancers steer traffic away while JetStream cannot store
// events, without waiting for traffic (which they withhold) to prove recovery.
const unreadyFor = 10 * time.Second

// Ready returns an error while JetStream recently refused to store events and has stored
// none since; producers register it as a readiness check.
func (p *Publisher) Ready(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lastFailure.After(p.lastSuccess) && p.now().Sub(p.lastFailure) < unreadyFor {
		return fmt.Errorf("jetstream did not store the last event (at %s)", p.lastFailure.Format(time.RFC3339))
	}
	return nil
}

func (p *Publisher) publish(ctx context.Context, plugin string, ev Event) (Result, error) {
	source := plugin
	if ev.Source != "" {
		source = ev.Source
	}
	subj, err := p.subjects.Raw(source, ev.Type)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	if ev.Time.IsZero() {
		ev.Time = p.now().UTC()
	}
	ce := &cloudevent.Event{
		ID:              ev.ID,
		Source:          source,
		Type:            ev.Type,
		Subject:         ev.Subject,
		Time:            ev.Time,
		DataContentType: "application/json",
		Data:            ev.Data,
	}
	body, err := cloudevent.Encode(ce)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	msg := nats.NewMsg(subj)
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, ev.ID)
	msg.Header.Set("Content-Type", cloudevent.ContentType)
	if ev.Traceparent != "" {
		msg.Header.Set("traceparent", ev.Traceparent)
	}
	ack, err := p.js.PublishMsg(ctx, msg)
	if err != nil {
		return Result{}, fmt.Errorf("%w: publish %s: %w", ErrUnavailable, subj, err)
	}
	return Result{ID: ev.ID, Duplicate: ack.Duplicate}, nil
}

// Metrics are the per-plugin metrics of the deployment guide, kept by the runtime so that no
// plugin has to.
type Metrics struct {
	active    *prometheus.GaugeVec
	errors    *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	published *prometheus.CounterVec
}

// NewMetrics registers the plugin metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "khook_plugin_active",
			Help: "1 while the plugin is running, 0 when it is stopped or failed.",
		}, []string{"plugin"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_plugin_errors_total",
			Help: "Events a plugin failed to publish, and plugin failures.",
		}, []string{"plugin"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "khook_plugin_event_processing_duration_seconds",
			Help:    "Time from a plugin's emit to JetStream's acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"plugin"}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_producer_events_total",
			Help: "Events emitted by plugins, by result (stored, duplicate, invalid, unavailable).",
		}, []string{"plugin", "result"}),
	}
	reg.MustRegister(m.active, m.errors, m.duration, m.published)
	return m
}

// Init pre-creates the series of a plugin so dashboards show zeros.
func (m *Metrics) Init(plugin string) {
	m.active.WithLabelValues(plugin)
	m.errors.WithLabelValues(plugin)
	for _, r := range []string{"stored", "duplicate", "invalid", "unavailable"} {
		m.published.WithLabelValues(plugin, r)
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

func (m *Metrics) observe(plugin string, start time.Time, res Result, err error) {
	m.duration.WithLabelValues(plugin).Observe(time.Since(start).Seconds())
	switch {
	case err == nil && res.Duplicate:
		m.published.WithLabelValues(plugin, "duplicate").Inc()
	case err == nil:
		m.published.WithLabelValues(plugin, "stored").Inc()
	case errors.Is(err, ErrInvalidEvent):
		m.published.WithLabelValues(plugin, "invalid").Inc()
	default:
		m.published.WithLabelValues(plugin, "unavailable").Inc()
		m.errors.WithLabelValues(plugin).Inc()
	}
}
