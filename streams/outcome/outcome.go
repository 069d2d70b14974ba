// Package outcome records what became of each event: one small message per decision a stage
// makes about it, in the outcomes stream. The mapper records the raw events it does not map
// (no rule, a disabled rule, a dead letter); the dispatcher records an event no Hook matched
// and, for each task, whether it was delivered, suppressed by an earlier task's window,
// gathered into a group, queued for its agent's budget, retried or dead-lettered. A group's
// task is recorded once, under the group, and each gathered event names the task it goes in.
//
// `khook events describe` reads one event's records, `khook status` counts them per Hook,
// and `khook replay` sums its copies'. Nothing in the pipeline reads them back: records are
// published without waiting for their acknowledgement, so recording never slows or blocks
// an event, and a record the server did not store is counted
// (khook_outcome_records_failed_total), not retried. They are a trail for people, not part
// of any delivery guarantee.
package outcome

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/khook/khook/streams/subject"
)

// Kind is what became of an event, or of one of its tasks.
type Kind string

// The outcomes. Each record has one; an event's last record per task is where it stands.
const (
	// Unmapped: the mapper found no rule for the event's source and type, and the
	// unmapped policy drops such events.
	Unmapped Kind = "unmapped"
	// Disabled: the event's mapping rule is disabled.
	Disabled Kind = "disabled"
	// Unmatched: no Hook entry matched the normalized event.
	Unmatched Kind = "unmatched"
	// Delivered: the agent accepted the task.
	Delivered Kind = "delivered"
	// Suppressed: an earlier task of the same Hook entry and event key holds the
	// suppression window; SuppressedBy and Until say which and until when.
	Suppressed Kind = "suppressed"
	// Grouped: the event was gathered into a group; GroupTask is the task it goes in.
	Grouped Kind = "grouped"
	// Waiting: the task waits for its agent's budget.
	Waiting Kind = "waiting"
	// Retrying: a call failed and will be tried again after RetryIn.
	Retrying Kind = "retrying"
	// DeadLettered: the task (or the raw event, in the mapper) was given up and stored in
	// the dead-letter stream.
	DeadLettered Kind = "dead-lettered"
)

// Kinds lists every kind, for counting.
var Kinds = []Kind{Unmapped, Disabled, Unmatched, Delivered, Suppressed, Grouped, Waiting, Retrying, DeadLettered}

// Final reports whether k ends a task's story (or the event's, for the mapper's kinds and
// Unmatched): nothing more happens to it unless it is retried from a dead letter or
// replayed. Grouped and Waiting end with the group's or queue's task.
func (k Kind) Final() bool {
	switch k {
	case Unmapped, Disabled, Unmatched, Delivered, Suppressed, DeadLettered:
		return true
	}
	return false
}

// Stages that record.
const (
	StageMapper     = "mapper"
	StageDispatcher = "dispatcher"
)

// Record is one decision about one event or one group's task. Field names are stable: they
// are the JSON of `khook events describe -o json` and of the events API.
type Record struct {
	Outcome Kind      `json:"outcome"`
	Time    time.Time `json:"time"`
	Stage   string    `json:"stage"`
	// EventID is the event's id (the raw event's, which the normalized event keeps).
	EventID   string `json:"eventId,omitempty"`
	EventType string `json:"eventType,omitempty"`
	// EventSeq and RawSeq locate the event in the events and raw streams.
	EventSeq uint64 `json:"eventSeq,omitempty"`
	RawSeq   uint64 `json:"rawSeq,omitempty"`
	// ReplayID marks a replayed copy's records; OriginalID is the event it copies.
	ReplayID   string `json:"replayId,omitempty"`
	OriginalID string `json:"originalId,omitempty"`
	// Hook (namespace/name) and Agent (namespace/name) of the task.
	Hook  string `json:"hook,omitempty"`
	Agent string `json:"agent,omitempty"`
	// MessageID is the task's A2A message id: the same for every attempt.
	MessageID string `json:"messageId,omitempty"`
	// Attempt numbers the call this record is about.
	Attempt int `json:"attempt,omitempty"`
	// Took is how long the agent took to accept the task.
	Took Duration `json:"took,omitempty"`
	// TaskState is the agent's word on the task: an A2A task state, or "message".
	TaskState string `json:"taskState,omitempty"`
	// SuppressedBy is the message id of the task whose window suppressed this one, and
	// SuppressedByEvent that task's event; Until is when the window ends.
	SuppressedBy      string    `json:"suppressedBy,omitempty"`
	SuppressedByEvent string    `json:"suppressedByEvent,omitempty"`
	Until             time.Time `json:"until,omitzero"`
	// Group is the key of the event's group; GroupTask the message id of the group's task
	// the event goes in. Repeat marks an event the group had counted before (a redelivery,
	// or a replayed copy of an event it already counted): it adds nothing to the task.
	Group     string `json:"group,omitempty"`
	GroupTask string `json:"groupTask,omitempty"`
	Repeat    bool   `json:"repeat,omitempty"`
	// GroupSending is the group's task being sent when the event arrived, which covers
	// only what came before it; when that send is given back to be tried again (a
	// Retrying record of it after this one), the retry covers the event instead of
	// GroupTask.
	GroupSending string `json:"groupSending,omitempty"`
	// Events is how many events a group's task covered.
	Events int `json:"events,omitempty"`
	// Reason is a dead letter's reason, or why an event was not mapped; Error the failure.
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`
	// RetryIn is how long until a retried task's next call.
	RetryIn Duration `json:"retryIn,omitempty"`
	// DeadLetterSeq is the dead letter's sequence in the dead-letter stream, for
	// `khook dlq show` and `khook dlq retry`.
	DeadLetterSeq uint64 `json:"deadLetterSeq,omitempty"`
}

// Duration is a time.Duration written as Go writes one ("1.5s"), for people reading JSON.
type Duration time.Duration

// MarshalJSON writes d as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a string written by MarshalJSON.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// String is the duration as Go writes it.
func (d Duration) String() string { return time.Duration(d).String() }

// EventHash is the subject token of an event's records: a hash of its id, which may hold
// any character.
func EventHash(eventID string) string {
	h := sha256.Sum256([]byte(eventID))
	return hex.EncodeToString(h[:12])
}

// Decode reads a stored record.
func Decode(b []byte) (Record, error) {
	var r Record
	err := json.Unmarshal(b, &r)
	return r, err
}

// Recorder publishes records. Its methods never block on the server: a record waits only
// for the client's outgoing buffer. It publishes through a JetStream context of its own,
// whose window of unacknowledged publishes is separate from the stage's: when the outcomes
// stream stops answering, records past the window are dropped and counted, and the stage's
// own publishes (normalized events, dead letters) are untouched. A nil Recorder records
// nothing.
type Recorder struct {
	js       jetstream.JetStream
	subjects subject.Builder
	failed   prometheus.Counter
	logger   *zap.Logger
	// futures are the acknowledgements Run checks; when it falls behind, the newest are
	// not checked rather than the caller held up.
	futures chan jetstream.PubAckFuture
}

// maxPending bounds the records waiting for the server's acknowledgement; past it, records
// are dropped (and counted) rather than held.
const maxPending = 4096

// NewRecorder returns a recorder publishing under subjects on js's connection. Call Run to
// count the records the server did not store.
func NewRecorder(js jetstream.JetStream, subjects subject.Builder, failed prometheus.Counter, logger *zap.Logger) *Recorder {
	own, err := jetstream.New(js.Conn(), jetstream.WithPublishAsyncMaxPending(maxPending+1),
		jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		// Only invalid options fail; recording is never worth refusing to start over.
		logger.Warn("outcome records off", zap.Error(err))
		return nil
	}
	return &Recorder{js: own, subjects: subjects, failed: failed, logger: logger, futures: make(chan jetstream.PubAckFuture, maxPending)}
}

// NewFailedCounter is the counter of records not stored, registered on reg for stage.
func NewFailedCounter(reg prometheus.Registerer, stage string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{
		Name:        "khook_outcome_records_failed_total",
		Help:        "Outcome records (what khook events describe shows) the server did not store; the events themselves are unaffected.",
		ConstLabels: prometheus.Labels{"stage": stage},
	})
	reg.MustRegister(c)
	return c
}

// Event records r about the event with id. A replayed copy's records are kept under its own
// id and, a second time, under its original's (r.OriginalID), so that describing an event
// shows what its replays did too; counts skip the second (Record.Mirrored).
func (rc *Recorder) Event(id string, r Record) {
	if rc == nil {
		return
	}
	r.EventID = id
	rc.publish(rc.subjects.EventOutcomes(EventHash(id)), r)
	if r.OriginalID != "" && r.OriginalID != id {
		rc.publish(rc.subjects.EventOutcomes(EventHash(r.OriginalID)), r)
	}
}

// Mirrored reports whether r, read from subject, is the second copy of a replayed copy's
// record, kept under its original's subject: whoever counts records skips it.
func (r Record) Mirrored(subject string) bool {
	return r.OriginalID != "" && r.OriginalID != r.EventID && strings.HasSuffix(subject, "."+EventHash(r.OriginalID))
}

// TaskKey tells one task of an event from another: a grouped event's by its group (whose
// key includes the Hook entry), any other task by its message id (one per Hook entry).
func (r Record) TaskKey() string {
	if r.Group != "" {
		return r.Hook + "\n" + r.Group
	}
	return r.Hook + "\n" + r.Agent + "\n" + r.MessageID
}

// Group records r about a task of the group key.
func (rc *Recorder) Group(key string, r Record) {
	if rc == nil {
		return
	}
	rc.publish(rc.subjects.GroupOutcomes(EventHash(key)), r)
}

func (rc *Recorder) publish(subj string, r Record) {
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	if rc.js.PublishAsyncPending() >= maxPending {
		// The server has not acknowledged the last maxPending records: publishing more
		// would stall the caller. The record is dropped, and counted.
		rc.failed.Inc()
		return
	}
	b, err := json.Marshal(r)
	if err != nil {
		rc.failed.Inc()
		return
	}
	f, err := rc.js.PublishMsgAsync(&nats.Msg{Subject: subj, Data: b})
	if err != nil {
		rc.failed.Inc()
		rc.logger.Debug("outcome record not published", zap.String("subject", subj), zap.Error(err))
		return
	}
	select {
	case rc.futures <- f:
	default:
	}
}

// Run counts the records the server did not store, until ctx ends.
func (rc *Recorder) Run(ctx context.Context) {
	if rc == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case f := <-rc.futures:
			select {
			case <-f.Ok():
			case err := <-f.Err():
				rc.failed.Inc()
				rc.logger.Debug("outcome record not stored", zap.String("subject", f.Msg().Subject), zap.Error(err))
			case <-ctx.Done():
				return
			}
		}
	}
}
