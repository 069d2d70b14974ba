// Package mapper is the mapping consumer: it pulls raw events from the raw stream, normalizes
// them with the mapping rules, and publishes the results to the events stream.
//
// A raw message is acknowledged only after its normalized event is durably stored (or after
// it is counted as unmapped, disabled or dead-lettered), so a crash at any point redelivers
// it. The normalized event keeps the raw event's id as its Nats-Msg-Id, so a redelivered raw
// event that was already mapped is dropped by the events stream's duplicate window.
package mapper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/khook/khook/internal/tracing"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/deadletter"
	"github.com/khook/khook/streams/outcome"
)

// Stage is the mapper's name in dead-letter subjects and metrics.
const Stage = "mapper"

// Mapper is the mapping stage. Several replicas share one durable consumer.
type Mapper struct {
	js      jetstream.JetStream
	topo    streams.Config
	rules   atomic.Pointer[mapping.Rules]
	logger  *zap.Logger
	metrics *metrics
	// rec records the raw events that produce no normalized event, and why, for khook
	// events describe and khook status.
	rec *outcome.Recorder
}

// New returns a mapper using rules. It starts nothing; call Run.
func New(js jetstream.JetStream, topo streams.Config, rules *mapping.Rules, reg prometheus.Registerer, logger *zap.Logger) *Mapper {
	m := &Mapper{js: js, topo: topo, logger: logger, metrics: newMetrics(reg),
		rec: outcome.NewRecorder(js, topo.Subjects(), outcome.NewFailedCounter(reg, Stage), logger)}
	m.SetRules(rules)
	return m
}

// SetRules replaces the rules used for every message handled from now on.
func (m *Mapper) SetRules(r *mapping.Rules) {
	old := m.rules.Swap(r)
	if old != nil {
		m.metrics.rulesInfo.DeleteLabelValues(old.Hash(), strconv.Itoa(old.Len()))
	}
	m.metrics.rulesInfo.WithLabelValues(r.Hash(), strconv.Itoa(r.Len())).Set(1)
	m.logger.Info("mapping rules active", zap.String("hash", r.Hash()), zap.Int("rules", r.Len()),
		zap.String("unmapped", string(r.Unmapped())))
}

// Reload applies a new version of the mapping file: the rules apply to every raw event
// handled from now on. A file that does not parse is refused whole, and the active rules
// stay; the error says why.
func (m *Mapper) Reload(b []byte) error {
	rules, err := mapping.Parse(b)
	if err != nil {
		m.metrics.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("%w (the active rules, hash %s, stay)", err, m.rules.Load().Hash())
	}
	m.metrics.reloads.WithLabelValues("success").Inc()
	m.SetRules(rules)
	return nil
}

// pending is a raw message waiting for its normalized event's publish acknowledgement.
type pending struct {
	msg jetstream.Msg
	ack jetstream.PubAckFuture
	id  string // the event's id, for its outcome record if the publish is refused
}

// Run consumes until ctx ends, then stops pulling, waits for outstanding publishes and acks
// or naks their inputs, and returns nil.
func (m *Mapper) Run(ctx context.Context) error {
	cons, err := m.js.Consumer(ctx, m.topo.Raw.Name, m.topo.Mapper.Durable)
	if err != nil {
		return fmt.Errorf("mapper: consumer %s on %s: %w", m.topo.Mapper.Durable, m.topo.Raw.Name, err)
	}
	// Pull as deep as the consumer lets messages wait unacknowledged (1,024 by default, at
	// most that): a shallower buffer re-pulls more often, and each pull request costs the
	// server as much as several messages.
	it, err := cons.Messages(jetstream.PullMaxMessages(min(max(m.topo.Mapper.MaxAckPending, 1), 1024)))
	if err != nil {
		return fmt.Errorf("mapper: %w", err)
	}
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	go m.rec.Run(ctx)

	// Publish acks arrive roughly in publish order, so one goroutine settling them in FIFO
	// order keeps up while bounding the work in flight to the channel's capacity.
	inflight := make(chan pending, m.topo.Mapper.MaxAckPending)
	var settler sync.WaitGroup
	settler.Add(1)
	go func() {
		defer settler.Done()
		for p := range inflight {
			m.settle(p)
		}
	}()
	defer func() {
		close(inflight)
		settler.Wait()
	}()

	for {
		msg, err := it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		if err != nil {
			// Transient pull errors (a leader change, a reconnect) are retried by the iterator.
			m.logger.Debug("pull", zap.Error(err))
			continue
		}
		if p, ok := m.handle(ctx, msg); ok {
			inflight <- p
		}
	}
}

// streamSourceHeader is the header JetStream adds to a message a stream took from one of its
// sources: at a hub, every event an edge forwarded.
const streamSourceHeader = "Nats-Stream-Source"

// handle maps one raw message. It returns a pending publish when the message must wait for
// one; otherwise it has already settled the message.
func (m *Mapper) handle(ctx context.Context, msg jetstream.Msg) (pending, bool) {
	start := time.Now()
	// The span covers decoding, mapping and handing the normalized event to JetStream; the
	// normalized event carries it as its parent to the dispatcher.
	ctx, span := tracing.Tracer().Start(tracing.Extract(ctx, msg.Headers()), "khook.map",
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", msg.Subject())))
	defer span.End()
	ce, err := cloudevent.Decode(msg.Data())
	if err == nil && ce.Cluster != "" {
		// Only khook's producers set a cluster; one that is no cluster's name could never be
		// written to the events stream.
		if cerr := cloudevent.CheckCluster(ce.Cluster); cerr != nil {
			err = fmt.Errorf("cloudevent: cluster: %w", cerr)
		}
	}
	if err != nil {
		tracing.Fail(span, err)
		m.metrics.events.WithLabelValues("invalid").Inc()
		id := ""
		if msgID := msg.Headers().Get(jetstream.MsgIDHeader); msgID != "" {
			source := m.topo.Subjects().SourceOf(msg.Subject())
			id = cloudevent.KeyOf(source, cloudevent.ClusterOf(source, msgID), msgID, "")
		}
		m.deadLetter(ctx, msg, id, "", "invalid-envelope", err)
		return pending{}, false
	}
	if ce.Cluster != "" && slices.Contains(m.topo.Edges, ce.Cluster) && msg.Headers().Get(streamSourceHeader) == "" {
		// An event that claims one of the hub's edges but was published at the hub, not
		// sourced from that edge: whoever published it may not speak for that cluster.
		m.metrics.events.WithLabelValues("invalid").Inc()
		source := m.topo.Subjects().SourceOf(msg.Subject())
		m.deadLetter(ctx, msg, cloudevent.KeyOf(source, "", msg.Headers().Get(jetstream.MsgIDHeader), ce.ID), ce.Type, "cluster-not-sourced",
			fmt.Errorf("the event claims cluster %q, an edge of this hub, but was not sourced from that edge", ce.Cluster))
		return pending{}, false
	}
	raw := mapping.RawOf(m.topo.Subjects().SourceOf(msg.Subject()), msg.Headers().Get(jetstream.MsgIDHeader), ce)
	ev, result := mapping.Map(m.rules.Load(), raw)
	m.metrics.events.WithLabelValues(string(result)).Inc()
	span.SetAttributes(attribute.String("khook.event.id", raw.ID), attribute.String("khook.event.source", raw.Source),
		attribute.String("khook.event.type", ce.Type), attribute.String("khook.outcome", string(result)))
	switch {
	case result == mapping.UnmappedDead:
		m.deadLetter(ctx, msg, raw.ID, ce.Type, "unmapped", fmt.Errorf("no mapping rule for source %q type %q", raw.Source, ce.Type))
		return pending{}, false
	case !result.HasEvent():
		// Counted above; logged so an operator can see which rule is missing or disabled.
		m.logger.Info("event not mapped", zap.String("event_id", raw.ID), tracing.LogField(ctx), zap.String("source", raw.Source),
			zap.String("type", ce.Type), zap.String("outcome", string(result)))
		kind, reason := outcome.Unmapped, fmt.Sprintf("no mapping rule for source %q type %q, and unmapped events are dropped", raw.Source, ce.Type)
		if result == mapping.DisabledOutcome {
			kind, reason = outcome.Disabled, fmt.Sprintf("the mapping rule for source %q type %q is disabled", raw.Source, ce.Type)
		}
		m.note(ctx, msg, raw.ID, outcome.Record{Outcome: kind, EventType: ce.Type, Reason: reason})
		deadletter.AckOrLog(m.logger, msg)
		return pending{}, false
	}
	out, err := m.encode(ctx, ev, msg, result)
	if err != nil {
		tracing.Fail(span, err)
		m.metrics.events.WithLabelValues("invalid").Inc()
		m.deadLetter(ctx, msg, raw.ID, ce.Type, "invalid-event", err)
		return pending{}, false
	}
	if limit := streams.MaxPayload(m.js); limit > 0 && streams.MsgSize(out) > limit {
		// The mapper adds the message beside the data, so a raw event that fit can map to an
		// event that does not; no retry would make it fit.
		m.metrics.events.WithLabelValues("invalid").Inc()
		m.deadLetter(ctx, msg, raw.ID, ce.Type, "too-large", fmt.Errorf("normalized event is %d bytes, over the server's max_payload of %d", streams.MsgSize(out), limit))
		return pending{}, false
	}
	fut, err := m.js.PublishMsgAsync(out)
	if streams.Unstorable(err) {
		m.metrics.events.WithLabelValues("invalid").Inc()
		m.deadLetter(ctx, msg, raw.ID, ce.Type, "too-large", err)
		return pending{}, false
	}
	if err != nil {
		m.metrics.publishErrors.Inc()
		tracing.Fail(span, err)
		m.logger.Warn("publish normalized event", zap.String("event_id", ev.ID), tracing.LogField(ctx), zap.Error(err))
		nakOrLog(m.logger, msg)
		return pending{}, false
	}
	m.metrics.duration.Observe(time.Since(start).Seconds())
	return pending{msg: msg, ack: fut, id: raw.ID}, true
}

func (m *Mapper) encode(ctx context.Context, ev mapping.Event, msg jetstream.Msg, result mapping.Outcome) (*nats.Msg, error) {
	in := msg.Headers()
	subj, err := m.topo.Subjects().Events(ev.Type)
	if err != nil {
		return nil, err
	}
	body, err := ev.Encode()
	if err != nil {
		return nil, err
	}
	out := nats.NewMsg(subj)
	out.Data = body
	out.Header.Set(jetstream.MsgIDHeader, ev.ID)
	out.Header.Set("Content-Type", cloudevent.ContentType)
	out.Header.Set(streams.HeaderMapping, string(result))
	tracing.Inject(ctx, out.Header)
	// The raw event's sequence identifies it to the dispatcher's groups: a replayed copy
	// names its original's. A replayed event stays marked as one (khook replay --through
	// mapper), once the raw stream confirms it is a copy: a raw publisher can set any
	// header, and replay headers unchecked would let it skip suppression windows
	// (Khook-Ignore-Suppression) or file its outcomes under another event.
	if seq, ok := m.originalSeq(ctx, msg); ok {
		for _, h := range streams.ReplayHeaders {
			if v := in.Get(h); v != "" {
				out.Header.Set(h, v)
			}
		}
		out.Header.Set(streams.HeaderRawSeq, strconv.FormatUint(seq, 10))
	} else if md, err := msg.Metadata(); err == nil {
		out.Header.Set(streams.HeaderRawSeq, strconv.FormatUint(md.Sequence.Stream, 10))
	}
	return out, nil
}

// settle acks a raw message once its output is stored, or naks it for redelivery.
func (m *Mapper) settle(p pending) {
	select {
	case <-p.ack.Ok():
		deadletter.AckOrLog(m.logger, p.msg)
	case err := <-p.ack.Err():
		if streams.Unstorable(err) {
			// The stream refuses this event at any attempt (its max message size).
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			m.metrics.events.WithLabelValues("invalid").Inc()
			m.deadLetter(ctx, p.msg, p.id, "", "too-large", err)
			return
		}
		m.metrics.publishErrors.Inc()
		m.logger.Warn("normalized event not stored, will redeliver", zap.String("subject", p.ack.Msg().Subject), zap.Error(err))
		nakOrLog(m.logger, p.msg)
	}
}

// deadLetter stores msg, the raw event id of type typ, in the dead-letter stream and
// terminates it only once the dead letter is stored; if that fails, the message is
// redelivered instead of lost. A stored dead letter is recorded as the event's outcome.
func (m *Mapper) deadLetter(ctx context.Context, msg jetstream.Msg, id, typ, reason string, cause error) {
	m.logger.Warn("dead-lettering raw event", zap.String("subject", msg.Subject()), tracing.LogField(ctx),
		zap.String("reason", reason), zap.Error(cause))
	seq := deadletter.Settle(ctx, m.js, m.topo.Subjects(), deadletter.Letter{Stage: Stage, Reason: reason, Err: cause, Msg: msg}, time.Second, m.logger)
	if seq > 0 && id != "" {
		m.note(ctx, msg, id, outcome.Record{Outcome: outcome.DeadLettered, EventType: typ, Reason: reason, Error: cause.Error(),
			DeadLetterSeq: seq})
	}
}

// note records what became of the raw event id, with where it is stored, and, for a
// replayed copy the raw stream confirms, which replay and original it comes from.
func (m *Mapper) note(ctx context.Context, msg jetstream.Msg, id string, r outcome.Record) {
	r.Stage = outcome.StageMapper
	if md, err := msg.Metadata(); err == nil {
		r.RawSeq = md.Sequence.Stream
	}
	if _, ok := m.originalSeq(ctx, msg); ok {
		h := msg.Headers()
		r.ReplayID, r.OriginalID = h.Get(streams.HeaderReplayID), h.Get(streams.HeaderOriginalID)
	}
	m.rec.Event(id, r)
}

func nakOrLog(l *zap.Logger, msg jetstream.Msg) {
	if err := msg.NakWithDelay(time.Second); err != nil {
		l.Warn("nak", zap.String("subject", msg.Subject()), zap.Error(err))
	}
}

// originalSeq returns the raw-stream sequence of the original a replayed copy names, once the
// raw stream confirms it: the message at that sequence is on the copy's subject, has the id
// the copy names as its original's, and the copy's type and data. Anyone who may publish raw
// events can set headers, and a sequence taken on trust would let one source's message pass
// for a repeat of another's, which a group would then not count.
func (m *Mapper) originalSeq(ctx context.Context, msg jetstream.Msg) (uint64, bool) {
	in := msg.Headers()
	seqText, original := in.Get(streams.HeaderOriginalSeq), in.Get(streams.HeaderOriginalID)
	if in.Get(streams.HeaderReplayID) == "" || seqText == "" || original == "" {
		return 0, false
	}
	seq, err := strconv.ParseUint(seqText, 10, 64)
	if err != nil {
		return 0, false
	}
	st, err := m.js.Stream(ctx, m.topo.Raw.Name)
	if err != nil {
		return 0, false
	}
	raw, err := st.GetMsg(ctx, seq)
	if err != nil {
		return 0, false
	}
	orig, err1 := cloudevent.Decode(raw.Data)
	cp, err2 := cloudevent.Decode(msg.Data())
	if err1 != nil || err2 != nil || raw.Subject != msg.Subject() || orig.Type != cp.Type || !bytes.Equal(orig.Data, cp.Data) ||
		mapping.RawOf(m.topo.Subjects().SourceOf(raw.Subject), raw.Header.Get(jetstream.MsgIDHeader), orig).ID != original {
		m.logger.Warn("a replayed copy names an original it is not a copy of; counted as a new event",
			zap.String("subject", msg.Subject()), zap.String("original_id", original), zap.Uint64("original_seq", seq))
		return 0, false
	}
	return seq, true
}
