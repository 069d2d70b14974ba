package ops

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/subject"
)

// ReplayBucket holds the progress of every replay, so an interrupted one can resume.
const ReplayBucket = "KHOOK_REPLAY"

// Where replayed events re-enter the pipeline.
const (
	ThroughMapper     = "mapper"     // raw events, re-mapped with today's mappings
	ThroughDispatcher = "dispatcher" // normalized events, re-dispatched to today's hooks
)

// Selection is what a replay takes from a stream.
type Selection struct {
	Through           string
	Since, Until      time.Time
	FromSeq, ToSeq    uint64
	Source, Type      string
	Namespace         string
	IgnoreSuppression bool
}

// Replay is one replay's plan and progress, stored in ReplayBucket under its ID.
type Replay struct {
	ID                string    `json:"id"`
	Through           string    `json:"through"`
	Stream            string    `json:"stream"`
	Subject           string    `json:"subject"`
	Source            string    `json:"source,omitempty"`
	Namespace         string    `json:"namespace,omitempty"`
	Since             time.Time `json:"since,omitzero"`
	Until             time.Time `json:"until,omitzero"`
	FromSeq           uint64    `json:"fromSeq,omitempty"`
	EndSeq            uint64    `json:"endSeq"`
	IgnoreSuppression bool      `json:"ignoreSuppression,omitempty"`
	// NextSeq is where the replay continues: every selected message before it was sent.
	NextSeq uint64 `json:"nextSeq"`
	// Total is how many messages the range held when the replay was planned, for progress.
	Total   int `json:"total"`
	Seen    int `json:"seen"`
	Sent    int `json:"sent"`
	Skipped int `json:"skipped"`
	// Checked counts the events a dry run looked at instead of sending.
	Checked int `json:"checked,omitempty"`
	// Undecodable counts skipped messages whose envelope could not be read (they were
	// dead-lettered when first handled).
	Undecodable int       `json:"undecodable,omitempty"`
	Started     time.Time `json:"started"`
	Updated     time.Time `json:"updated,omitzero"`
	Done        bool      `json:"done"`
}

// Replayer replays retained events into a stage.
type Replayer struct {
	JS   jetstream.JetStream
	Topo streams.Config
	// Namespace returns an event's namespace for Selection.Namespace; the CLI maps raw
	// events with the current mappings to find it. Nil: the namespace filter never matches.
	Namespace func(Msg) string
	// Predict says, for a dry run, what the event would cause now: its tasks and what would
	// become of each (sent, suppressed until when, grouped, queued for a budget).
	Predict func(context.Context, Msg) Prediction
	// Rate limits sends to this many events per second; 0 is unlimited.
	Rate float64
	// Progress is called after every batch of sends and once at the end.
	Progress func(r *Replay, final bool)
	// DryRun describes each selected event instead of sending it, and stores nothing.
	DryRun bool
	// SaveEvery is how many sends go between progress records (100 by default). A replay
	// killed without warning resends at most this many on resume, and JetStream drops those
	// as duplicates within the stream's duplicate window.
	SaveEvery int
	// OnPredict receives the dry run's predictions, one per selected event.
	OnPredict func(Prediction)
}

// Prediction is what a dry run says one event would do if it were replayed now. Field names
// are stable: they are `khook replay --dry-run -o json`.
type Prediction struct {
	Seq     uint64 `json:"seq"`
	Subject string `json:"subject"`
	EventID string `json:"eventId,omitempty"`
	// Type, Namespace, Resource and Severity are the normalized event's, as the mapping
	// makes it today (through the mapper) or as stored (through the dispatcher).
	Type      string `json:"type,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Resource  string `json:"resource,omitempty"`
	Severity  string `json:"severity,omitempty"`
	// Outcome is the event's: tasks (Tasks says what each would do), unmapped, unmatched or
	// invalid; Reason says why there would be no task.
	Outcome string          `json:"outcome"`
	Reason  string          `json:"reason,omitempty"`
	Tasks   []PredictedTask `json:"tasks,omitempty"`
}

// What a dry run predicts.
const (
	PredictTasks     = "tasks"
	PredictUnmapped  = "unmapped"
	PredictUnmatched = "unmatched"
	PredictInvalid   = "invalid"

	TaskSend       = "send"       // the agent would be called
	TaskSuppressed = "suppressed" // an earlier task's window holds it, until Until
	TaskGrouped    = "grouped"    // gathered into Group; the group's task is sent later
	TaskCounted    = "counted"    // Group counted the original already: the copy adds nothing
	TaskQueued     = "queued"     // waits for the agent's budget, then sent
)

// PredictedTask is one task a replayed event would make.
type PredictedTask struct {
	Hook    string `json:"hook"`
	Agent   string `json:"agent"`
	Outcome string `json:"outcome"`
	// SuppressedBy is the task holding the window (an earlier event of this replay when
	// the replay would suppress itself), and Until when the window ends.
	SuppressedBy string    `json:"suppressedBy,omitempty"`
	Until        time.Time `json:"until,omitzero"`
	Group        string    `json:"group,omitempty"`
}

// Plan creates a replay of sel and stores it (not for a dry run).
func (rp *Replayer) Plan(ctx context.Context, sel Selection) (*Replay, error) {
	r := &Replay{ID: newReplayID(), Through: sel.Through, Source: sel.Source, Namespace: sel.Namespace,
		Since: sel.Since, Until: sel.Until, FromSeq: sel.FromSeq, IgnoreSuppression: sel.IgnoreSuppression,
		Started: time.Now().UTC()}
	// Source and type become subject tokens of the filter.
	for what, v := range map[string]string{"source": sel.Source, "type": sel.Type} {
		if v != "" {
			if err := subject.CheckToken(what, v); err != nil {
				return nil, err
			}
		}
	}
	subjects := rp.Topo.Subjects()
	switch sel.Through {
	case ThroughMapper:
		r.Stream = rp.Topo.Raw.Name
		r.Subject = subjects.Prefix + ".raw." + orAny(sel.Source) + "." + orAny(sel.Type)
		r.Source = "" // the subject filters it
	case ThroughDispatcher:
		r.Stream = rp.Topo.Events.Name
		r.Subject = subjects.Prefix + ".events." + orAny(sel.Type)
	default:
		return nil, fmt.Errorf("--through: want mapper or dispatcher, got %q", sel.Through)
	}
	st, err := rp.JS.Stream(ctx, r.Stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", r.Stream, err)
	}
	r.EndSeq = st.CachedInfo().State.LastSeq
	if sel.ToSeq > 0 && sel.ToSeq < r.EndSeq {
		r.EndSeq = sel.ToSeq
	}
	r.Total, err = count(ctx, rp.JS, Range{Stream: r.Stream, Subject: r.Subject, FromSeq: r.FromSeq, Since: r.Since})
	if err != nil {
		return nil, err
	}
	if !rp.DryRun {
		if err := rp.save(ctx, r); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Load returns a stored replay, to resume it.
func (rp *Replayer) Load(ctx context.Context, id string) (*Replay, error) {
	kv, err := rp.bucket(ctx)
	if err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("no replay %q (replays are kept for 7 days)", id)
	}
	if err != nil {
		return nil, err
	}
	var r Replay
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("replay %s: %w", id, err)
	}
	return &r, nil
}

// Run sends the replay's remaining events, from NextSeq. It returns when the range is done,
// or ctx is cancelled (an interrupt): then the progress is stored, so that Run on the
// loaded replay continues without sending anything twice.
func (rp *Replayer) Run(ctx context.Context, r *Replay) error {
	if r.Done {
		return nil
	}
	var lim *rate.Limiter
	if rp.Rate > 0 {
		lim = rate.NewLimiter(rate.Limit(rp.Rate), 1)
	}
	every := rp.SaveEvery
	if every <= 0 {
		every = 100
	}
	rng := Range{Stream: r.Stream, Subject: r.Subject, FromSeq: r.NextSeq, ToSeq: r.EndSeq, Until: r.Until}
	if r.NextSeq == 0 {
		rng.FromSeq, rng.Since = r.FromSeq, r.Since
	}
	sinceSave := 0
	_, err := Scan(ctx, rp.JS, rng, func(m Msg) error {
		if err := ctx.Err(); err != nil {
			return ErrStop
		}
		r.Seen++
		if !rp.selected(r, m) {
			r.Skipped++
			r.NextSeq = m.Seq + 1
			return nil
		}
		if rp.DryRun {
			if rp.OnPredict != nil && rp.Predict != nil {
				p := rp.Predict(ctx, m)
				p.Seq, p.Subject = m.Seq, m.Subject
				rp.OnPredict(p)
			}
			r.Checked++
			r.NextSeq = m.Seq + 1
			return nil
		}
		if lim != nil {
			if err := lim.Wait(ctx); err != nil {
				return ErrStop
			}
		}
		out, err := rp.copyOf(r, m)
		if err != nil {
			// An envelope that cannot be decoded was dead-lettered the first time too; it
			// is counted, and reported, never skipped silently.
			r.Skipped++
			r.Undecodable++
			r.NextSeq = m.Seq + 1
			return nil //nolint:nilerr // counted and reported above: the replay goes on
		}
		// The publish is not tied to ctx: an interrupt lets the current send finish, so
		// the stored progress is exact.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		_, err = rp.JS.PublishMsg(pctx, out)
		cancel()
		if err != nil {
			return fmt.Errorf("replay seq %d: %w", m.Seq, err)
		}
		r.Sent++
		r.NextSeq = m.Seq + 1
		if sinceSave++; sinceSave >= every {
			sinceSave = 0
			// Like the publish, the progress record is written even after an interrupt,
			// so that it matches what was sent.
			if err := rp.save(context.WithoutCancel(ctx), r); err != nil {
				return err
			}
			if rp.Progress != nil {
				rp.Progress(r, false)
			}
		}
		return nil
	})
	// An interrupt can end the scan while it waits for the next message, which Scan
	// reports as the context's error; that is the operator's Ctrl-C, not a failure, and
	// the stored progress says where to resume.
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		err = nil
	}
	if err == nil && ctx.Err() == nil {
		r.Done = true
	}
	if !rp.DryRun {
		if serr := rp.save(context.WithoutCancel(ctx), r); serr != nil && err == nil {
			err = serr
		}
	}
	if rp.Progress != nil {
		rp.Progress(r, true)
	}
	return err
}

// selected applies the filters a subject cannot express. Copies made by earlier replays are
// never replayed again: the originals are.
func (rp *Replayer) selected(r *Replay, m Msg) bool {
	if m.Header.Get(streams.HeaderReplayID) != "" {
		return false
	}
	if r.Source != "" || (r.Through == ThroughDispatcher && r.Namespace != "") {
		ev, err := mapping.DecodeEvent(m.Data)
		if err != nil || (r.Source != "" && ev.Source != r.Source) {
			return false
		}
		if r.Namespace != "" {
			return ev.Namespace == r.Namespace
		}
		return true
	}
	if r.Namespace != "" {
		return rp.Namespace != nil && rp.Namespace(m) == r.Namespace
	}
	return true
}

// copyOf is m with a new event key (the original's plus the replay's), so the stream's
// duplicate window and the dispatcher's delivery records treat it as a new event, while a
// resumed replay sending it again produces the same key and is dropped as a duplicate. The
// key is bounded (cloudevent.DeriveKey), so no event is too long to replay.
func (rp *Replayer) copyOf(r *Replay, m Msg) (*nats.Msg, error) {
	var original, id string
	var body []byte
	if r.Through == ThroughDispatcher {
		ev, err := mapping.DecodeEvent(m.Data)
		if err != nil {
			return nil, err
		}
		original = ev.ID
		ev.ID = cloudevent.DeriveKey(original, "/replay-"+r.ID)
		if body, err = ev.Encode(); err != nil {
			return nil, err
		}
		id = ev.ID
	} else {
		ce, err := cloudevent.Decode(m.Data)
		if err != nil {
			return nil, err
		}
		original = mapping.RawOf(rp.Topo.Subjects().SourceOf(m.Subject), m.Header.Get(jetstream.MsgIDHeader), ce).ID
		ce.ID = cloudevent.DeriveKey(original, "/replay-"+r.ID)
		if body, err = cloudevent.Encode(ce); err != nil {
			return nil, err
		}
		id = ce.ID
	}
	out := nats.NewMsg(m.Subject)
	out.Data = body
	for k, v := range m.Header {
		if k != jetstream.MsgIDHeader {
			out.Header[k] = v
		}
	}
	out.Header.Set(jetstream.MsgIDHeader, id)
	out.Header.Set(streams.HeaderReplayID, r.ID)
	out.Header.Set(streams.HeaderOriginalID, original)
	out.Header.Set(streams.HeaderOriginalSeq, strconv.FormatUint(m.Seq, 10))
	if r.IgnoreSuppression {
		out.Header.Set(streams.HeaderIgnoreSuppression, "true")
	}
	return out, nil
}

func (rp *Replayer) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := rp.JS.KeyValue(ctx, ReplayBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = rp.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: ReplayBucket, Description: "khook replay progress", TTL: 7 * 24 * time.Hour,
			Replicas: rp.Topo.Events.Replicas, Storage: jetstream.FileStorage,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("replay bucket: %w", err)
	}
	return kv, nil
}

func (rp *Replayer) save(ctx context.Context, r *Replay) error {
	kv, err := rp.bucket(ctx)
	if err != nil {
		return err
	}
	r.Updated = time.Now().UTC()
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, r.ID, b); err != nil {
		return fmt.Errorf("replay %s: storing progress: %w", r.ID, err)
	}
	return nil
}

// count is how many messages r selects now, from the consumer JetStream would create.
func count(ctx context.Context, js jetstream.JetStream, r Range) (int, error) {
	r.HeadersOnly = true
	cons, err := js.OrderedConsumer(ctx, r.Stream, r.consumer())
	if err != nil {
		return 0, err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return 0, err
	}
	return int(info.NumPending), nil
}

func orAny(token string) string {
	if token == "" {
		return "*"
	}
	return token
}

// newReplayID is short enough to type after --resume and sorts by start time.
func newReplayID() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}
