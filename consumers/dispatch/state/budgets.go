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

// BudgetRecord is one agent's budget in use, shared by every replica.
type BudgetRecord struct {
	Agent string `json:"agent"`
	// Sent holds when each task of the last hour was started.
	Sent []time.Time `json:"sent,omitempty"`
	// InFlight maps each hold, "<message id> <replica>", to when it lapses (a crashed
	// replica's). Holds are per replica: two replicas racing for one task each take, and
	// return, their own.
	InFlight map[string]time.Time `json:"inFlight,omitempty"`
}

func (r *BudgetRecord) prune(now time.Time) {
	r.Sent = slices.DeleteFunc(r.Sent, func(t time.Time) bool { return now.Sub(t) >= time.Hour })
	for id, until := range r.InFlight {
		if now.After(until) {
			delete(r.InFlight, id)
		}
	}
}

// InUse returns the tasks in flight and the tasks sent in the hour before now; it does not
// change r.
func (r *BudgetRecord) InUse(now time.Time) (inFlight, lastHour int) {
	for _, until := range r.InFlight {
		if !now.After(until) {
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
// until, if the budget allows it.
func (s *Store) TakeBudget(ctx context.Context, b Budget, agent, messageID, holder string, until time.Time) (bool, error) {
	took := false
	hold := messageID + " " + holder
	err := s.updateBudget(ctx, agent, func(r *BudgetRecord) bool {
		now := s.now()
		if _, ok := r.InFlight[hold]; ok {
			took = true
			return false
		}
		r.prune(now)
		if !r.Free(b, now) {
			return false
		}
		if r.InFlight == nil {
			r.InFlight = map[string]time.Time{}
		}
		r.InFlight[hold] = until
		r.Sent = append(r.Sent, now)
		took = true
		return true
	})
	return took, err
}

// ReturnBudget ends holder's hold for messageID on the agent's budget. refund also gives
// back its share of the hourly budget: the task was not sent (a failed call, a breaker,
// shutdown, another replica sending it).
func (s *Store) ReturnBudget(ctx context.Context, agent, messageID, holder string, refund bool) error {
	hold := messageID + " " + holder
	return s.updateBudget(ctx, agent, func(r *BudgetRecord) bool {
		if _, ok := r.InFlight[hold]; !ok {
			return false
		}
		delete(r.InFlight, hold)
		if refund && len(r.Sent) > 0 {
			// The newest stamp goes: which one does not matter for the count, and the
			// newest frees the slot for the longest.
			r.Sent = r.Sent[:len(r.Sent)-1]
		}
		return true
	})
}

// Budgets lists every agent's budget record.
func (s *Store) Budgets(ctx context.Context) ([]BudgetRecord, error) {
	records, err := list[BudgetRecord](ctx, s, budgets, "*")
	return inKeyOrder(records), err
}
