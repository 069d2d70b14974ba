package state

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/khook/khook/hook"
)

// Budget limits the tasks one agent gets: at most MaxConcurrentTasks at once and
// MaxTasksPerHour in any hour; zero is no limit. Agent is "namespace/name", or "namespace/*"
// for each agent of a namespace (every agent has its own count).
type Budget struct {
	Agent              string `koanf:"agent" json:"agent"`
	MaxConcurrentTasks int    `koanf:"max_concurrent_tasks" json:"maxConcurrentTasks,omitempty"`
	MaxTasksPerHour    int    `koanf:"max_tasks_per_hour" json:"maxTasksPerHour,omitempty"`
}

// BudgetFor returns the budget of agent ("namespace/name"): its own entry, else its
// namespace's.
func BudgetFor(budgets []Budget, agent string) (Budget, bool) {
	ns, _, _ := strings.Cut(agent, "/")
	var def *Budget
	for i, b := range budgets {
		if b.Agent == agent {
			return b, true
		}
		if b.Agent == ns+"/*" && def == nil {
			def = &budgets[i]
		}
	}
	if def != nil {
		return *def, true
	}
	return Budget{}, false
}

// MaxTasksPerHour is the highest hourly budget: the record keeps a start time per task of
// the last hour, and is rewritten on every start.
const MaxTasksPerHour = 10000

// BudgetRecord is one agent's budget in use, shared by every replica. It keeps only what
// the budget's limits need: a start time per task of the last hour only with an hourly
// limit, and never more of them than the limit, so its size is bounded by the budget, not
// by the rate of tasks.
type BudgetRecord struct {
	Agent string `json:"agent"`
	// Sent holds when each task of the last hour was started, with an hourly limit.
	Sent []time.Time `json:"sent,omitempty"`
	// Holds maps each hold, "<message id> <replica>", to when it started and when it lapses
	// (a crashed replica's). Holds are per replica: two replicas racing for one task each
	// take, and return, their own.
	Holds map[string]Hold `json:"holds,omitempty"`
}

// Hold is one task's hold on a budget.
type Hold struct {
	Started time.Time `json:"started"`
	Until   time.Time `json:"until"`
}

func (r *BudgetRecord) prune(now time.Time) {
	r.Sent = slices.DeleteFunc(r.Sent, func(t time.Time) bool { return now.Sub(t) >= time.Hour })
	for id, h := range r.Holds {
		if now.After(h.Until) {
			delete(r.Holds, id)
		}
	}
}

// InUse returns the tasks in flight and the tasks sent in the hour before now; it does not
// change r.
func (r *BudgetRecord) InUse(now time.Time) (inFlight, lastHour int) {
	for _, h := range r.Holds {
		if !now.After(h.Until) {
			inFlight++
		}
	}
	for _, t := range r.Sent {
		if now.Sub(t) < time.Hour {
			lastHour++
		}
	}
	return inFlight, lastHour
}

// Free reports whether b allows one more task at now.
func (r *BudgetRecord) Free(b Budget, now time.Time) bool {
	inFlight, lastHour := r.InUse(now)
	return (b.MaxConcurrentTasks == 0 || inFlight < b.MaxConcurrentTasks) &&
		(b.MaxTasksPerHour == 0 || lastHour < b.MaxTasksPerHour)
}

// BudgetKey is the key (after its prefix) of the agent's budget record.
func BudgetKey(agent string) string { return hook.Hash(agent) }

// updateBudget applies change to the agent's budget record by compare-and-set.
func (s *Store) updateBudget(ctx context.Context, agent string, change func(r *BudgetRecord) bool) error {
	_, _, err := compareAndSet(ctx, s, budgets, BudgetKey(agent), BudgetRecord{Agent: agent}, nil,
		func(r *BudgetRecord, _ bool) (bool, error) { return change(r), nil })
	return err
}

// TakeBudget takes one task of the agent's budget for messageID, held by holder until
// until, if the budget allows it. It reports true only when the record that holds the hold
// was written, or already held it: a replica that lost the compare-and-set decides again on
// the winner's record, and a write that failed took nothing.
func (s *Store) TakeBudget(ctx context.Context, b Budget, agent, messageID, holder string, until time.Time) (bool, error) {
	hold := messageID + " " + holder
	var took bool
	err := s.updateBudget(ctx, agent, func(r *BudgetRecord) bool {
		// Decided afresh on every try: the record may be another replica's newer one.
		took = false
		now := s.now()
		// A hold that lapsed is gone (prune): its slot may have gone to another task since.
		r.prune(now)
		if h, ok := r.Holds[hold]; ok {
			// This replica holds it already (a retry after its return failed): the hold is
			// renewed, so that it does not lapse under the task.
			h.Until = until
			r.Holds[hold] = h
			took = true
			return true
		}
		if !r.Free(b, now) {
			return false
		}
		if r.Holds == nil {
			r.Holds = map[string]Hold{}
		}
		r.Holds[hold] = Hold{Started: now, Until: until}
		if b.MaxTasksPerHour > 0 {
			r.Sent = append(r.Sent, now)
			// Only the last MaxTasksPerHour starts can decide whether another fits.
			if over := len(r.Sent) - b.MaxTasksPerHour; over > 0 {
				r.Sent = slices.Delete(r.Sent, 0, over)
			}
		} else {
			r.Sent = nil
		}
		took = true
		return true
	})
	if err != nil {
		return false, err
	}
	return took, nil
}

// ReturnBudget ends holder's hold for messageID on the agent's budget. refund also gives
// back its share of the hourly budget: the task was not sent (a failed call, a breaker,
// shutdown, another replica sending it).
func (s *Store) ReturnBudget(ctx context.Context, agent, messageID, holder string, refund bool) error {
	hold := messageID + " " + holder
	return s.updateBudget(ctx, agent, func(r *BudgetRecord) bool {
		h, ok := r.Holds[hold]
		if !ok {
			return false
		}
		delete(r.Holds, hold)
		if refund {
			// This task's own start goes: another's would free that task's slot before
			// its hour is over, and let the hour hold one task too many.
			if i := slices.IndexFunc(r.Sent, h.Started.Equal); i >= 0 {
				r.Sent = slices.Delete(r.Sent, i, i+1)
			}
		}
		return true
	})
}

// Budgets lists every agent's budget record.
func (s *Store) Budgets(ctx context.Context) ([]BudgetRecord, error) {
	records, err := list[BudgetRecord](ctx, s, budgets, "*")
	return inKeyOrder(records), err
}
