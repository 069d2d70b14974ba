// Package ops holds khook's operations on retained events: scanning a stream by time,
// sequence and subject, replaying events into a stage, inspecting and retrying dead letters,
// and the status of streams and consumers. The CLI (khook replay, status, dlq, events) and
// the HTTP API are thin layers over it.
package ops

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Msg is one retained message.
type Msg struct {
	Seq     uint64
	Subject string
	Time    time.Time
	Header  nats.Header
	Data    []byte
}

// Range selects retained messages of one stream: those on Subject (wildcards allowed) from
// FromSeq, or stored at or after Since, up to ToSeq and stored at or before Until. Zero
// values leave a bound open.
type Range struct {
	Stream  string
	Subject string
	FromSeq uint64
	ToSeq   uint64
	Since   time.Time
	Until   time.Time
	// HeadersOnly skips message bodies, for counting dead letters by their headers.
	HeadersOnly bool
}

// consumer is the ordered consumer that delivers r from its start.
func (r Range) consumer() jetstream.OrderedConsumerConfig {
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy, HeadersOnly: r.HeadersOnly}
	if r.Subject != "" {
		cfg.FilterSubjects = []string{r.Subject}
	}
	switch {
	case r.FromSeq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, r.FromSeq
	case !r.Since.IsZero():
		since := r.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	return cfg
}

// ErrStop ends a scan early without error.
var ErrStop = errors.New("stop scan")

// Scan calls fn with each message of r in stream order. It ends at the stream's last
// message when the scan began, so messages added meanwhile (a replay's own output, say)
// are not scanned. It returns the sequence of the last message fn accepted; fn returning
// ErrStop ends the scan before that message.
func Scan(ctx context.Context, js jetstream.JetStream, r Range, fn func(Msg) error) (uint64, error) {
	st, err := js.Stream(ctx, r.Stream)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", r.Stream, err)
	}
	state := st.CachedInfo().State
	end := state.LastSeq
	if r.ToSeq > 0 && r.ToSeq < end {
		end = r.ToSeq
	}
	if state.Msgs == 0 || end == 0 || (r.FromSeq > 0 && r.FromSeq > end) {
		return 0, nil
	}
	cons, err := js.OrderedConsumer(ctx, r.Stream, r.consumer())
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", r.Stream, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", r.Stream, err)
	}
	if info.NumPending == 0 {
		return 0, nil
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return 0, err
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()

	var last uint64
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return last, ctx.Err()
			}
			return last, err
		}
		md, err := m.Metadata()
		if err != nil {
			return last, err
		}
		seq := md.Sequence.Stream
		if seq > end || (!r.Until.IsZero() && md.Timestamp.After(r.Until)) {
			return last, nil
		}
		if err := fn(Msg{Seq: seq, Subject: m.Subject(), Time: md.Timestamp, Header: m.Headers(), Data: m.Data()}); err != nil {
			if errors.Is(err, ErrStop) {
				return last, nil
			}
			return last, err
		}
		last = seq
		if seq == end || md.NumPending == 0 {
			return last, nil
		}
	}
}
