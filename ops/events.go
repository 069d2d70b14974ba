package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/internal/duration"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/subject"
)

// EventFilter selects normalized events. Since and Until are when khook stored the event;
// MinSeverity keeps events at or above it; Match, when set, is applied last (a hook's
// matching rule, for the per-hook listing).
type EventFilter struct {
	Since, Until time.Time
	Type         string
	Namespace    string
	Resource     string
	Cluster      string
	MinSeverity  string
	Match        func(*mapping.Event) bool
}

// Validate reports a type that cannot be a subject token and a severity khook does not know.
func (f EventFilter) Validate() error {
	if f.Type != "" && !subject.ValidToken(f.Type) {
		return fmt.Errorf("type: want lowercase letters, digits, - and _, got %q", f.Type)
	}
	if f.MinSeverity != "" && !slices.Contains(mapping.Severities, f.MinSeverity) {
		return errors.New("severity: want one of info, warning, error, critical")
	}
	return nil
}

// ParseTime reads a time bound given by an operator: an RFC 3339 time, or with ago a
// duration back from now ("2h", or "2d" in days, as the streams' retention is written).
// Empty is no bound.
func ParseTime(v string, ago bool) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if !ago {
		return time.Time{}, fmt.Errorf("want an RFC 3339 time, got %q", v)
	}
	if d, err := duration.Parse(v); err == nil && d > 0 {
		return time.Now().Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("want an RFC 3339 time or a duration such as 2h or 2d, got %q", v)
}

func (f EventFilter) accepts(ev *mapping.Event) bool {
	if (f.Namespace != "" && ev.Namespace != f.Namespace) || (f.Resource != "" && ev.Resource.Name != f.Resource) ||
		(f.Cluster != "" && ev.Cluster != f.Cluster) {
		return false
	}
	if f.MinSeverity != "" && slices.Index(mapping.Severities, ev.Severity) < slices.Index(mapping.Severities, f.MinSeverity) {
		return false
	}
	return f.Match == nil || f.Match(ev)
}

// EventRecord is a normalized event as the events stream holds it.
type EventRecord struct {
	Seq      uint64    `json:"seq"`
	Stored   time.Time `json:"stored"`
	ReplayID string    `json:"replayId,omitempty"`
	// RawSeq is the sequence of the raw event it was mapped from, and Mapping how: mapped
	// by a rule, or passthrough (the mapper's Khook-Raw-Seq and Khook-Mapping headers).
	RawSeq  uint64 `json:"rawSeq,omitempty"`
	Mapping string `json:"mapping,omitempty"`
	mapping.Event
}

// QueryEvents returns up to limit events matching f, oldest first, after the stream sequence
// after (0: from the start). next is the sequence to pass as after for the following page,
// or 0 when there is none.
func QueryEvents(ctx context.Context, js jetstream.JetStream, topo streams.Config, f EventFilter, after uint64, limit int) (out []EventRecord, next uint64, err error) {
	r := Range{Stream: topo.Events.Name, Subject: topo.Subjects().Prefix + ".events." + orAny(f.Type), Until: f.Until}
	if after > 0 {
		r.FromSeq = after + 1
	} else {
		r.Since = f.Since
	}
	_, err = Scan(ctx, js, r, func(m Msg) error {
		rec, ok := record(m)
		if !ok || !f.accepts(&rec.Event) || (!f.Since.IsZero() && m.Time.Before(f.Since)) {
			return nil
		}
		if limit > 0 && len(out) == limit {
			// One more match exists: the page is full and there is a next one.
			next = out[len(out)-1].Seq
			return ErrStop
		}
		out = append(out, rec)
		return nil
	})
	return out, next, err
}

// TailEvents calls fn with every event matching f stored from now on, until ctx ends or fn
// fails.
func TailEvents(ctx context.Context, js jetstream.JetStream, topo streams.Config, f EventFilter, fn func(EventRecord) error) error {
	cons, err := js.OrderedConsumer(ctx, topo.Events.Name, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{topo.Subjects().Prefix + ".events." + orAny(f.Type)},
		DeliverPolicy:  jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return err
	}
	it, err := cons.Messages()
	if err != nil {
		return err
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		rec, ok := record(Msg{Seq: md.Sequence.Stream, Subject: m.Subject(), Time: md.Timestamp, Header: m.Headers(), Data: m.Data()})
		if !ok || !f.accepts(&rec.Event) {
			continue
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
}

func record(m Msg) (EventRecord, bool) {
	ev, err := mapping.DecodeEvent(m.Data)
	if err != nil {
		return EventRecord{}, false
	}
	rawSeq, _ := strconv.ParseUint(m.Header.Get(streams.HeaderRawSeq), 10, 64)
	return EventRecord{Seq: m.Seq, Stored: m.Time, ReplayID: m.Header.Get(streams.HeaderReplayID), RawSeq: rawSeq,
		Mapping: m.Header.Get(streams.HeaderMapping), Event: ev}, true
}
