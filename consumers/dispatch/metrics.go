// The dispatcher's metrics; docs/metrics.md describes each.

package dispatch

import (
	"time"

	"github.com/khook/khook/consumers/dispatch/state"

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
	groupedEvents      prometheus.Counter
	groupTasks         *prometheus.CounterVec
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
			Help: "Dead letters stored by the dispatcher, by reason (permanent, max-attempts, invalid-event, prompt-too-large, claim-refused, hook-deleted, too-large).",
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
	m.groupedEvents = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "khook_dispatcher_grouped_events_total",
		Help: "Events folded into a group of a grouped hook (each counted once, redeliveries aside).",
	})
	m.groupTasks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "khook_dispatcher_group_tasks_total",
		Help: "Tasks sent from groups and from the budget queue, by result (delivered, dead-lettered, settled-before: sent by a replica that died before recording it).",
	}, []string{"result"})
	for _, r := range []string{"delivered", "dead-lettered", "settled-before"} {
		m.groupTasks.WithLabelValues(r)
	}
	reg.MustRegister(m.groupedEvents, m.groupTasks)
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
	for _, r := range []string{"permanent", "max-attempts", "invalid-event", "prompt-too-large", "claim-refused", "hook-deleted", "too-large"} {
		m.deadLetters.WithLabelValues(r)
	}
	for _, s := range []string{"open", "half-open", "closed"} {
		m.breakerTransitions.WithLabelValues(s)
	}
	return m
}

// registerGroupMetrics registers the gauges of groups and budgets, read from the flusher's
// view of the shared records: every replica reports the same values.
func (d *Dispatcher) registerGroupMetrics(reg prometheus.Registerer) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "khook_dispatcher_groups_open",
		Help: "Groups with events waiting for their task or a task being sent, across all replicas.",
	}, func() float64 {
		open, _ := d.flusher.stats()
		return float64(open)
	}))
	reg.MustRegister(&budgetCollector{d: d})
}

var (
	waitingDesc = prometheus.NewDesc("khook_dispatcher_tasks_waiting",
		"Tasks due but not sent, by agent: waiting for the agent's budget or a sender, across all replicas.", []string{"agent"}, nil)
	budgetDesc = prometheus.NewDesc("khook_dispatcher_budget_in_use",
		"An agent's budget in use, by limit: concurrent (tasks in flight) or hourly (tasks sent in the last hour).", []string{"agent", "limit"}, nil)
	budgetLimitDesc = prometheus.NewDesc("khook_dispatcher_budget_limit",
		"An agent's budget, by limit (concurrent, hourly), for the agents that have a budget and have had a task.", []string{"agent", "limit"}, nil)
)

// budgetCollector reports the waiting tasks and the budgets from the flusher's view.
type budgetCollector struct{ d *Dispatcher }

func (c *budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- waitingDesc
	ch <- budgetDesc
	ch <- budgetLimitDesc
}

func (c *budgetCollector) Collect(ch chan<- prometheus.Metric) {
	_, waiting := c.d.flusher.stats()
	for agent, n := range waiting {
		ch <- prometheus.MustNewConstMetric(waitingDesc, prometheus.GaugeValue, float64(n), agent)
	}
	for _, r := range c.d.flusher.budgetView() {
		b, ok := state.BudgetFor(c.d.cfg.Budgets, r.Agent)
		if !ok {
			continue
		}
		inFlight, lastHour := r.InUse(time.Now())
		ch <- prometheus.MustNewConstMetric(budgetDesc, prometheus.GaugeValue, float64(inFlight), r.Agent, "concurrent")
		ch <- prometheus.MustNewConstMetric(budgetDesc, prometheus.GaugeValue, float64(lastHour), r.Agent, "hourly")
		ch <- prometheus.MustNewConstMetric(budgetLimitDesc, prometheus.GaugeValue, float64(b.MaxConcurrentTasks), r.Agent, "concurrent")
		ch <- prometheus.MustNewConstMetric(budgetLimitDesc, prometheus.GaugeValue, float64(b.MaxTasksPerHour), r.Agent, "hourly")
	}
}
