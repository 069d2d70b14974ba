// Package deadletter stores what a stage could not handle in the dead-letter stream, with the
// reason in headers and the original message unchanged, so that it can be inspected and
// retried.
package deadletter

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/subject"
)

// Headers set on every dead letter.
const (
	HeaderStage           = "Khook-Stage"
	HeaderReason          = "Khook-Reason"
	HeaderError           = "Khook-Error"
	HeaderAttempts        = "Khook-Attempts"
	HeaderOriginalSubject = "Khook-Original-Subject"
	HeaderHook            = "Khook-Hook"
	HeaderTarget          = "Khook-Target"
	// HeaderTask is the dispatcher's task (its A2A messageId) that was given up on.
	HeaderTask = "Khook-Task"
	// HeaderTruncated is set, to the original body's size in bytes, on a dead letter whose
	// body had to be cut to fit the server's max_payload.
	HeaderTruncated = "Khook-Truncated"
	// HeaderGroup is the group whose task was given up on, on the dead letter of each
	// event that group listed; HeaderCount is how many times that event occurred in it.
	HeaderGroup = "Khook-Group"
	HeaderCount = "Khook-Count"
)

// Stages are the stages that dead-letter, and Reasons every reason each gives, for the
// operations commands to check a --stage or --reason against.
var (
	Stages  = []string{"mapper", "dispatcher"}
	Reasons = []string{
		// mapper
		"invalid-envelope", "unmapped", "cluster-not-sourced",
		// both
		"invalid-event", "too-large",
		// dispatcher
		"permanent", "max-attempts", "prompt-too-large", "claim-refused", "hook-deleted",
	}
)

// Held is an event a stage acknowledged and kept, and gave up on later: one of a group's
// events, or a task that waited for its agent's budget. Its dead letter is what the stage
// would have published it as (its subject and body), so that `khook dlq retry` hands it
// back to the same stage.
type Held struct {
	Subject string
	Data    []byte
	Header  nats.Header
}

// Letter is one message a stage gives up on.
type Letter struct {
	Stage  string // mapper or dispatcher
	Reason string // a short, stable token: invalid-envelope, permanent, max-deliver
	Err    error
	// Msg is the message given up on; Held, when there is no message any more.
	Msg  jetstream.Msg
	Held *Held
	Hook string // namespace/name, for the dispatcher
	// Key identifies what within the message was given up on, when a message can be dead-
	// lettered more than once (the dispatcher: once per task, the task's message id). Two
	// dead letters of one message with different keys are both stored.
	Key string
	// Part tells apart the dead letters of one task's held events (a group's events).
	Part   string
	Target string // the agent or URL, for the dispatcher
	// Attempts is how many calls were made; zero means the message's delivery count.
	Attempts int
}

// Publish stores l in the dead-letter stream and returns its sequence there after JetStream
// acknowledged it (the first copy's, for a letter stored before).
// The dead letter's id is derived from the original's stream and sequence and the letter's
// Key, so a stage that crashes after storing it and before terminating the original stores
// it only once, while two tasks of one event dead-lettered together are both kept.
func Publish(ctx context.Context, js jetstream.JetStream, subjects subject.Builder, l Letter) (uint64, error) {
	subj, err := subjects.DLQ(l.Stage)
	if err != nil {
		return 0, err
	}
	origSubject, data, header := l.original()
	out := nats.NewMsg(subj)
	out.Data = data
	for k, v := range header {
		if k != jetstream.MsgIDHeader {
			out.Header[k] = v
		}
	}
	out.Header.Set(HeaderStage, l.Stage)
	out.Header.Set(HeaderReason, l.Reason)
	if l.Err != nil {
		out.Header.Set(HeaderError, l.Err.Error())
	}
	out.Header.Set(HeaderOriginalSubject, origSubject)
	if l.Hook != "" {
		out.Header.Set(HeaderHook, l.Hook)
	}
	if l.Target != "" {
		out.Header.Set(HeaderTarget, l.Target)
	}
	if l.Key != "" && l.Stage == "dispatcher" {
		out.Header.Set(HeaderTask, l.Key)
	}
	if l.Attempts > 0 {
		out.Header.Set(HeaderAttempts, strconv.Itoa(l.Attempts))
	}
	if l.Held != nil {
		// Held events have no message any more: the task and the part name the letter, so
		// that a stage storing it again after a crash stores it once.
		id := "dlq-" + l.Stage + "-held-" + l.Key
		if l.Part != "" {
			id += "-" + l.Part
		}
		out.Header.Set(jetstream.MsgIDHeader, id)
	} else if md, err := l.Msg.Metadata(); err == nil {
		if l.Attempts == 0 {
			out.Header.Set(HeaderAttempts, strconv.FormatUint(md.NumDelivered, 10))
		}
		id := fmt.Sprintf("dlq-%s-%s-%d", l.Stage, md.Stream, md.Sequence.Stream)
		if l.Key != "" {
			id += "-" + l.Key
		}
		out.Header.Set(jetstream.MsgIDHeader, id)
	}
	// A dead letter carries its message's headers and the reason on top of the message, so a
	// message near the limit would not fit: its body is cut, and the cut is recorded.
	if limit := streams.MaxPayload(js); limit > 0 {
		if over := streams.MsgSize(out) - limit + 256; over > 0 && over < len(out.Data) {
			out.Header.Set(HeaderTruncated, strconv.Itoa(len(out.Data)))
			out.Data = out.Data[:len(out.Data)-over]
		}
	}
	ack, err := js.PublishMsg(ctx, out)
	if err != nil {
		return 0, fmt.Errorf("dead letter to %s: %w", subj, err)
	}
	return ack.Sequence, nil
}

// original is what the letter is about: its subject, body and headers.
func (l Letter) original() (string, []byte, nats.Header) {
	if l.Held != nil {
		return l.Held.Subject, l.Held.Data, l.Held.Header
	}
	return l.Msg.Subject(), l.Msg.Data(), l.Msg.Headers()
}

// Settle hands msg over to the dead-letter stream: it stores l, and only then terminates msg
// so that JetStream never delivers it again. When the dead letter cannot be stored, msg is
// nak'd to be redelivered after retry instead, so that an event is never dropped because the
// dead-letter stream was unavailable. It returns the dead letter's sequence, zero when it was
// not stored. Both stages settle their failures this way.
func Settle(ctx context.Context, js jetstream.JetStream, subjects subject.Builder, l Letter, retry time.Duration, logger *zap.Logger) uint64 {
	seq, err := Publish(ctx, js, subjects, l)
	if err != nil {
		logger.Warn("dead letter not stored, will redeliver", zap.String("subject", l.Msg.Subject()), zap.Error(err))
		if err := l.Msg.NakWithDelay(retry); err != nil {
			logger.Warn("nak", zap.String("subject", l.Msg.Subject()), zap.Error(err))
		}
		return 0
	}
	if err := l.Msg.Term(); err != nil {
		logger.Warn("term", zap.String("subject", l.Msg.Subject()), zap.Error(err))
	}
	return seq
}

// AckOrLog acknowledges msg. A failed ack is logged, not returned: the message will be
// redelivered, and the stages' idempotence (Nats-Msg-Id, settled-task records) makes the
// second handling harmless.
func AckOrLog(logger *zap.Logger, msg jetstream.Msg) {
	if err := msg.Ack(); err != nil {
		logger.Warn("ack", zap.String("subject", msg.Subject()), zap.Error(err))
	}
}
