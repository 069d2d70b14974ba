package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/consumers/dispatch/state"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/deadletter"
)

// HeaderRetryOf marks an event republished from a dead letter with the dead letter's
// sequence, for the logs and for tracing back.
const HeaderRetryOf = streams.HeaderRetryOf

// DeadLetter is one message in the dead-letter stream, with its reason.
type DeadLetter struct {
	Seq             uint64    `json:"seq"`
	Time            time.Time `json:"time"`
	Stage           string    `json:"stage"`
	Reason          string    `json:"reason"`
	Error           string    `json:"error,omitempty"`
	Hook            string    `json:"hook,omitempty"`
	Target          string    `json:"target,omitempty"`
	Attempts        int       `json:"attempts,omitempty"`
	OriginalSubject string    `json:"originalSubject"`
	EventID         string    `json:"eventId,omitempty"`
	// Task is the dispatcher task (A2A messageId) that was dead-lettered.
	Task      string `json:"task,omitempty"`
	EventType string `json:"eventType,omitempty"`
	// Event is the original message body (the CloudEvent), for `khook dlq show`.
	Event  []byte      `json:"-"`
	Header nats.Header `json:"-"`
}

// DLQFilter selects dead letters; empty fields match everything.
type DLQFilter struct {
	Stage, Reason, Hook, Type string
	Since                     time.Time
	Seqs                      []uint64
}

func (f DLQFilter) matches(d DeadLetter) bool {
	return (f.Stage == "" || d.Stage == f.Stage) && (f.Reason == "" || d.Reason == f.Reason) &&
		(f.Hook == "" || d.Hook == f.Hook) && (f.Type == "" || d.EventType == f.Type) &&
		(len(f.Seqs) == 0 || slices.Contains(f.Seqs, d.Seq))
}

func letterOf(m Msg) DeadLetter {
	d := DeadLetter{
		Seq: m.Seq, Time: m.Time, Header: m.Header, Event: m.Data,
		Stage: m.Header.Get(deadletter.HeaderStage), Reason: m.Header.Get(deadletter.HeaderReason),
		Error: m.Header.Get(deadletter.HeaderError), Hook: m.Header.Get(deadletter.HeaderHook),
		Target: m.Header.Get(deadletter.HeaderTarget), OriginalSubject: m.Header.Get(deadletter.HeaderOriginalSubject),
		Task: m.Header.Get(deadletter.HeaderTask),
	}
	d.Attempts, _ = strconv.Atoi(m.Header.Get(deadletter.HeaderAttempts))
	if ce, err := cloudevent.Decode(m.Data); err == nil {
		d.EventID, d.EventType = ce.ID, ce.Type
	}
	return d
}

// ListDeadLetters returns up to limit dead letters matching f, oldest first (limit 0: all).
func ListDeadLetters(ctx context.Context, js jetstream.JetStream, topo streams.Config, f DLQFilter, limit int) ([]DeadLetter, error) {
	var out []DeadLetter
	r := Range{Stream: topo.DLQ.Name, Subject: topo.Subjects().Prefix + ".dlq." + orAny(f.Stage), Since: f.Since}
	if len(f.Seqs) > 0 {
		r.FromSeq, r.ToSeq = slices.Min(f.Seqs), slices.Max(f.Seqs)
	}
	_, err := Scan(ctx, js, r, func(m Msg) error {
		if d := letterOf(m); f.matches(d) {
			out = append(out, d)
			if limit > 0 && len(out) >= limit {
				return ErrStop
			}
		}
		return nil
	})
	return out, err
}

// GetDeadLetter returns the dead letter at seq.
func GetDeadLetter(ctx context.Context, js jetstream.JetStream, topo streams.Config, seq uint64) (DeadLetter, error) {
	st, err := js.Stream(ctx, topo.DLQ.Name)
	if err != nil {
		return DeadLetter{}, err
	}
	raw, err := st.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return DeadLetter{}, fmt.Errorf("no dead letter %d", seq)
	}
	if err != nil {
		return DeadLetter{}, err
	}
	return letterOf(Msg{Seq: raw.Sequence, Subject: raw.Subject, Time: raw.Time, Header: raw.Header, Data: raw.Data}), nil
}

// RetryDeadLetter republishes a dead letter's original event to the subject it failed on,
// so the stage that gave up handles it again, and deletes the dead letter only after
// JetStream acknowledged the republished event. A retry interrupted between the two sends
// nothing twice: the republished event's id is derived from the dead letter's sequence.
func RetryDeadLetter(ctx context.Context, js jetstream.JetStream, topo streams.Config, d DeadLetter) error {
	if d.OriginalSubject == "" {
		return fmt.Errorf("dead letter %d: no original subject", d.Seq)
	}
	out := nats.NewMsg(d.OriginalSubject)
	out.Data = d.Event
	for k, v := range d.Header {
		if k == jetstream.MsgIDHeader || strings.HasPrefix(k, "Khook-") && !slices.Contains(streams.ReplayHeaders, k) {
			continue
		}
		out.Header[k] = v
	}
	if d.Task != "" {
		// The dead-lettered task is settled, so the republished event would not call its
		// agent again; reopening it lets exactly that task run, while the event's other
		// tasks, delivered before, stay settled and are not called twice.
		st, err := state.Open(ctx, js, topo)
		if err != nil {
			return fmt.Errorf("dead letter %d: %w", d.Seq, err)
		}
		if err := st.Reopen(ctx, d.Task); err != nil {
			return fmt.Errorf("dead letter %d: reopening task %s: %w", d.Seq, d.Task, err)
		}
	}
	id := d.EventID
	if id == "" {
		id = "dlq"
	}
	out.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("%s/dlq-retry-%d", id, d.Seq))
	out.Header.Set(HeaderRetryOf, strconv.FormatUint(d.Seq, 10))
	if _, err := js.PublishMsg(ctx, out); err != nil {
		return fmt.Errorf("dead letter %d: republish to %s: %w", d.Seq, d.OriginalSubject, err)
	}
	return deleteLetter(ctx, js, topo, d.Seq)
}

// PurgeDeadLetter deletes one dead letter.
func PurgeDeadLetter(ctx context.Context, js jetstream.JetStream, topo streams.Config, seq uint64) error {
	return deleteLetter(ctx, js, topo, seq)
}

func deleteLetter(ctx context.Context, js jetstream.JetStream, topo streams.Config, seq uint64) error {
	st, err := js.Stream(ctx, topo.DLQ.Name)
	if err != nil {
		return err
	}
	if err := st.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("dead letter %d: delete: %w", seq, err)
	}
	return nil
}
