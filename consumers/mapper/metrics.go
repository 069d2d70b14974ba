// The mapper's metrics; docs/metrics.md describes each.

package mapper

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/khook/khook/mapping"
)

type metrics struct {
	events        *prometheus.CounterVec
	publishErrors prometheus.Counter
	duration      prometheus.Histogram
	reloads       *prometheus.CounterVec
	rulesInfo     *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_mapper_events_total",
			Help: "Raw events handled by the mapper, by outcome (mapped, passthrough, unmapped, unmapped_deadletter, disabled, invalid).",
		}, []string{"outcome"}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "khook_mapper_publish_errors_total",
			Help: "Normalized events JetStream did not store; their raw events are redelivered.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "khook_mapper_map_duration_seconds",
			Help:    "Time to decode, map and hand one event to the publisher.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10),
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_mapper_rules_reloads_total",
			Help: "Reloads of the mappings file, by result (success, error). On error the previous rules stay active.",
		}, []string{"result"}),
		rulesInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "khook_mapper_rules_info",
			Help: "1 for the active rule set, labelled with its file hash and rule count.",
		}, []string{"hash", "rules"}),
	}
	for _, o := range mapping.Outcomes {
		m.events.WithLabelValues(string(o))
	}
	m.events.WithLabelValues("invalid")
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("error")
	reg.MustRegister(m.events, m.publishErrors, m.duration, m.reloads, m.rulesInfo)
	return m
}
