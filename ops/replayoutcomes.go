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
	Waiting    int `json:"waiting"`
	Retrying   int `json:"retrying"`
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
	return o.Delivered + o.Suppressed + o.Grouped + o.Waiting + o.Retrying + o.DeadLettered
}

// settled reports whether every copy has an outcome and no task is being retried.
func (o ReplayOutcomes) settled() bool { return o.Pending == 0 && o.Retrying == 0 }

// replayOutcomesPoll is how often CollectReplayOutcomes reads the records again while it
// waits.
const replayOutcomesPoll = 250 * time.Millisecond

// CollectReplayOutcomes counts what became of r's copies, waiting up to wait for every copy
// to have an outcome (the stages handle them after the replay published them) and for tasks
// being retried to end. When the wait ends first, the rest are counted as pending or
// retrying.
func CollectReplayOutcomes(ctx context.Context, js jetstream.JetStream, topo streams.Config, r *Replay, wait time.Duration) (ReplayOutcomes, error) {
	deadline := time.Now().Add(wait)
	for {
		o, err := replayOutcomes(ctx, js, topo, r)
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

func replayOutcomes(ctx context.Context, js jetstream.JetStream, topo streams.Config, r *Replay) (ReplayOutcomes, error) {
	type task struct{ event, hook, agent string }
	latest := map[task]outcome.Kind{}
	events := map[string]outcome.Kind{}
	// Records are as old as the replay at most; a second's slack covers clocks.
	_, err := Scan(ctx, js, Range{Stream: topo.Outcomes.Name, Subject: topo.Subjects().AllOutcomes(), Since: r.Started.Add(-time.Second)},
		func(m Msg) error {
			rec, err := outcome.Decode(m.Data)
			if err != nil || rec.ReplayID != r.ID {
				return nil
			}
			if rec.Hook == "" {
				events[rec.EventID] = rec.Outcome
				return nil
			}
			latest[task{rec.EventID, rec.Hook, rec.Agent}] = rec.Outcome
			if _, ok := events[rec.EventID]; !ok {
				events[rec.EventID] = ""
			}
			return nil
		})
	var o ReplayOutcomes
	if err != nil {
		return o, err
	}
	for _, k := range latest {
		switch k {
		case outcome.Delivered:
			o.Delivered++
		case outcome.Suppressed:
			o.Suppressed++
		case outcome.Grouped:
			o.Grouped++
		case outcome.Waiting:
			o.Waiting++
		case outcome.Retrying:
			o.Retrying++
		case outcome.DeadLettered:
			o.DeadLettered++
		}
	}
	for _, k := range events {
		switch k {
		case outcome.Unmatched:
			o.Unmatched++
		case outcome.Unmapped, outcome.Disabled:
			o.Unmapped++
		case outcome.DeadLettered:
			o.DeadLettered++
		}
	}
	o.Pending = max(0, r.Sent-len(events))
	return o, nil
}
