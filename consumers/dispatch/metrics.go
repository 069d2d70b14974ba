// The dispatcher's metrics; docs/metrics.md describes each.

package dispatch

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	events             *prometheus.CounterVec
	deliveries         *prometheus.CounterVec
	duration           *prometheus.HistogramVec
	inflight           prometheus.Gauge
	suppressed         prometheus.Counter
	deadLetters        *prometheus.CounterVec
	taskStates         *prometheus.CounterVec
	breakerTransitions *prometheus.CounterVec
	breakersOpen       prometheus.GaugeFunc
	promptFallbacks    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, targets []string) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_dispatcher_events_total",
			Help: "Normalized events handled by the dispatcher, by outcome (matched, unmatched, invalid).",
		}, []string{"outcome"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_dispatcher_deliveries_total",
			Help: "Agent calls and deferrals, by target and result (success, retry, deadletter, delayed, interrupted by shutdown).",
		}, []string{"target", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "khook_dispatcher_delivery_duration_seconds",
			Help:    "Time one agent call took, successful or not.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
		}, []string{"target"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "khook_dispatcher_inflight",
			Help: "Events being delivered right now.",
		}),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "khook_dispatcher_suppressed_total",
			Help: "Matches not delivered because the suppression window for their hook, type, namespace and resource was already claimed.",
		}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_dispatcher_deadletters_total",
			Help: "Events dead-lettered by the dispatcher, by reason (permanent, max-attempts, invalid-event, prompt-too-large, claim-refused).",
		}, []string{"reason"}),
		taskStates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_dispatcher_task_states_total",
			Help: "Final states reported by agents for delivered tasks (completed, failed, message, ...).",
		}, []string{"state"}),
		promptFallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "khook_dispatcher_prompt_fallbacks_total",
			Help: "Tasks whose prompt template failed on the event (a missing .Data path) and were sent with plain placeholders.",
		}),
		breakerTransitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_dispatcher_breaker_transitions_total",
			Help: "Circuit breaker state changes, by new state (open, half-open, closed).",
		}, []string{"state"}),
	}
	reg.MustRegister(m.events, m.deliveries, m.duration, m.inflight, m.suppressed, m.deadLetters, m.taskStates, m.breakerTransitions, m.promptFallbacks)
	for _, o := range []string{"matched", "unmatched", "invalid"} {
		m.events.WithLabelValues(o)
	}
	for _, t := range targets {
		m.duration.WithLabelValues(t)
		for _, r := range []string{"success", "retry", "deadletter", "delayed", "interrupted"} {
			m.deliveries.WithLabelValues(t, r)
		}
	}
	for _, r := range []string{"permanent", "max-attempts", "invalid-event", "prompt-too-large", "claim-refused"} {
		m.deadLetters.WithLabelValues(r)
	}
	for _, s := range []string{"open", "half-open", "closed"} {
		m.breakerTransitions.WithLabelValues(s)
	}
	return m
}
