package ops

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/outcome"
)

// Description is what khook knows of one event: the raw event as a producer stored it, the
// normalized event the mapper made of it, and what became of each of its tasks. Field names
// are stable: they are `khook events describe -o json` and GET /api/v1/events/{id}.
type Description struct {
	ID string `json:"id"`
	// Raw is the raw event, when the raw stream still holds it.
	Raw *RawEvent `json:"raw,omitempty"`
	// Mapping is what the mapper did: mapped (by a rule), passthrough (no rule; the event
	// kept its own type), unmapped (no rule; dropped), disabled (its rule is disabled),
	// dead-lettered, or pending (the mapper has not handled it yet). MappingReason says why
	// an event was not mapped.
	Mapping       string `json:"mapping"`
	MappingReason string `json:"mappingReason,omitempty"`
	// Event is the normalized event, when the events stream still holds it.
	Event *EventRecord `json:"event,omitempty"`
	// Dispatch is what the dispatcher did with the event as a whole: matched (see Tasks),
	// unmatched (no Hook entry matched it), dead-lettered (it could not be read), pending
	// (the dispatcher has not handled it yet), or empty when it never reached the
	// dispatcher.
	Dispatch string `json:"dispatch,omitempty"`
	// Tasks is one entry per task the event made (per matching Hook entry), the event's
	// own first, then its replayed copies'.
	Tasks []TaskOutcome `json:"tasks"`
	// Records are every outcome record of the event and its copies, oldest first.
	Records []outcome.Record `json:"records"`
}

// RawEvent is a raw event as the raw stream holds it.
type RawEvent struct {
	Seq     uint64    `json:"seq"`
	Subject string    `json:"subject"`
	Source  string    `json:"source"`
	Type    string    `json:"type"`
	Time    time.Time `json:"time,omitzero"`
	Stored  time.Time `json:"stored"`
}

// TaskOutcome is where one task of the event stands: its latest record's outcome and time,
// and for a grouped event the group's task it went in.
type TaskOutcome struct {
	Hook      string       `json:"hook"`
	Agent     string       `json:"agent"`
	MessageID string       `json:"messageId,omitempty"`
	Outcome   outcome.Kind `json:"outcome"`
	Time      time.Time    `json:"time"`
	// EventID and ReplayID tell a replayed copy's task from the event's own.
	EventID  string `json:"eventId"`
	ReplayID string `json:"replayId,omitempty"`
	// Latest is the record Outcome and Time come from: delivered with its took and state,
	// suppressed with its holder and until, dead-lettered with its sequence and reason.
	Latest outcome.Record `json:"latest"`
	// Group is the group's task a grouped event went in.
	Group *GroupTaskOutcome `json:"group,omitempty"`
}

// GroupTaskOutcome is where a group's task stands: waiting (the group still gathers, or
// its task waits for a budget) until a record says otherwise.
type GroupTaskOutcome struct {
	Key       string       `json:"key"`
	MessageID string       `json:"messageId"`
	Outcome   outcome.Kind `json:"outcome"`
	Time      time.Time    `json:"time,omitzero"`
	// Latest is the task's latest record, absent while it waits.
	Latest *outcome.Record `json:"latest,omitempty"`
}

// ErrEventNotFound is an id or sequence khook has nothing about.
var ErrEventNotFound = errors.New("event not found")

// maxPendingScan bounds, per stage, the unhandled events Describe reads (their headers only)
// looking for an event no stage has recorded yet: the cost of describing an id khook does
// not know, which anyone with the API's token can ask for.
const maxPendingScan = 20_000

// Describe gathers what khook knows of one event, named by its id (as the webhook's 202
// returns it) or by its sequence in the events stream.
func Describe(ctx context.Context, js jetstream.JetStream, topo streams.Config, idOrSeq string) (*Description, error) {
	d := &Description{ID: idOrSeq, Tasks: []TaskOutcome{}, Records: []outcome.Record{}}
	if idOrSeq == "" {
		return nil, fmt.Errorf("%w: an event id or sequence is needed", ErrEventNotFound)
	}
	if seq, err := strconv.ParseUint(idOrSeq, 10, 64); err == nil {
		if seq == 0 {
			return nil, fmt.Errorf("%w: stream sequences start at 1", ErrEventNotFound)
		}
		rec, err := eventAt(ctx, js, topo, seq)
		if err != nil {
			return nil, err
		}
		d.ID, d.Event = rec.ID, rec
	}
	records, err := outcomesOf(ctx, js, topo, d.ID)
	if err != nil {
		return nil, err
	}
	d.Records = records
	own := slices.DeleteFunc(slices.Clone(records), func(r outcome.Record) bool { return r.EventID != d.ID })
	for _, r := range own {
		if d.Raw == nil && r.RawSeq > 0 {
			d.Raw = rawAt(ctx, js, topo, r.RawSeq)
		}
		if d.Event == nil && r.EventSeq > 0 {
			d.Event, _ = eventAt(ctx, js, topo, r.EventSeq)
		}
	}
	if d.Event == nil && d.Raw == nil && len(own) == 0 {
		// No stage recorded anything yet: the event may wait for the dispatcher, or for the
		// mapper.
		var cutE, cutR bool
		if d.Event, cutE, err = pendingEvent(ctx, js, topo, d.ID); err != nil {
			return nil, err
		}
		if d.Event == nil {
			if d.Raw, cutR, err = pendingRaw(ctx, js, topo, d.ID); err != nil {
				return nil, err
			}
			if d.Raw == nil && len(records) == 0 {
				where := "among the unhandled events"
				if cutE || cutR {
					where = fmt.Sprintf("among the first %d unhandled events of each stage (the backlog is longer: "+
						"try again as it shrinks)", maxPendingScan)
				}
				return nil, fmt.Errorf("%w: %q is not %s and no outcome is recorded for it "+
					"(outcomes are kept for %s, streams.outcomes.max_age)", ErrEventNotFound, d.ID, where, topo.Outcomes.MaxAge)
			}
			if d.Raw != nil {
				d.Mapping = "pending"
			}
		} else {
			d.Dispatch = "pending"
		}
	}
	if d.Raw == nil && d.Event != nil && d.Event.RawSeq > 0 {
		d.Raw = rawAt(ctx, js, topo, d.Event.RawSeq)
	}
	d.describeMapping(own)
	d.Tasks = tasksOf(ctx, js, topo, records)
	return d, nil
}

// describeMapping sets Mapping and Dispatch from the event's own records.
func (d *Description) describeMapping(own []outcome.Record) {
	for _, r := range own {
		switch {
		case r.Stage == outcome.StageMapper:
			d.Mapping, d.MappingReason = string(r.Outcome), r.Reason
			if r.Outcome == outcome.DeadLettered {
				d.MappingReason = cmp.Or(r.Error, r.Reason)
			}
		case r.Outcome == outcome.Unmatched:
			d.Dispatch = string(outcome.Unmatched)
		case r.Outcome == outcome.DeadLettered && r.Hook == "":
			d.Dispatch = string(outcome.DeadLettered)
		case r.Hook != "":
			d.Dispatch = "matched"
		}
	}
	if d.Mapping == "" && d.Event != nil {
		d.Mapping = cmp.Or(d.Event.Mapping, "mapped")
	}
	if d.Dispatch == "" && d.Event != nil && d.Mapping != "pending" {
		d.Dispatch = "pending"
	}
}

// tasksOf folds records into tasks: one per event (the original or a copy) and task (a
// message id, or a group), each at its latest record.
func tasksOf(ctx context.Context, js jetstream.JetStream, topo streams.Config, records []outcome.Record) []TaskOutcome {
	out := []TaskOutcome{}
	index := map[string]int{}
	grouped := map[int]outcome.Record{}
	for _, r := range records {
		if r.Hook == "" {
			continue
		}
		k := r.EventID + "\n" + r.TaskKey()
		i, ok := index[k]
		if !ok {
			i = len(out)
			index[k] = i
			out = append(out, TaskOutcome{Hook: r.Hook, Agent: r.Agent, EventID: r.EventID, ReplayID: r.ReplayID})
		}
		t := &out[i]
		if r.Outcome == outcome.Grouped && r.Repeat && t.Group != nil {
			// A redelivery of an event its group already holds: the first record says where
			// it went.
			continue
		}
		t.Outcome, t.Time, t.Latest = r.Outcome, r.Time, r
		t.MessageID = cmp.Or(r.MessageID, r.GroupTask, t.MessageID)
		if r.Outcome == outcome.Grouped && !r.Repeat {
			t.Group = &GroupTaskOutcome{Key: r.Group, MessageID: r.GroupTask, Outcome: outcome.Waiting}
			grouped[i] = r
		}
	}
	groups := map[string][]outcome.Record{}
	for i, joined := range grouped {
		g := out[i].Group
		if _, ok := groups[g.Key]; !ok {
			groups[g.Key], _ = groupOutcomes(ctx, js, topo, g.Key)
		}
		recs := groups[g.Key]
		// The task being sent when the event arrived covers it after all when that send was
		// given back and tried again after the event arrived.
		if joined.GroupSending != "" && slices.ContainsFunc(recs, func(r outcome.Record) bool {
			return r.MessageID == joined.GroupSending && r.Outcome == outcome.Retrying && !r.Time.Before(joined.Time)
		}) {
			g.MessageID = joined.GroupSending
			out[i].MessageID = g.MessageID
		}
		for _, r := range recs {
			if r.MessageID == g.MessageID {
				g.Outcome, g.Time = r.Outcome, r.Time
				g.Latest = &r
			}
		}
	}
	// The event's own tasks first, then each copy's, in the order they were first recorded.
	slices.SortStableFunc(out, func(a, b TaskOutcome) int {
		return cmp.Compare(btoi(a.ReplayID != ""), btoi(b.ReplayID != ""))
	})
	return out
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// outcomesOf reads the records of the event id, and of its replayed copies, which are kept
// under their original's id as well as their own.
func outcomesOf(ctx context.Context, js jetstream.JetStream, topo streams.Config, id string) ([]outcome.Record, error) {
	return readOutcomes(ctx, js, topo, topo.Subjects().EventOutcomes(outcome.EventHash(id)))
}

// groupOutcomes reads the records of a group's tasks.
func groupOutcomes(ctx context.Context, js jetstream.JetStream, topo streams.Config, key string) ([]outcome.Record, error) {
	return readOutcomes(ctx, js, topo, topo.Subjects().GroupOutcomes(outcome.EventHash(key)))
}

func readOutcomes(ctx context.Context, js jetstream.JetStream, topo streams.Config, subj string) ([]outcome.Record, error) {
	out := []outcome.Record{}
	_, err := Scan(ctx, js, Range{Stream: topo.Outcomes.Name, Subject: subj}, func(m Msg) error {
		if r, err := outcome.Decode(m.Data); err == nil {
			out = append(out, r)
		}
		return nil
	})
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		// Streams applied before the outcomes stream existed: nothing is recorded yet.
		return out, nil
	}
	return out, err
}

// eventAt reads the normalized event stored at seq.
func eventAt(ctx context.Context, js jetstream.JetStream, topo streams.Config, seq uint64) (*EventRecord, error) {
	st, err := js.Stream(ctx, topo.Events.Name)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", topo.Events.Name, err)
	}
	m, err := st.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("%w: no event at sequence %d of %s (expired, or not stored yet)", ErrEventNotFound, seq, topo.Events.Name)
	}
	if err != nil {
		return nil, err
	}
	rec, ok := record(Msg{Seq: m.Sequence, Subject: m.Subject, Time: m.Time, Header: m.Header, Data: m.Data})
	if !ok {
		return nil, fmt.Errorf("%w: the message at sequence %d of %s is not a normalized event", ErrEventNotFound, seq, topo.Events.Name)
	}
	return &rec, nil
}

// rawAt reads the raw event stored at seq, if the raw stream still holds it.
func rawAt(ctx context.Context, js jetstream.JetStream, topo streams.Config, seq uint64) *RawEvent {
	st, err := js.Stream(ctx, topo.Raw.Name)
	if err != nil {
		return nil
	}
	m, err := st.GetMsg(ctx, seq)
	if err != nil {
		return nil
	}
	raw := &RawEvent{Seq: seq, Subject: m.Subject, Source: topo.Subjects().SourceOf(m.Subject), Stored: m.Time}
	if ce, err := cloudevent.Decode(m.Data); err == nil {
		raw.Type, raw.Time = ce.Type, ce.Time
	}
	return raw
}

// pendingEvent looks for the event id among the normalized events the dispatcher has not
// acknowledged yet. cut says the search stopped at maxPendingScan.
func pendingEvent(ctx context.Context, js jetstream.JetStream, topo streams.Config, id string) (*EventRecord, bool, error) {
	var seq uint64
	cut, err := scanUnhandled(ctx, js, topo.Events.Name, topo.Dispatcher.Durable, func(m Msg) bool {
		if m.Header.Get(jetstream.MsgIDHeader) != id {
			return false
		}
		seq = m.Seq
		return true
	})
	if err != nil || seq == 0 {
		return nil, cut, err
	}
	rec, err := eventAt(ctx, js, topo, seq)
	return rec, false, err
}

// pendingRaw looks for the raw event id among those the mapper has not acknowledged yet, by
// their message ids (every producer sets one). cut says the search stopped at
// maxPendingScan.
func pendingRaw(ctx context.Context, js jetstream.JetStream, topo streams.Config, id string) (*RawEvent, bool, error) {
	var seq uint64
	cut, err := scanUnhandled(ctx, js, topo.Raw.Name, topo.Mapper.Durable, func(m Msg) bool {
		msgID := m.Header.Get(jetstream.MsgIDHeader)
		source := topo.Subjects().SourceOf(m.Subject)
		if msgID == "" || cloudevent.KeyOf(source, cloudevent.ClusterOf(source, msgID), msgID, "") != id {
			return false
		}
		seq = m.Seq
		return true
	})
	if err != nil || seq == 0 {
		return nil, cut, err
	}
	return rawAt(ctx, js, topo, seq), false, nil
}

// scanUnhandled calls found with the headers of stream's messages after durable's
// acknowledgement floor, up to maxPendingScan of them, until it returns true. It reports
// whether it stopped at the bound.
func scanUnhandled(ctx context.Context, js jetstream.JetStream, stream, durable string, found func(Msg) bool) (bool, error) {
	var from uint64 = 1
	if c, err := js.Consumer(ctx, stream, durable); err == nil {
		if info, err := c.Info(ctx); err == nil {
			from = info.AckFloor.Stream + 1
		}
	}
	n, cut := 0, false
	_, err := Scan(ctx, js, Range{Stream: stream, FromSeq: from, HeadersOnly: true}, func(m Msg) error {
		if found(m) {
			return ErrStop
		}
		if n++; n >= maxPendingScan {
			cut = true
			return ErrStop
		}
		return nil
	})
	return cut, err
}
