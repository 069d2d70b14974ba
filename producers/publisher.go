package producers

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/khook/khook/internal/tracing"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/subject"
)

// SenderIDExtension is the raw event's extension attribute that keeps an event's id as its
// plugin or sender gave it; the raw event's own id is khook's key (cloudevent.Key).
const SenderIDExtension = "senderid"

// Publisher turns emitted events into CloudEvents on the raw stream.
type Publisher struct {
	js       jetstream.JetStream
	subjects subject.Builder
	metrics  *Metrics
	now      func() time.Time
	// cluster is stamped on every event and scopes its key (cloudevent.InCluster); empty in
	// a single-cluster install.
	cluster string

	mu          sync.Mutex
	lastFailure time.Time // of the latest publish JetStream did not acknowledge
	lastSuccess time.Time

	// link is cancelled when the connection to NATS drops, and replaced by a fresh one.
	link atomic.Pointer[context.Context]
}

// NewPublisher returns a publisher writing to the raw subjects of subjects. It starts
// nothing: Run watches the connection, and should run for as long as the publisher is used.
func NewPublisher(js jetstream.JetStream, subjects subject.Builder, m *Metrics) *Publisher {
	p := &Publisher{js: js, subjects: subjects, metrics: m, now: time.Now}
	never := context.Background()
	p.link.Store(&never)
	return p
}

// InCluster makes the publisher stamp cluster on every event it publishes, and scope the
// events' keys by it, as an edge's producers do. It returns p.
func (p *Publisher) InCluster(cluster string) *Publisher {
	p.cluster = cluster
	return p
}

// Run makes a dropped connection fail the publishes waiting on it at once, until ctx ends or
// the connection is closed. A publish sent before the server died is never acknowledged;
// without Run, its caller (a webhook request, a plugin) would wait out its whole timeout.
// Failing fast with ErrUnavailable lets the caller retry, and the event id makes a retry of
// an event that was in fact stored a duplicate JetStream drops.
func (p *Publisher) Run(ctx context.Context) error {
	nc := p.js.Conn()
	if nc == nil {
		<-ctx.Done()
		return nil
	}
	changes := nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	defer nc.RemoveStatusListener(changes)
	link, cancel := context.WithCancel(context.Background())
	p.link.Store(&link)
	defer func() {
		never := context.Background()
		p.link.Store(&never)
		cancel()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case st, ok := <-changes:
			next, nextCancel := context.WithCancel(context.Background())
			p.link.Store(&next)
			cancel()
			cancel = nextCancel
			if !ok || st == nats.CLOSED {
				return nil
			}
		}
	}
}

// Emitter returns the Emit function for the plugin called plugin. With types, events of
// other types are refused as invalid; without, any type is accepted.
func (p *Publisher) Emitter(plugin string, types ...string) Emit {
	allowed := map[string]bool{}
	for _, t := range types {
		allowed[t] = true
	}
	return func(ctx context.Context, ev Event) (Result, error) {
		start := p.now()
		done := p.metrics.begin(plugin, start)
		typeLabel := "*"
		var res Result
		var err error
		if len(allowed) > 0 {
			typeLabel = ev.Type
			if !allowed[ev.Type] {
				typeLabel = "unsupported"
				err = fmt.Errorf("%w: plugin %s does not declare event type %q", ErrInvalidEvent, plugin, ev.Type)
			}
		}
		if err == nil {
			res, err = p.publish(ctx, plugin, ev)
		}
		done()
		p.metrics.observe(plugin, typeLabel, start, res, err)
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
	ext := ev.Extensions
	if ev.ID == "" {
		// A plugin that has no id of its own gets one derived from the event's content, so
		// that emitting the same event twice stores it once.
		ev.ID = contentID(source, ev.Type, ev.Subject, string(ev.Data))
	} else {
		// The raw event's id is khook's key for it; the id as the plugin or its sender gave
		// it stays beside it.
		ext = maps.Clone(ext)
		if ext == nil {
			ext = map[string]string{}
		}
		ext[SenderIDExtension] = ev.ID
	}
	key := cloudevent.InCluster(p.cluster, cloudevent.Key(source, ev.Scope, ev.ID))
	ce := &cloudevent.Event{
		ID:              key,
		Source:          source,
		Cluster:         p.cluster,
		Type:            ev.Type,
		Subject:         ev.Subject,
		Time:            ev.Time,
		DataContentType: "application/json",
		Data:            ev.Data,
		Extensions:      ext,
	}
	body, err := cloudevent.Encode(ce)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	msg := nats.NewMsg(subj)
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, key)
	msg.Header.Set("Content-Type", cloudevent.ContentType)
	// The publish span continues the plugin's trace (the webhook's request span, or a
	// traceparent the event source carried) and travels in the headers to the mapper.
	ctx, span := tracing.Tracer().Start(tracing.FromTraceparent(ctx, ev.Traceparent), "khook.publish",
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", subj),
			attribute.String("khook.plugin", plugin), attribute.String("khook.event.id", ev.ID)))
	defer span.End()
	tracing.Inject(ctx, msg.Header)
	if limit, size := streams.MaxPayload(p.js), streams.MsgSize(msg); limit > 0 && size > limit {
		// The server's limit, learnt when the connection was made: an event over it can
		// never be stored, which is the sender's problem, not the store's.
		return Result{}, fmt.Errorf("%w: the event is %d bytes in its envelope; the NATS server takes at most %d (max_payload), so send at most about %d bytes of data",
			ErrTooLarge, size, limit, max(0, limit-(size-len(ev.Data))))
	}
	if nc := p.js.Conn(); nc != nil && !nc.IsConnected() {
		return Result{}, fmt.Errorf("%w: publish %s: not connected to NATS", ErrUnavailable, subj)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(*p.link.Load(), cancel)()
	ack, err := p.publishRetrying(ctx, msg)
	if streams.Unstorable(err) {
		// The stream's own message size limit, smaller than the server's.
		tracing.Fail(span, err)
		return Result{}, fmt.Errorf("%w: %w", ErrTooLarge, err)
	}
	if err != nil {
		tracing.Fail(span, err)
		return Result{}, fmt.Errorf("%w: publish %s: %w", ErrUnavailable, subj, err)
	}
	if ack.Duplicate {
		if ack, key, err = p.checkDuplicate(ctx, source, msg, ce, ack); err != nil {
			tracing.Fail(span, err)
			return Result{}, fmt.Errorf("%w: publish %s: %w", ErrUnavailable, subj, err)
		}
	}
	span.SetAttributes(attribute.Bool("khook.duplicate", ack.Duplicate))
	return Result{ID: key, Duplicate: ack.Duplicate}, nil
}

// checkDuplicate makes sure a duplicate acknowledgement is for this source's own event. The
// raw stream's duplicate window is shared by every source, and a process allowed to publish
// only on its own subjects could still send another source's predictable id (a Kubernetes
// UID and count, an Alertmanager fingerprint) first, to have the real event dropped. So the
// stored original is read back, and when it sits on another source's subjects the event is
// stored under a fresh key instead: it is never lost, at the cost of duplicate detection for
// that one event (the dispatcher's suppression window still applies).
func (p *Publisher) checkDuplicate(ctx context.Context, source string, msg *nats.Msg, ce *cloudevent.Event,
	ack *jetstream.PubAck) (*jetstream.PubAck, string, error) {
	st, err := p.js.Stream(ctx, ack.Stream)
	if err != nil {
		return nil, "", fmt.Errorf("checking duplicate: %w", err)
	}
	orig, err := st.GetMsg(ctx, ack.Sequence)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// Gone already (age or limits): nothing to compare, and nothing to suppress with.
		return ack, ce.ID, nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("checking duplicate: %w", err)
	}
	if p.subjects.SourceOf(orig.Subject) == source {
		return ack, ce.ID, nil
	}
	p.metrics.collisions.WithLabelValues(source).Inc()
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	ce.ID = cloudevent.DeriveKey(ce.ID, "/collision-"+hex.EncodeToString(nonce[:]))
	if msg.Data, err = cloudevent.Encode(ce); err != nil {
		return nil, "", err
	}
	msg.Header.Set(jetstream.MsgIDHeader, ce.ID)
	ack, err = p.publishRetrying(ctx, msg)
	return ack, ce.ID, err
}

// attemptTimeout bounds one publish attempt. A healthy JetStream acknowledges in
// milliseconds; an attempt sent to a stream leader that died is never answered, and without
// a bound it would hold the caller until its own deadline (a webhook's 30 s) although a new
// leader is elected within seconds.
const attemptTimeout = 2 * time.Second

// publishRetrying publishes msg, trying again after an unanswered attempt until ctx ends.
// The message id makes a retry of an attempt that was in fact stored a duplicate JetStream
// acknowledges without storing twice.
func (p *Publisher) publishRetrying(ctx context.Context, msg *nats.Msg) (*jetstream.PubAck, error) {
	for {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		ack, err := p.js.PublishMsg(actx, msg)
		cancel()
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return ack, err
		}
	}
}

// contentID derives an event id from what an event says.
func contentID(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
