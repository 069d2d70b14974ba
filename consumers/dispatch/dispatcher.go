// Package dispatch is the dispatch consumer: it pulls normalized events, matches them to
// hooks, and delivers one task per match to the hook's agent.
//
// Delivery is correct under replicas, crashes and failing agents:
//
//   - Suppression: one call per (hook, event type, namespace, resource) per window, decided
//     by an atomic create-if-absent claim in the shared KV bucket.
//   - Idempotence: each delivered task is recorded in the bucket before the event is
//     acknowledged, so a redelivered event calls only the agents that have not answered.
//   - Retries: retryable failures back off exponentially with jitter (honouring
//     Retry-After); permanent failures and exhausted attempts are dead-lettered with the
//     reason. Only real calls count as attempts.
//   - Protection: a concurrency limit and a circuit breaker per endpoint; while a breaker is
//     open, events wait instead of failing.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/khook/khook/consumers/dispatch/state"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/internal/tracing"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/deadletter"
	"github.com/khook/khook/streams/outcome"
)

// Stage is the dispatcher's name in dead-letter subjects and metrics.
const Stage = "dispatcher"

// Config configures a dispatcher.
type Config struct {
	// The koanf tags are khook.yaml's keys under dispatcher (internal/config embeds this
	// struct there), so the delivery settings and their defaults are stated once, here.
	Workers int `koanf:"workers"`
	// SuppressionWindow is the default window; a hook may set its own.
	SuppressionWindow time.Duration `koanf:"suppression_window"`
	MaxAttempts       int           `koanf:"max_attempts"`
	RetryBase         time.Duration `koanf:"retry_base"` // first retry delay; doubles per attempt, with jitter
	RetryMax          time.Duration `koanf:"retry_max"`  // cap on the retry delay, Retry-After included
	// Guard's keys (per_target_concurrency, breaker) sit directly under dispatcher.
	Guard GuardConfig `koanf:",squash,flatten"`
	// DrainTimeout bounds how long Run waits for in-flight deliveries after its context ends.
	DrainTimeout time.Duration `koanf:"drain_timeout"`
	// Budgets limit the tasks each agent gets, across replicas.
	Budgets []state.Budget `koanf:"budgets"`
	// ActiveEvents records each matched event in the dispatch bucket for Hook status
	// (two KV round trips per match). Only the Kubernetes hook watcher reads the records, so
	// a dispatcher with hooks from a file turns it off. It is not a setting: the pipeline
	// decides it from where hooks come from.
	ActiveEvents bool `koanf:"-"`
}

// DefaultConfig returns khook's defaults: 16 workers, khook's 10-minute window, 10 attempts.
func DefaultConfig() Config {
	return Config{
		Workers: 16, SuppressionWindow: 10 * time.Minute, MaxAttempts: 10,
		RetryBase: time.Second, RetryMax: 5 * time.Minute,
		Guard:        GuardConfig{Concurrency: 8, Breaker: BreakerConfig{Failures: 5, Cooldown: 30 * time.Second}},
		DrainTimeout: 25 * time.Second,
		ActiveEvents: true,
	}
}

// Observer is told what happens to a hook's tasks, to report it where operators look (the
// Kubernetes watcher records Events on the Hook). Suppressed duplicates are not reported.
// Methods must return quickly.
type Observer interface {
	// Firing: an event starts a new suppression window for the hook entry.
	Firing(t hook.Task)
	// Delivered: the agent accepted the task.
	Delivered(t hook.Task, res Result)
	// Failed: a call failed; final says the task was dead-lettered.
	Failed(t hook.Task, err error, final bool)
}

type noObserver struct{}

func (noObserver) Firing(hook.Task)              {}
func (noObserver) Delivered(hook.Task, Result)   {}
func (noObserver) Failed(hook.Task, error, bool) {}

// Dispatcher is the dispatch stage. Several replicas share one durable consumer.
type Dispatcher struct {
	// Observer, when set before Run, is told of firings, deliveries and failures.
	Observer Observer

	js       jetstream.JetStream
	topo     streams.Config
	cfg      Config
	hooks    atomic.Pointer[hook.Index]
	loaded   chan struct{} // closed once the hooks are complete
	load     sync.Once
	router   *Router
	guards   *guards
	logger   *zap.Logger
	metrics  *metrics
	state    *state.Store
	flusher  *flusher
	combiner *combiner
	pulling  atomic.Bool
	// rec records what became of each event, for khook events describe and khook status.
	rec *outcome.Recorder
}

// New returns a dispatcher working with state, the dispatch bucket every replica shares
// (state.Open). It starts nothing; call Run.
//
// hooks nil means the hooks are not known yet (a Hook informer still syncing): Run then
// pulls nothing until the first SetHooks, because an event handled against an incomplete
// set of hooks would be acknowledged as unmatched and never delivered.
func New(js jetstream.JetStream, topo streams.Config, cfg Config, st *state.Store, hooks *hook.Index, router *Router,
	reg prometheus.Registerer, logger *zap.Logger) *Dispatcher {
	m := newMetrics(reg, router.Kinds())
	d := &Dispatcher{js: js, topo: topo, cfg: cfg, state: st, router: router, logger: logger, metrics: m, loaded: make(chan struct{}),
		rec: outcome.NewRecorder(js, topo.Subjects(), outcome.NewFailedCounter(reg, Stage), logger)}
	d.guards = newGuards(cfg.Guard, func(state string) {
		m.breakerTransitions.WithLabelValues(state).Inc()
	})
	m.breakersOpen = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "khook_dispatcher_breakers_open",
		Help: "Endpoints whose circuit breaker is open or half-open.",
	}, func() float64 { return float64(d.guards.openCount()) })
	reg.MustRegister(m.breakersOpen)
	d.flusher = newFlusher(st, d, flushConfig{budgets: cfg.Budgets, maxAttempts: cfg.MaxAttempts, workers: cfg.Workers,
		leaseFor: topo.Dispatcher.AckWait, retryBase: cfg.RetryBase, subjects: topo.Subjects(), rec: d.rec}, m, logger)
	d.combiner = newCombiner()
	d.registerGroupMetrics(reg)
	if hooks != nil {
		d.SetHooks(hooks)
	}
	d.Observer = noObserver{}
	return d
}

// SetHooks replaces the hooks used for every event handled from now on. The first call
// lets Run start pulling.
func (d *Dispatcher) SetHooks(idx *hook.Index) {
	d.hooks.Store(idx)
	d.load.Do(func() { close(d.loaded) })
}

// Hooks returns the active hooks, or an empty index before they are loaded.
func (d *Dispatcher) Hooks() *hook.Index {
	if idx := d.hooks.Load(); idx != nil {
		return idx
	}
	return hook.Empty()
}

// State returns the shared dispatch state.
func (d *Dispatcher) State() *state.Store { return d.state }

// Ready fails until the dispatcher has its hooks and pulls events; a readiness probe.
func (d *Dispatcher) Ready(context.Context) error {
	select {
	case <-d.loaded:
	default:
		return errors.New("dispatcher: waiting for the hooks to load")
	}
	if !d.pulling.Load() {
		return errors.New("dispatcher: not pulling events")
	}
	return nil
}

// fetchWait bounds one pull request. It is short so that shutdown, which lets the current
// pull end rather than drop what it already received, is not held up.
const fetchWait = time.Second

// Run consumes until ctx ends. It pulls only once the hooks are loaded, and only as many
// messages as it has idle workers, so every message it receives is owned by a worker, and
// kept from redelivery by heartbeats, from the moment it arrives: no prefetched message can
// outlive the ack wait in a buffer and be handled twice. When ctx ends it stops pulling and
// gives in-flight deliveries up to DrainTimeout to finish; a delivery cut short then is not
// counted as a failure and its event is redelivered.
func (d *Dispatcher) Run(ctx context.Context) error {
	select {
	case <-d.loaded:
	case <-ctx.Done():
		return nil
	default:
		d.logger.Info("waiting for the hooks to load before pulling events")
		select {
		case <-d.loaded:
		case <-ctx.Done():
			return nil
		}
	}
	cons, err := d.js.Consumer(ctx, d.topo.Events.Name, d.topo.Dispatcher.Durable)
	if err != nil {
		return fmt.Errorf("dispatcher: consumer %s on %s: %w", d.topo.Dispatcher.Durable, d.topo.Events.Name, err)
	}
	go d.rec.Run(ctx)

	// Deliveries run on their own context so that shutdown lets them finish, up to the drain
	// timeout, instead of cutting every agent call at once.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	owned := newHeartbeats(d.topo.Dispatcher.AckWait / 3)
	stopBeats := owned.run()
	defer stopBeats()
	// The flusher sends grouped and queued tasks; it stops with the pulling, and its sends
	// drain with the deliveries.
	flushCtx, stopFlush := context.WithCancel(ctx)
	defer stopFlush()
	flushDone := make(chan struct{})
	go func() { d.flusher.watch(flushCtx, work); close(flushDone) }()

	// idle holds one token per idle worker; a pull asks for at most that many messages.
	idle := make(chan struct{}, d.cfg.Workers)
	for range d.cfg.Workers {
		idle <- struct{}{}
	}
	msgs := make(chan jetstream.Msg, d.cfg.Workers)
	var wg sync.WaitGroup
	for range d.cfg.Workers {
		wg.Go(func() {
			for msg := range msgs {
				d.handle(work, msg)
				owned.remove(msg)
				idle <- struct{}{}
			}
		})
	}
	d.pulling.Store(true)
	d.pull(ctx, cons, idle, msgs, owned)
	d.pulling.Store(false)
	close(msgs)
	stopFlush()

	done := make(chan struct{})
	go func() { wg.Wait(); <-flushDone; d.flusher.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d.cfg.DrainTimeout):
		d.logger.Warn("drain timeout: interrupting in-flight deliveries; their events will be redelivered",
			zap.Duration("drain_timeout", d.cfg.DrainTimeout))
		cancelWork()
		<-done
	}
	return nil
}

// pull fetches messages for idle workers until ctx ends.
func (d *Dispatcher) pull(ctx context.Context, cons jetstream.Consumer, idle chan struct{}, msgs chan<- jetstream.Msg, owned *heartbeats) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-idle:
		}
		// When both were ready, select may have taken the idle token: stopping wins, or a
		// shutdown could wait out several more pulls before its drain begins.
		if ctx.Err() != nil {
			return
		}
		n := 1
	more:
		for n < d.cfg.Workers {
			select {
			case <-idle:
				n++
			default:
				break more
			}
		}
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(fetchWait))
		got := 0
		if err == nil {
			for msg := range batch.Messages() {
				owned.add(msg)
				msgs <- msg
				got++
			}
			err = batch.Error()
		}
		for range n - got {
			idle <- struct{}{}
		}
		if err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			// A leader change or a reconnect: pull again shortly.
			d.logger.Debug("pull", zap.Error(err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// settle is what happens to a message once handle is done with it.
type settle struct {
	ack   bool
	delay time.Duration // with !ack: redeliver after this delay
}

func (d *Dispatcher) handle(ctx context.Context, msg jetstream.Msg) {
	d.metrics.inflight.Inc()
	defer d.metrics.inflight.Dec()
	// The span continues the trace the mapper put in the headers; every delivery attempt,
	// redeliveries included, is a child of it.
	ctx, span := tracing.Tracer().Start(tracing.Extract(ctx, msg.Headers()), "khook.dispatch",
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", msg.Subject())))
	defer span.End()

	ev, err := mapping.DecodeEvent(msg.Data())
	if err != nil {
		tracing.Fail(span, err)
		d.metrics.events.WithLabelValues("invalid").Inc()
		seq := d.deadLetter(ctx, deadletter.Letter{Stage: Stage, Reason: "invalid-event", Err: err, Msg: msg})
		if id := msg.Headers().Get(jetstream.MsgIDHeader); id != "" && seq > 0 {
			d.note(msg, &mapping.Event{ID: id}, outcome.Record{Outcome: outcome.DeadLettered, Reason: "invalid-event",
				Error: err.Error(), DeadLetterSeq: seq})
		}
		return
	}
	_, mspan := tracing.Tracer().Start(ctx, "khook.match")
	matches := d.hooks.Load().Match(&ev)
	mspan.SetAttributes(attribute.Int("khook.matches", len(matches)))
	mspan.End()
	span.SetAttributes(attribute.String("khook.event.id", ev.ID), attribute.String("khook.event.type", ev.Type),
		attribute.String("khook.event.namespace", ev.Namespace), attribute.Int("khook.matches", len(matches)))
	if len(matches) == 0 {
		d.metrics.events.WithLabelValues("unmatched").Inc()
		d.logger.Debug("no hook matches", zap.String("event_id", ev.ID), tracing.LogField(ctx),
			zap.String("type", ev.Type), zap.String("namespace", ev.Namespace))
		d.note(msg, &ev, outcome.Record{Outcome: outcome.Unmatched})
		deadletter.AckOrLog(d.logger, msg)
		return
	}
	d.metrics.events.WithLabelValues("matched").Inc()

	for _, m := range matches {
		s := d.deliver(ctx, msg, m, &ev)
		if !s.ack {
			if err := msg.NakWithDelay(s.delay); err != nil {
				d.logger.Warn("nak", zap.String("event_id", ev.ID), tracing.LogField(ctx), zap.Error(err))
			}
			return
		}
	}
	deadletter.AckOrLog(d.logger, msg)
}

// deliver handles one match of an event. It returns ack when this match needs nothing more
// (delivered, suppressed or dead-lettered), else the delay before the event should come back.
func (d *Dispatcher) deliver(ctx context.Context, msg jetstream.Msg, m hook.Match, ev *mapping.Event) settle {
	log := d.logger.With(zap.String("event_id", ev.ID), tracing.LogField(ctx),
		zap.String("hook", m.Hook.Key()), zap.String("agent", m.Agent.Key()))
	if id := msg.Headers().Get(streams.HeaderReplayID); id != "" {
		log = log.With(zap.String("replay_id", id), zap.String("original_id", msg.Headers().Get(streams.HeaderOriginalID)))
	}
	ignore := msg.Headers().Get(streams.HeaderIgnoreSuppression) == "true"
	t := hook.Identify(m, ev)
	log = log.With(zap.String("message_id", t.MessageID))
	window := min(m.Hook.Window(d.cfg.SuppressionWindow), d.topo.DispatchTTL)

	if d.cfg.ActiveEvents {
		if err := d.state.Seen(ctx, state.ActiveEvent{
			Hook: m.Hook.Key(), Cluster: ev.Cluster, EventType: ev.Type, Namespace: ev.Namespace, ResourceKind: ev.Resource.Kind,
			ResourceName: ev.Resource.Name, FirstSeen: time.Now(), LastSeen: time.Now(), Window: window,
		}); err != nil {
			log.Debug("active event not recorded", zap.Error(err))
		}
	}
	if g, ok := m.Hook.Grouping(); ok && !ignore {
		// A grouped hook's events are sent as their group's task; a replay that ignores
		// suppression bypasses grouping too, and sends each event on its own.
		return d.gather(ctx, msg, m, g, ev, log)
	}
	switch c := d.claim(ctx, t, window, ignore, log); c.result {
	case claimRetry:
		return settle{delay: d.cfg.RetryBase}
	case claimRefused:
		return d.giveUp(ctx, msg, t, d.router.Target(m.Agent), "claim-refused", 0, c.err, log)
	case claimDone:
		if c.held.Holder != "" {
			d.note(msg, ev, taskRecord(outcome.Suppressed, t, outcome.Record{SuppressedBy: c.held.Holder,
				SuppressedByEvent: c.held.HolderEvent, Until: c.held.Until.UTC()}))
		} else {
			// Settled before: a redelivery (its first delivery's record may not have reached
			// the server before a crash), or the same event sent again.
			kind := outcome.Delivered
			if strings.HasPrefix(c.settled, "dead-lettered") {
				kind = outcome.DeadLettered
			}
			d.note(msg, ev, taskRecord(kind, t, outcome.Record{Reason: "settled before: " + c.settled}))
		}
		return settle{ack: true}
	}
	// The prompt is rendered only now, for a task that will be sent: a suppressed event
	// never pays for it.
	if err := t.Render(m); d.unsendable(err, log) {
		return d.giveUp(ctx, msg, t, d.router.Target(m.Agent), "prompt-too-large", 0, err, log)
	}
	if md, err := msg.Metadata(); err != nil || md.NumDelivered == 1 {
		d.Observer.Firing(t)
	}
	if _, ok := state.BudgetFor(d.cfg.Budgets, m.Agent.Key()); ok {
		// The agent has a budget: the task waits its turn with every replica's, by severity.
		return d.enqueue(ctx, msg, t, m, ev, log)
	}

	// One span per call, so every retry shows in the trace.
	attempt := 1
	if md, err := msg.Metadata(); err == nil {
		attempt = int(md.NumDelivered)
	}
	c := d.call(ctx, t, attempt, log)
	switch c.outcome {
	case callDelivered:
		d.note(msg, ev, taskRecord(outcome.Delivered, t, outcome.Record{Attempt: attempt, Took: outcome.Duration(c.took),
			TaskState: c.state}))
		return settle{ack: true}
	case callDelayed:
		d.note(msg, ev, taskRecord(outcome.Retrying, t, outcome.Record{Reason: "endpoint-busy", RetryIn: outcome.Duration(c.wait)}))
		return settle{delay: c.wait}
	case callInterrupted:
		// The event comes back at once to another replica.
		return settle{}
	case callPermanent:
		return d.giveUp(ctx, msg, t, c.target, "permanent", 1, c.err, log)
	}
	attempts, aerr := d.state.Attempt(ctx, t.MessageID)
	if aerr != nil {
		log.Warn("attempt not counted", zap.Error(aerr))
		attempts = 1
	}
	if attempts >= d.cfg.MaxAttempts {
		return d.giveUp(ctx, msg, t, c.target, "max-attempts", attempts, c.err, log)
	}
	delay := d.retryLater(t, c, attempts, log)
	d.note(msg, ev, taskRecord(outcome.Retrying, t, outcome.Record{Attempt: attempts, Error: c.err.Error(),
		RetryIn: outcome.Duration(delay)}))
	return settle{delay: delay}
}

// note records what became of ev, or of one of its tasks, in the outcomes stream, with where
// the event is stored and whether it is a replayed copy.
func (d *Dispatcher) note(msg jetstream.Msg, ev *mapping.Event, r outcome.Record) {
	if d.rec == nil {
		return
	}
	r.Stage, r.EventType = outcome.StageDispatcher, ev.Type
	if md, err := msg.Metadata(); err == nil {
		r.EventSeq = md.Sequence.Stream
	}
	h := msg.Headers()
	r.RawSeq, _ = strconv.ParseUint(h.Get(streams.HeaderRawSeq), 10, 64)
	r.ReplayID, r.OriginalID = h.Get(streams.HeaderReplayID), h.Get(streams.HeaderOriginalID)
	d.rec.Event(ev.ID, r)
}

// taskRecord is a record of kind about task t, with the rest of r.
func taskRecord(kind outcome.Kind, t hook.Task, r outcome.Record) outcome.Record {
	r.Outcome, r.Hook, r.Agent, r.MessageID = kind, t.Hook, t.Agent.Key(), t.MessageID
	return r
}

// unsendable reports whether a task whose prompt rendered with err cannot be sent: it
// rendered past the prompt limit. A template that failed on the task's events is sent anyway,
// with khook's plain placeholder expansion, and counted.
func (d *Dispatcher) unsendable(err error, log *zap.Logger) bool {
	if errors.Is(err, hook.ErrPromptTooLarge) {
		return true
	}
	if err != nil {
		d.metrics.promptFallbacks.Inc()
		log.Warn("prompt template failed on this task, using plain placeholders", zap.Error(err))
	}
	return false
}

// callOutcome is what one attempt to call an agent came to.
type callOutcome int

const (
	callDelivered   callOutcome = iota // the agent accepted the task, and it is recorded as settled
	callDelayed                        // the endpoint's breaker or concurrency limit held it back: not an attempt
	callInterrupted                    // shutdown cut the call short: not an attempt
	callRetryable                      // the call failed, and may succeed later
	callPermanent                      // the call failed, and no retry will help
)

// callResult is one call's outcome, with the target it went to.
type callResult struct {
	outcome callOutcome
	target  Target
	// wait is how long to hold the task back (callDelayed), or the agent's Retry-After
	// (callRetryable).
	wait time.Duration
	err  error
	// took and state, for a delivered task: how long the agent took to accept it, and the
	// task state it answered with.
	took  time.Duration
	state string
}

// call makes one call of t to its agent, within the endpoint's guard and in a span of its
// own, and records a delivered task as settled. attempt numbers the call in the span. Both
// an event's task and a group's go through it; what happens next (acknowledge, retry, give
// up) is the caller's.
func (d *Dispatcher) call(ctx context.Context, t hook.Task, attempt int, log *zap.Logger) callResult {
	target := d.router.Target(t.Agent)
	g := d.guards.get(target.Endpoint(t))
	if wait := g.admit(); wait > 0 {
		// Breaker open or endpoint saturated: not an attempt, just come back later.
		d.metrics.deliveries.WithLabelValues(target.Name(), "delayed").Inc()
		return callResult{outcome: callDelayed, target: target, wait: jitter(wait)}
	}
	// The agent receives this span as its parent in the traceparent header.
	dctx, dspan := tracing.Tracer().Start(ctx, "khook.deliver", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("khook.hook", t.Hook), attribute.String("khook.agent", t.Agent.Key()),
			attribute.String("khook.target", target.Name()), attribute.Int("khook.delivery", attempt)))
	defer dspan.End()
	t.Traceparent = tracing.Traceparent(dctx)
	start := time.Now()
	res, err := target.Deliver(dctx, t)
	d.metrics.duration.WithLabelValues(target.Name()).Observe(time.Since(start).Seconds())
	if err != nil && ctx.Err() != nil {
		// Cut short by shutdown after the drain timeout: not the agent's failure, so no
		// attempt is counted and the breaker is not told. The agent may have received the
		// task; it is sent again with the same messageId (a documented duplicate).
		g.done(false, false)
		tracing.Fail(dspan, err)
		d.metrics.deliveries.WithLabelValues(target.Name(), "interrupted").Inc()
		log.Info("call interrupted by shutdown, the task will be sent again", zap.Duration("took", time.Since(start)))
		return callResult{outcome: callInterrupted, target: target, err: err}
	}
	retryable, retryAfter := Classify(err)
	g.done(err == nil, err != nil && retryable)
	tracing.Fail(dspan, err)
	dspan.SetAttributes(attribute.Bool("khook.retryable", err != nil && retryable))
	switch {
	case err != nil && retryable:
		return callResult{outcome: callRetryable, target: target, wait: retryAfter, err: err}
	case err != nil:
		return callResult{outcome: callPermanent, target: target, err: err}
	}
	dspan.SetAttributes(attribute.String("khook.task_state", res.State))
	d.metrics.deliveries.WithLabelValues(target.Name(), "success").Inc()
	d.metrics.taskStates.WithLabelValues(res.State).Inc()
	log.Info("delivered", zap.String("task_state", res.State), zap.Duration("took", time.Since(start)))
	d.Observer.Delivered(t, res)
	if err := d.state.MarkSettled(ctx, t.MessageID, "delivered "+res.State); err != nil {
		// The agent has the task; without the record a redelivery would call it again.
		log.Warn("delivery record not stored", zap.Error(err))
	}
	return callResult{outcome: callDelivered, target: target, took: time.Since(start), state: res.State}
}

// retryLater reports a retryable failure of t's call number attempts and returns how long
// to wait before the next: exponential backoff, or the agent's Retry-After when longer.
func (d *Dispatcher) retryLater(t hook.Task, c callResult, attempts int, log *zap.Logger) time.Duration {
	d.Observer.Failed(t, c.err, false)
	delay := max(backoff(attempts, d.cfg.RetryBase, d.cfg.RetryMax), min(c.wait, d.cfg.RetryMax))
	d.metrics.deliveries.WithLabelValues(c.target.Name(), "retry").Inc()
	log.Warn("delivery failed, will retry", zap.Int("attempt", attempts), zap.Duration("delay", delay), zap.Error(c.err))
	return delay
}

type claimResult int

// claimed is what claim decided, with the claim that suppressed the task (held), or how the
// task settled before (settled).
type claimed struct {
	result  claimResult
	held    state.Claimed
	settled string
	err     error
}

const (
	claimOwned   claimResult = iota // this delivery holds the suppression window: call the agent
	claimDone                       // delivered before, or suppressed: nothing to do
	claimRetry                      // the claim could not be made: try again later
	claimRefused                    // the server refused the claim as invalid: no retry will help
)

// claim takes the hook's suppression window for this task, in a span of its own so a trace
// shows why an event did not reach an agent.
//
// The claim comes first and the delivery record second: an event inside another's window
// is suppressed after one KV read (the claim's), and only a task that holds its window
// reads whether it was delivered before (a redelivery after a
// lost ack, or the same event sent again later), so it is never called twice. A replay sent
// with --ignore-suppression skips the window; its delivery record still prevents a second
// call for the same replayed event.
//
// A suppressed task's result comes with the claim that suppressed it.
func (d *Dispatcher) claim(ctx context.Context, t hook.Task, window time.Duration, ignore bool, log *zap.Logger) claimed {
	ctx, span := tracing.Tracer().Start(ctx, "khook.suppress", trace.WithAttributes(
		attribute.String("khook.suppression_key", t.SuppressionKey), attribute.String("khook.window", window.String())))
	defer span.End()
	if ignore {
		if how, ok := d.state.SettledAs(ctx, t.MessageID); ok {
			span.SetAttributes(attribute.String("khook.result", "settled-before"))
			return claimed{result: claimDone, settled: how}
		}
		span.SetAttributes(attribute.String("khook.result", "ignored"))
		return claimed{result: claimOwned}
	}
	c, err := d.state.Claim(ctx, t.SuppressionKey, t.MessageID, t.Event.ID, window)
	var api *jetstream.APIError
	if errors.As(err, &api) && api.Code >= 400 && api.Code < 500 && api.Code != 408 {
		// The server answered, and said no: an invalid TTL, say. Retrying would loop forever
		// and hold a slot of the consumer's max_ack_pending each time.
		tracing.Fail(span, err)
		return claimed{result: claimRefused, err: fmt.Errorf("suppression claim refused: %w", err)}
	}
	if err != nil {
		tracing.Fail(span, err)
		log.Warn("suppression claim failed, will retry", zap.Error(err))
		return claimed{result: claimRetry, err: err}
	}
	if !c.Owned {
		// Counted, not logged one by one: a flapping pod would flood the logs.
		span.SetAttributes(attribute.String("khook.result", "suppressed"))
		d.metrics.suppressed.Inc()
		return claimed{result: claimDone, held: c}
	}
	if how, ok := d.state.SettledAs(ctx, t.MessageID); ok {
		span.SetAttributes(attribute.String("khook.result", "settled-before"))
		if c.Created {
			// The same event sent again after its window: the window just opened has no
			// call behind it, so it must not suppress the events that follow.
			if err := d.state.Release(ctx, t.SuppressionKey, t.MessageID); err != nil {
				log.Warn("suppression claim not released", zap.Error(err))
			}
		}
		return claimed{result: claimDone, settled: how}
	}
	span.SetAttributes(attribute.String("khook.result", "claimed"))
	return claimed{result: claimOwned}
}

// giveUp dead-letters the event for this task (abandon): the event is acknowledged for this
// match once its dead letter is stored, and comes back later when it is not.
func (d *Dispatcher) giveUp(ctx context.Context, msg jetstream.Msg, t hook.Task, target Target, reason string,
	attempts int, cause error, log *zap.Logger) settle {
	seqs, err := d.abandon(ctx, t, target, reason, attempts, cause, []deadletter.Letter{{Msg: msg}}, log)
	if err != nil {
		return settle{delay: d.cfg.RetryBase}
	}
	if t.Event != nil {
		d.note(msg, t.Event, taskRecord(outcome.DeadLettered, t, outcome.Record{Attempt: attempts, Reason: reason,
			Error: errText(cause), DeadLetterSeq: seqs[0]}))
	}
	// The event is settled for this hook; other matches of the same event still run, and
	// the event is acknowledged when they are done.
	return settle{ack: true}
}

// abandon gives up a task that no retry will deliver, the one way for every task: its dead
// letters are stored (the event's message, or the events a group or the budget queue held),
// then the task is recorded as settled, so that no redelivery calls its agent again, and its
// suppression claim is released, so the next occurrence is not silently suppressed behind a
// task that never reached its agent. letters need only their Msg or Held and Part: the rest
// is the task's. It returns the dead letters' sequences, in the order of letters. An error
// means a dead letter was not stored, and nothing else was done: the caller tries again later.
func (d *Dispatcher) abandon(ctx context.Context, t hook.Task, target Target, reason string, attempts int, cause error,
	letters []deadletter.Letter, log *zap.Logger) ([]uint64, error) {
	if target == nil {
		target = d.router.Target(t.Agent)
	}
	log.Warn("delivery failed, dead-lettering", zap.String("reason", reason), zap.Int("attempt", attempts),
		zap.Int("dead_letters", len(letters)), zap.Error(cause))
	seqs := make([]uint64, 0, len(letters))
	for _, l := range letters {
		l.Stage, l.Reason, l.Err, l.Hook, l.Key, l.Attempts = Stage, reason, cause, t.Hook, t.MessageID, attempts
		l.Target = target.Name() + " " + target.Endpoint(t)
		seq, err := deadletter.Publish(ctx, d.js, d.topo.Subjects(), l)
		if err != nil {
			log.Warn("dead letter not stored, will try again", zap.Error(err))
			return nil, err
		}
		seqs = append(seqs, seq)
	}
	d.metrics.deliveries.WithLabelValues(target.Name(), "deadletter").Inc()
	d.metrics.deadLetters.WithLabelValues(reason).Add(float64(len(letters)))
	d.Observer.Failed(t, cause, true)
	if err := d.state.MarkSettled(ctx, t.MessageID, "dead-lettered "+reason); err != nil {
		// The dead letter is stored; without the record, a redelivery of this event for
		// another match would call this agent again (a documented duplicate).
		log.Warn("settled record not stored", zap.Error(err))
	}
	if t.SuppressionKey != "" {
		if err := d.state.Release(ctx, t.SuppressionKey, t.MessageID); err != nil {
			log.Warn("suppression claim not released", zap.Error(err))
		}
	}
	return seqs, nil
}

// errText is err's message, or nothing.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// backoff is exponential from base, doubling per attempt, capped at limit, with ±20% jitter
// so that replicas retrying together spread out.
func backoff(attempt int, base, limit time.Duration) time.Duration {
	d := base
	for i := 1; i < attempt && d < limit; i++ {
		d *= 2
	}
	return jitter(min(d, limit))
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// deadLetter stores an undeliverable event and terminates it once the dead letter is stored.
// It returns the dead letter's sequence, zero when it was not stored.
func (d *Dispatcher) deadLetter(ctx context.Context, l deadletter.Letter) uint64 {
	seq := deadletter.Settle(ctx, d.js, d.topo.Subjects(), l, d.cfg.RetryBase, d.logger)
	if seq > 0 {
		d.metrics.deadLetters.WithLabelValues(l.Reason).Inc()
	}
	return seq
}
