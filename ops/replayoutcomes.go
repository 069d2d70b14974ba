package ops

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/outcome"
)

// ReplayOutcomes is what became of a replay's copies, read from their outcome records: the
// tasks they made, by the outcome of each task's latest record, and the copies that made
// none. Field names are stable: they are part of `khook replay -o json`.
type ReplayOutcomes struct {
	Delivered  int `json:"delivered"`
	Suppressed int `json:"suppressed"`
	Grouped    int `json:"grouped"`
	// Repeats are copies their group had counted already (it is still open): they add
	// nothing to its task, and no agent hears of them.
	Repeats  int `json:"repeats"`
	Waiting  int `json:"waiting"`
	Retrying int `json:"retrying"`
	// DeadLettered counts tasks given up, and copies a stage could not handle at all.
	DeadLettered int `json:"deadLettered"`
	// Unmatched copies matched no Hook; Unmapped ones had no enabled mapping rule.
	Unmatched int `json:"unmatched"`
	Unmapped  int `json:"unmapped"`
	// Pending copies had no outcome yet when the wait ended: still queued in a stage.
	Pending int `json:"pending"`
}

// Tasks is how many tasks the copies made.
func (o ReplayOutcomes) Tasks() int {
	return o.Delivered + o.Suppressed + o.Grouped + o.Repeats + o.Waiting + o.Retrying + o.DeadLettered
}

// settled reports whether every copy has an outcome and no task is being retried.
func (o ReplayOutcomes) settled() bool { return o.Pending == 0 && o.Retrying == 0 }

// replayOutcomesPoll is how often CollectReplayOutcomes reads the new records while it waits.
const replayOutcomesPoll = time.Second

// CollectReplayOutcomes counts what became of r's copies, waiting up to wait for every copy
// to have an outcome (the stages handle them after the replay published them) and for tasks
// being retried to end. When the wait ends first, the rest are counted as pending or
// retrying. Each poll reads only the records stored since the last.
func CollectReplayOutcomes(ctx context.Context, js jetstream.JetStream, topo streams.Config, r *Replay, wait time.Duration) (ReplayOutcomes, error) {
	deadline := time.Now().Add(wait)
	t := newReplayTally(r)
	for {
		err := t.read(ctx, js, topo)
		o := t.count()
		if err != nil || o.settled() || !time.Now().Before(deadline) {
			return o, err
		}
		select {
		case <-ctx.Done():
			return o, nil
		case <-time.After(replayOutcomesPoll):
		}
	}
}

// replayTally is the latest outcome of each of a replay's tasks, and what each copy without
// a task came to, as read so far.
type replayTally struct {
	r      *Replay
	next   uint64 // the outcomes stream sequence to read from
	tasks  map[string]outcome.Record
	events map[string]outcome.Kind
}

func newReplayTally(r *Replay) *replayTally {
	return &replayTally{r: r, tasks: map[string]outcome.Record{}, events: map[string]outcome.Kind{}}
}

// read folds in the records stored since the last read.
func (t *replayTally) read(ctx context.Context, js jetstream.JetStream, topo streams.Config) error {
	rng := Range{Stream: topo.Outcomes.Name, Subject: topo.Subjects().AllOutcomes(), FromSeq: t.next}
	if t.next == 0 {
		// Records are as old as the replay at most; a second's slack covers clocks.
		rng.Since = t.r.Started.Add(-time.Second)
	}
	last, err := Scan(ctx, js, rng, func(m Msg) error {
		rec, err := outcome.Decode(m.Data)
		if err != nil || rec.ReplayID != t.r.ID || rec.Mirrored(m.Subject) {
			return nil //nolint:nilerr // a record that does not decode is not counted; the scan goes on
		}
		if rec.Hook == "" {
			t.events[rec.EventID] = rec.Outcome
			return nil
		}
		k := rec.EventID + "\n" + rec.TaskKey()
		if prev, ok := t.tasks[k]; ok && rec.Outcome == outcome.Grouped && rec.Repeat && prev.Outcome == outcome.Grouped {
			return nil
		}
		t.tasks[k] = rec
		if _, ok := t.events[rec.EventID]; !ok {
			t.events[rec.EventID] = ""
		}
		return nil
	})
	if last > 0 {
		t.next = last + 1
	}
	return err
}

func (t *replayTally) count() ReplayOutcomes {
	var o ReplayOutcomes
	for _, rec := range t.tasks {
		switch rec.Outcome {
		case outcome.Delivered:
			o.Delivered++
		case outcome.Suppressed:
			o.Suppressed++
		case outcome.Grouped:
			if rec.Repeat {
				o.Repeats++
			} else {
				o.Grouped++
			}
		case outcome.Waiting:
			o.Waiting++
		case outcome.Retrying:
			o.Retrying++
		case outcome.DeadLettered:
			o.DeadLettered++
		}
	}
	for _, k := range t.events {
		switch k {
		case outcome.Unmatched:
			o.Unmatched++
		case outcome.Unmapped, outcome.Disabled:
			o.Unmapped++
		case outcome.DeadLettered:
			o.DeadLettered++
		}
	}
	o.Pending = max(0, t.r.Sent-len(t.events))
	return o
}
