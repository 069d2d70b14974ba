// What a replay's dry run predicts for each event: the tasks it would make now and what
// would become of each, from the current mappings, hooks, suppression windows and budgets.

package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/khook/khook/consumers/dispatch"
	"github.com/khook/khook/consumers/dispatch/state"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/subject"
)

// predictor predicts as the dispatcher decides: a grouped hook's event joins its group, a
// suppression window held by another task suppresses it, an agent with a budget queues it,
// and anything else is sent. Events of the replay itself take windows too: the first of
// several events on one resource would be sent, and the rest suppressed by it.
type predictor struct {
	subjects subject.Builder
	rules    *mapping.Rules
	hooks    *hook.Index
	through  string
	ignore   bool
	dispatch dispatch.Config
	ttl      time.Duration
	// state is the dispatch bucket, for the windows held now; nil when it cannot be read.
	state *state.Store
	// claimed are the windows this replay's own earlier events would take.
	claimed map[string]claimedHere
	// groups are the groups open now, read once, for the events they counted already.
	groups map[string]state.GroupRecord
}

// claimedHere is a window an earlier event of the replay would take.
type claimedHere struct {
	seq   uint64
	until time.Time
}

func (p *predictor) predict(ctx context.Context, m ops.Msg) ops.Prediction {
	var ev mapping.Event
	if p.through == ops.ThroughMapper {
		var ok bool
		if ev, ok = mapRaw(p.subjects, p.rules, m); !ok {
			return ops.Prediction{Outcome: ops.PredictUnmapped,
				Reason: "no enabled mapping rule: dropped or dead-lettered per the unmapped policy"}
		}
	} else {
		var err error
		if ev, err = mapping.DecodeEvent(m.Data); err != nil {
			return ops.Prediction{Outcome: ops.PredictInvalid, Reason: "not a normalized event: " + err.Error()}
		}
	}
	out := ops.Prediction{EventID: ev.ID, Type: ev.Type, Namespace: ev.Namespace, Resource: ev.Resource.Name,
		Severity: ev.Severity, Outcome: ops.PredictTasks}
	matches := p.hooks.Match(&ev)
	if len(matches) == 0 {
		out.Outcome, out.Reason = ops.PredictUnmatched, "no Hook entry matches its type, namespace and severity"
		return out
	}
	now := time.Now()
	for _, mt := range matches {
		t := hook.Identify(mt, &ev)
		pt := ops.PredictedTask{Hook: mt.Hook.Key(), Agent: mt.Agent.Key(), Outcome: ops.TaskSend}
		_, budgeted := state.BudgetFor(p.dispatch.Budgets, pt.Agent)
		g, grouped := mt.Hook.Grouping()
		switch {
		case grouped && !p.ignore:
			pt.Outcome, pt.Group = ops.TaskGrouped, hook.GroupKey(mt.StableEntry(), g.Labels(&ev))
			if rec, ok := p.groups[pt.Group]; ok && rec.Counted.Contains(p.rawSeq(m)) {
				// The group counted the original: its copy would add nothing.
				pt.Outcome = ops.TaskCounted
			}
		case !p.ignore:
			window := min(mt.Hook.Window(p.dispatch.SuppressionWindow), p.ttl)
			if c, ok := p.claimed[t.SuppressionKey]; ok && now.Before(c.until) {
				pt.Outcome, pt.Until = ops.TaskSuppressed, c.until.UTC()
				pt.SuppressedBy = fmt.Sprintf("the task of seq %d of this replay", c.seq)
				break
			}
			if p.state != nil {
				if c, held, err := p.state.Holder(ctx, t.SuppressionKey, window); err == nil && held && now.Before(c.Until) {
					pt.Outcome, pt.Until, pt.SuppressedBy = ops.TaskSuppressed, c.Until.UTC(), c.Holder
					break
				}
			}
			p.claimed[t.SuppressionKey] = claimedHere{seq: m.Seq, until: now.Add(window)}
		}
		if pt.Outcome == ops.TaskSend && budgeted {
			pt.Outcome = ops.TaskQueued
		}
		out.Tasks = append(out.Tasks, pt)
	}
	return out
}

// rawSeq is the raw-stream sequence m was mapped from, by which a group counts an event.
func (p *predictor) rawSeq(m ops.Msg) uint64 {
	if p.through == ops.ThroughMapper {
		return m.Seq
	}
	seq, _ := strconv.ParseUint(m.Header.Get(streams.HeaderRawSeq), 10, 64)
	return seq
}

// predictionLine is a prediction in a line of text.
func predictionLine(p ops.Prediction, ignore bool) string {
	head := fmt.Sprintf("seq %d %s", p.Seq, p.Subject)
	if p.Outcome != ops.PredictTasks {
		if p.Type != "" {
			head += fmt.Sprintf(": %s in %q (%s)", p.Type, p.Namespace, p.Severity)
		}
		return fmt.Sprintf("%s: %s, %s", head, p.Outcome, p.Reason)
	}
	var tasks []string
	for _, t := range p.Tasks {
		s := fmt.Sprintf("hook %s -> agent %s: ", t.Hook, t.Agent)
		switch t.Outcome {
		case ops.TaskSend:
			s += "would be sent"
		case ops.TaskQueued:
			s += "would wait for the agent's budget, then be sent"
		case ops.TaskGrouped:
			s += "would join group " + t.Group
		case ops.TaskCounted:
			s += "group " + t.Group + " counted it already: it would add nothing, and no agent would hear of it"
		case ops.TaskSuppressed:
			s += fmt.Sprintf("suppressed by %s until %s", t.SuppressedBy, t.Until.Format(time.RFC3339))
			if !ignore {
				s += " (--ignore-suppression would send it)"
			}
		}
		tasks = append(tasks, s)
	}
	return fmt.Sprintf("%s: %s in %q (%s): %s", head, p.Type, p.Namespace, p.Severity, strings.Join(tasks, "; "))
}

// predictionSummary counts a dry run's predicted tasks by outcome, and the events that
// would make none.
type predictionSummary struct {
	Send       int `json:"send"`
	Suppressed int `json:"suppressed"`
	Grouped    int `json:"grouped"`
	Counted    int `json:"counted"`
	Queued     int `json:"queued"`
	Unmatched  int `json:"unmatched"`
	Unmapped   int `json:"unmapped"`
	Invalid    int `json:"invalid"`
}

// add counts p.
func (s *predictionSummary) add(p ops.Prediction) {
	switch p.Outcome {
	case ops.PredictUnmatched:
		s.Unmatched++
	case ops.PredictUnmapped:
		s.Unmapped++
	case ops.PredictInvalid:
		s.Invalid++
	}
	for _, t := range p.Tasks {
		switch t.Outcome {
		case ops.TaskSend:
			s.Send++
		case ops.TaskSuppressed:
			s.Suppressed++
		case ops.TaskGrouped:
			s.Grouped++
		case ops.TaskCounted:
			s.Counted++
		case ops.TaskQueued:
			s.Queued++
		}
	}
}

// String is the summary in words, for the dry run's last line.
func (s *predictionSummary) String() string {
	return fmt.Sprintf("tasks that would be sent %d, suppressed %d, grouped %d, already counted by their group %d, "+
		"queued for a budget %d; events without a task: %d unmatched, %d unmapped, %d invalid", s.Send, s.Suppressed,
		s.Grouped, s.Counted, s.Queued, s.Unmatched, s.Unmapped, s.Invalid)
}
