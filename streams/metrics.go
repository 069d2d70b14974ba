package streams

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports JetStream's own view of khook's streams and consumers, read at scrape
// time: how full each stream is against its limits, and how far each consumer lags. The
// stages export it themselves, so consumer lag needs no NATS exporter, and a Horizontal Pod
// Autoscaler or an alert can use it directly.
//
// Every process reports the streams and consumers it works on, so two replicas report the
// same series under different pods; alerts aggregate with max().
type Collector struct {
	js        jetstream.JetStream
	streams   []StreamSettings
	consumers []consumerRef
	timeout   time.Duration
	now       func() time.Time

	up, messages, bytes, oldestAge, usage       *prometheus.Desc
	pending, ackPending, redelivered, waiting   *prometheus.Desc
	consumerUp, lastActiveAge, oldestUnackedAge *prometheus.Desc
}

type consumerRef struct{ stream, durable string }

// Stage names a pipeline stage for NewCollector.
type Stage int

// The stages whose streams and consumers a process reports.
const (
	StageProducer Stage = iota
	StageMapper
	StageDispatcher
)

// NewCollector reports on the streams and consumers the given stages use: the producer
// writes the raw stream; the mapper reads it, writes the events stream and may dead-letter;
// the dispatcher reads the events stream and may dead-letter; both record outcomes.
func NewCollector(js jetstream.JetStream, topo Config, stages ...Stage) *Collector {
	c := &Collector{js: js, timeout: 2 * time.Second, now: time.Now}
	seen := map[string]bool{}
	addStream := func(s StreamSettings) {
		if !seen[s.Name] {
			seen[s.Name] = true
			c.streams = append(c.streams, s)
		}
	}
	for _, st := range stages {
		switch st {
		case StageProducer:
			addStream(topo.Raw)
		case StageMapper:
			addStream(topo.Raw)
			addStream(topo.Events)
			addStream(topo.DLQ)
			addStream(topo.Outcomes)
			c.consumers = append(c.consumers, consumerRef{topo.Raw.Name, topo.Mapper.Durable})
		case StageDispatcher:
			addStream(topo.Events)
			addStream(topo.DLQ)
			addStream(topo.Outcomes)
			c.consumers = append(c.consumers, consumerRef{topo.Events.Name, topo.Dispatcher.Durable})
		}
	}
	s, cl := []string{"stream"}, []string{"stream", "consumer"}
	c.up = prometheus.NewDesc("khook_stream_up", "1 when the last scrape could read the stream's state from JetStream, else 0.", s, nil)
	c.messages = prometheus.NewDesc("khook_stream_messages", "Messages retained in the stream.", s, nil)
	c.bytes = prometheus.NewDesc("khook_stream_bytes", "Bytes retained in the stream.", s, nil)
	c.oldestAge = prometheus.NewDesc("khook_stream_oldest_message_age_seconds",
		"Age of the oldest retained message: the replay window the stream holds now.", s, nil)
	c.usage = prometheus.NewDesc("khook_stream_limit_usage_ratio",
		"Retained messages, bytes or oldest age as a fraction of the stream's configured limit (max_msgs, max_bytes, max_age); only limits that are set. Near 1 the discard policy starts removing (discard old) or refusing (discard new) messages.",
		[]string{"stream", "limit"}, nil)
	c.consumerUp = prometheus.NewDesc("khook_consumer_up", "1 when the last scrape could read the consumer's state from JetStream, else 0.", cl, nil)
	c.pending = prometheus.NewDesc("khook_consumer_pending_messages",
		"Messages in the stream the consumer has not yet been delivered: its lag.", cl, nil)
	c.ackPending = prometheus.NewDesc("khook_consumer_ack_pending_messages",
		"Messages delivered to the consumer and not yet acknowledged.", cl, nil)
	c.redelivered = prometheus.NewDesc("khook_consumer_redelivered_messages",
		"Messages delivered more than once and not yet acknowledged.", cl, nil)
	c.waiting = prometheus.NewDesc("khook_consumer_waiting_pulls", "Pull requests waiting for messages: idle capacity.", cl, nil)
	c.lastActiveAge = prometheus.NewDesc("khook_consumer_last_delivery_age_seconds",
		"Seconds since the consumer last had a message delivered; absent before the first delivery.", cl, nil)
	c.oldestUnackedAge = prometheus.NewDesc("khook_consumer_oldest_unprocessed_age_seconds",
		"Age of the oldest message the consumer has not acknowledged (0 when it is caught up): how late the stage is.", cl, nil)
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.messages, c.bytes, c.oldestAge, c.usage, c.consumerUp,
		c.pending, c.ackPending, c.redelivered, c.waiting, c.lastActiveAge, c.oldestUnackedAge} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. A stream or consumer JetStream cannot answer for
// within the timeout reports up 0 and nothing else, so a scrape never hangs on NATS.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	now := c.now()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	handles := map[string]jetstream.Stream{}
	for _, s := range c.streams {
		st, err := c.js.Stream(ctx, s.Name)
		if err != nil {
			gauge(c.up, 0, s.Name)
			continue
		}
		handles[s.Name] = st
		info := st.CachedInfo()
		gauge(c.up, 1, s.Name)
		gauge(c.messages, float64(info.State.Msgs), s.Name)
		gauge(c.bytes, float64(info.State.Bytes), s.Name)
		age := 0.0
		if info.State.Msgs > 0 && !info.State.FirstTime.IsZero() {
			age = now.Sub(info.State.FirstTime).Seconds()
		}
		gauge(c.oldestAge, age, s.Name)
		// The limits come from the server, not from khook.yaml, so a stream changed by hand
		// is reported as it is.
		if m := info.Config.MaxMsgs; m > 0 {
			gauge(c.usage, float64(info.State.Msgs)/float64(m), s.Name, "msgs")
		}
		if b := info.Config.MaxBytes; b > 0 {
			gauge(c.usage, float64(info.State.Bytes)/float64(b), s.Name, "bytes")
		}
		if a := info.Config.MaxAge; a > 0 {
			gauge(c.usage, age/a.Seconds(), s.Name, "age")
		}
	}
	for _, r := range c.consumers {
		st := handles[r.stream]
		var info *jetstream.ConsumerInfo
		if st != nil {
			if cons, err := st.Consumer(ctx, r.durable); err == nil {
				info = cons.CachedInfo()
			}
		}
		if info == nil {
			gauge(c.consumerUp, 0, r.stream, r.durable)
			continue
		}
		gauge(c.consumerUp, 1, r.stream, r.durable)
		gauge(c.pending, float64(info.NumPending), r.stream, r.durable)
		gauge(c.ackPending, float64(info.NumAckPending), r.stream, r.durable)
		gauge(c.redelivered, float64(info.NumRedelivered), r.stream, r.durable)
		gauge(c.waiting, float64(info.NumWaiting), r.stream, r.durable)
		if info.Delivered.Last != nil {
			gauge(c.lastActiveAge, now.Sub(*info.Delivered.Last).Seconds(), r.stream, r.durable)
		}
		gauge(c.oldestUnackedAge, c.oldestUnprocessed(ctx, st, info, now), r.stream, r.durable)
	}
}

// oldestUnprocessed is the age of the first message after the consumer's ack floor, the
// oldest one it has not finished. Asking for the first message at or after that sequence on
// any subject skips gaps left by limits or purges. It costs one message read per scrape.
func (c *Collector) oldestUnprocessed(ctx context.Context, st jetstream.Stream, info *jetstream.ConsumerInfo, now time.Time) float64 {
	if info.NumPending == 0 && info.NumAckPending == 0 {
		return 0
	}
	msg, err := st.GetMsg(ctx, info.AckFloor.Stream+1, jetstream.WithGetMsgSubject(">"))
	if err != nil {
		return 0
	}
	return max(0, now.Sub(msg.Time).Seconds())
}
