// Package dispatch is the dispatch consumer: it pulls normalized events, matches them to
// hooks, and delivers one task per match to the hook's agent.
//
// An event is acknowledged only after every task it fired was delivered. Each delivered task
// is recorded in the dispatch KV bucket, shared by all replicas, so that a redelivered event
// (after a crash, a lost ack or a partial failure) calls only the agents that have not yet
// answered.
package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/deadletter"
)

// Stage is the dispatcher's name in dead-letter subjects and metrics.
const Stage = "dispatcher"

// Dispatcher is the dispatch stage. Several replicas share one durable consumer.
type Dispatcher struct {
	js      jetstream.JetStream
	topo    streams.Config
	hooks   atomic.Pointer[Index]
	target  Target
	workers int
	logger  *zap.Logger
	metrics *metrics
	// DrainTimeout bounds how long Run waits for in-flight deliveries after its context ends.
	DrainTimeout time.Duration
}

// New returns a dispatcher. It starts nothing; call Run.
func New(js jetstream.JetStream, topo streams.Config, hooks *Index, target Target, workers int,
	reg prometheus.Registerer, logger *zap.Logger) *Dispatcher {
	d := &Dispatcher{
		js: js, topo: topo, target: target, workers: workers, logger: logger,
		metrics: newMetrics(reg, target.Name()), DrainTimeout: 10 * time.Second,
	}
	d.hooks.Store(hooks)
	return d
}

// SetHooks replaces the hooks used for every event handled from now on.
func (d *Dispatcher) SetHooks(idx *Index) { d.hooks.Store(idx) }

// Run consumes until ctx ends. It then stops pulling and gives in-flight deliveries up to
// DrainTimeout to finish; deliveries cut short are not acknowledged and will be redelivered.
func (d *Dispatcher) Run(ctx context.Context) error {
	cons, err := d.js.Consumer(ctx, d.topo.Events.Name, d.topo.Dispatcher.Durable)
	if err != nil {
		return fmt.Errorf("dispatcher: consumer %s on %s: %w", d.topo.Dispatcher.Durable, d.topo.Events.Name, err)
	}
	kv, err := d.js.KeyValue(ctx, d.topo.DispatchBucket)
	if err != nil {
		return fmt.Errorf("dispatcher: kv %s: %w", d.topo.DispatchBucket, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * d.workers))
	if err != nil {
		return fmt.Errorf("dispatcher: %w", err)
	}
	// Deliveries run on their own context so that shutdown lets them finish, up to the drain
	// timeout, instead of cutting every agent call at once.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	go func() {
		<-ctx.Done()
		it.Stop()
	}()

	msgs := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	for range d.workers {
		wg.Go(func() {
			for msg := range msgs {
				d.handle(work, kv, msg)
			}
		})
	}
	for {
		msg, err := it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			break
		}
		if err != nil {
			d.logger.Debug("pull", zap.Error(err))
			continue
		}
		msgs <- msg
	}
	close(msgs)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d.DrainTimeout):
		d.logger.Warn("drain timeout: cancelling in-flight deliveries; they will be redelivered")
		cancelWork()
		<-done
	}
	return nil
}

func (d *Dispatcher) handle(ctx context.Context, kv jetstream.KeyValue, msg jetstream.Msg) {
	d.metrics.inflight.Inc()
	defer d.metrics.inflight.Dec()

	ce, err := cloudevent.Decode(msg.Data())
	var ev mapping.Event
	if err == nil {
		err = json.Unmarshal(ce.Data, &ev)
	}
	if err != nil {
		d.metrics.events.WithLabelValues("invalid").Inc()
		d.deadLetter(ctx, msg, deadletter.Letter{Stage: Stage, Reason: "invalid-event", Err: err, Msg: msg})
		return
	}
	matches := d.hooks.Load().Match(&ev)
	if len(matches) == 0 {
		d.metrics.events.WithLabelValues("unmatched").Inc()
		d.logger.Debug("no hook matches", zap.String("event_id", ev.ID), zap.String("type", ev.Type), zap.String("namespace", ev.Namespace))
		ackOrLog(d.logger, msg)
		return
	}
	d.metrics.events.WithLabelValues("matched").Inc()

	// Long agent calls would otherwise outlive the ack wait and be redelivered mid-call.
	stopBeat := heartbeat(msg, d.topo.Dispatcher.AckWait/3)
	defer stopBeat()

	md, _ := msg.Metadata()
	for _, m := range matches {
		t := NewTask(m, &ev)
		t.Traceparent = msg.Headers().Get("traceparent")
		if delivered(ctx, kv, t.MessageID) {
			continue
		}
		start := time.Now()
		err := d.target.Deliver(ctx, t)
		d.metrics.duration.Observe(time.Since(start).Seconds())
		log := d.logger.With(zap.String("event_id", ev.ID), zap.String("hook", t.Hook),
			zap.String("agent", t.Agent.Namespace+"/"+t.Agent.Name), zap.String("message_id", t.MessageID))
		if err == nil {
			d.metrics.deliveries.WithLabelValues("success").Inc()
			log.Info("delivered")
			if _, err := kv.Put(ctx, deliveredKey(t.MessageID), nil); err != nil {
				// The agent has the task; without the record a redelivery would call it again.
				log.Warn("delivery record not stored", zap.Error(err))
			}
			continue
		}
		attempts := uint64(1)
		if md != nil {
			attempts = md.NumDelivered
		}
		maxDeliver := d.topo.Dispatcher.MaxDeliver
		if IsPermanent(err) || (maxDeliver > 0 && attempts >= uint64(maxDeliver)) {
			reason := "permanent"
			if !IsPermanent(err) {
				reason = "max-deliver"
			}
			d.metrics.deliveries.WithLabelValues("deadletter").Inc()
			log.Warn("delivery failed, dead-lettering", zap.String("reason", reason), zap.Uint64("attempt", attempts), zap.Error(err))
			d.deadLetter(ctx, msg, deadletter.Letter{Stage: Stage, Reason: reason, Err: err, Msg: msg,
				Hook: t.Hook, Target: t.Agent.Namespace + "/" + t.Agent.Name})
			return
		}
		d.metrics.deliveries.WithLabelValues("retry").Inc()
		delay := backoff(attempts)
		log.Warn("delivery failed, will retry", zap.Uint64("attempt", attempts), zap.Duration("delay", delay), zap.Error(err))
		if err := msg.NakWithDelay(delay); err != nil {
			log.Warn("nak", zap.Error(err))
		}
		return
	}
	ackOrLog(d.logger, msg)
}

// backoff is exponential from one second, capped at one minute.
func backoff(attempt uint64) time.Duration {
	if attempt > 7 {
		return time.Minute
	}
	return min(time.Second<<(attempt-1), time.Minute)
}

func deliveredKey(messageID string) string { return "delivered." + messageID }

// delivered reports whether a task was already delivered. A lookup error counts as not
// delivered: a possible duplicate call is better than a lost one.
func delivered(ctx context.Context, kv jetstream.KeyValue, messageID string) bool {
	_, err := kv.Get(ctx, deliveredKey(messageID))
	return err == nil
}

func heartbeat(msg jetstream.Msg, every time.Duration) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(done) }
}

func (d *Dispatcher) deadLetter(ctx context.Context, msg jetstream.Msg, l deadletter.Letter) {
	if err := deadletter.Publish(ctx, d.js, d.topo.Subjects(), l); err != nil {
		d.logger.Warn("dead letter not stored, will redeliver", zap.Error(err))
		if err := msg.NakWithDelay(time.Second); err != nil {
			d.logger.Warn("nak", zap.Error(err))
		}
		return
	}
	if err := msg.Term(); err != nil {
		d.logger.Warn("term", zap.Error(err))
	}
}

func ackOrLog(l *zap.Logger, msg jetstream.Msg) {
	if err := msg.Ack(); err != nil {
		l.Warn("ack", zap.String("subject", msg.Subject()), zap.Error(err))
	}
}

type metrics struct {
	events     *prometheus.CounterVec
	deliveries *prometheus.CounterVec
	duration   prometheus.Observer
	inflight   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, target string) *metrics {
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "khook_dispatcher_events_total",
		Help: "Normalized events handled by the dispatcher, by outcome (matched, unmatched, invalid).",
	}, []string{"outcome"})
	deliveries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "khook_dispatcher_deliveries_total",
		Help: "Agent calls, by target and result (success, retry, deadletter).",
	}, []string{"target", "result"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "khook_dispatcher_delivery_duration_seconds",
		Help:    "Time one agent call took, successful or not.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
	}, []string{"target"})
	inflight := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "khook_dispatcher_inflight",
		Help: "Events being delivered right now.",
	})
	reg.MustRegister(events, deliveries, duration, inflight)
	for _, o := range []string{"matched", "unmatched", "invalid"} {
		events.WithLabelValues(o)
	}
	m := &metrics{
		events:     events,
		deliveries: deliveries.MustCurryWith(prometheus.Labels{"target": target}),
		duration:   duration.WithLabelValues(target),
		inflight:   inflight,
	}
	for _, r := range []string{"success", "retry", "deadletter"} {
		m.deliveries.WithLabelValues(r)
	}
	return m
}
