package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/mapping"
)

// The group and budget records live in the dispatch bucket beside the claims:
//
//	group.<key>    one group's gathered events, its timer (Due) and, while one replica sends
//	               its task, that replica's lease
//	budget.<hash>  one agent's budget in use: the tasks sent in the last hour, and those in
//	               flight
//
// Both are changed only by compare-and-set on their revision, so every replica may add to a
// group or take a budget slot at once, and exactly one wins each lease.
const (
	groupPrefix  = "group."
	budgetPrefix = "budget."
	// maxRecent is how many event ids a group remembers, so that an event redelivered after
	// a lost acknowledgement is counted once.
	maxRecent = 256
	// casTries bounds one compare-and-set loop; past it the event is redelivered.
	casTries = 50
)

// GroupRecord is one group's state, shared by every replica. Pending counts the events
// since the group's last task; Events lists them, one entry per distinct event.
type GroupRecord struct {
	Entry     string            `json:"entry"`
	Hook      string            `json:"hook"`
	Agent     string            `json:"agent"`
	Labels    map[string]string `json:"labels,omitempty"`
	Severity  string            `json:"severity"`
	Wait      time.Duration     `json:"wait"`
	Interval  time.Duration     `json:"interval"`
	MaxEvents int               `json:"maxEvents"`
	FirstSeen time.Time         `json:"firstSeen"`
	LastSeen  time.Time         `json:"lastSeen"`
	// Due is when the pending events are sent: groupWait after the first of them, and never
	// before groupInterval has passed since the last task.
	Due      time.Time         `json:"due"`
	Notified time.Time         `json:"notified,omitzero"`
	Sent     int               `json:"sent"`
	Total    int               `json:"total"`
	Pending  int               `json:"pending"`
	Omitted  int               `json:"omitted,omitempty"`
	Events   []hook.GroupEvent `json:"events,omitempty"`
	Recent   []string          `json:"recent,omitempty"`
	Lease    *GroupLease       `json:"lease,omitempty"`
	Attempts int               `json:"attempts,omitempty"`
	// Single is an ungrouped task waiting for its agent's budget: its one event is sent as
	// khook sends any event, with the event's own ids; Task is its message id.
	Single bool   `json:"single,omitempty"`
	Task   string `json:"task,omitempty"`
}

// GroupLease is held by the replica sending a group's task, until it finishes or Until
// passes (a crashed replica). It records what the task covers, so that the events that
// arrive meanwhile stay pending for the next task.
type GroupLease struct {
	Holder  string         `json:"holder"`
	Until   time.Time      `json:"until"`
	Pending int            `json:"pending"`
	Omitted int            `json:"omitted"`
	Counts  map[string]int `json:"counts"`
}

// Open reports whether the group holds events waiting for their task, or a task being sent.
func (r *GroupRecord) Open() bool { return r.Pending > 0 || r.Lease != nil }

// Waiting reports whether the group's task is due and no replica is sending it: waiting for
// a worker or, mostly, for its agent's budget.
func (r *GroupRecord) Waiting(now time.Time) bool {
	return r.Pending > 0 && !now.Before(r.Due) && (r.Lease == nil || now.After(r.Lease.Until))
}

// eventKey tells a group's events apart: one entry per event type and resource.
func eventKey(ev *mapping.Event) string {
	return hook.Hash(ev.Type, ev.Namespace, ev.Resource.Kind, ev.Resource.Name)
}

// add folds ev into the group; false means the event was counted before (a redelivery).
// index maps the event keys of r.Events to their positions; add keeps it current.
func (r *GroupRecord) add(ev *mapping.Event, now time.Time, index map[string]int) bool {
	if slices.Contains(r.Recent, ev.ID) {
		return false
	}
	r.Recent = append(r.Recent, ev.ID)
	if len(r.Recent) > maxRecent {
		r.Recent = slices.Delete(r.Recent, 0, len(r.Recent)-maxRecent)
	}
	if r.Pending == 0 {
		r.FirstSeen = now
		r.Due = now.Add(r.Wait)
		if !r.Notified.IsZero() && r.Due.Before(r.Notified.Add(r.Interval)) {
			r.Due = r.Notified.Add(r.Interval)
		}
	}
	r.Pending++
	r.Total++
	r.LastSeen = now
	if severityRank(ev.Severity) > severityRank(r.Severity) {
		r.Severity = ev.Severity
	}
	e := *ev
	if !r.Single {
		// A group lists events by their fields; their payloads would make the record, which
		// is rewritten on every event, grow by kilobytes per resource.
		e.Data = nil
	}
	k := eventKey(ev)
	if i, ok := index[k]; ok {
		r.Events[i].Event = e
		r.Events[i].Count++
		return true
	}
	if len(r.Events) < r.MaxEvents {
		index[k] = len(r.Events)
		r.Events = append(r.Events, hook.GroupEvent{Event: e, Count: 1, FirstSeen: now})
	} else {
		r.Omitted++
	}
	return true
}

// lease marks the group as being sent by holder until until, covering what is pending now.
func (r *GroupRecord) lease(holder string, until time.Time) {
	counts := make(map[string]int, len(r.Events))
	for _, e := range r.Events {
		counts[eventKey(&e.Event)] = e.Count
	}
	r.Lease = &GroupLease{Holder: holder, Until: until, Pending: r.Pending, Omitted: r.Omitted, Counts: counts}
}

// sent removes what the lease covered: the events that arrived while the task was sent stay
// pending, due a groupInterval after this task.
func (r *GroupRecord) sent(now time.Time) {
	l := r.Lease
	r.Pending = max(0, r.Pending-l.Pending)
	r.Omitted = max(0, r.Omitted-l.Omitted)
	kept := r.Events[:0]
	for _, e := range r.Events {
		e.Count -= l.Counts[eventKey(&e.Event)]
		if e.Count > 0 {
			kept = append(kept, e)
		}
	}
	r.Events = kept
	r.Sent++
	r.Notified = now
	r.Lease = nil
	r.Attempts = 0
	if r.Pending > 0 {
		r.FirstSeen = now
		r.Due = now.Add(r.Interval)
	}
}

// Group returns what the task's prompt sees as .Group.
func (r *GroupRecord) Group(key string) hook.Group {
	return hook.Group{Key: key, Labels: r.Labels, Count: r.Pending, Total: r.Total, Omitted: r.Omitted,
		Resources: len(r.Events), FirstSeen: r.FirstSeen, LastSeen: r.LastSeen, Sent: r.Sent}
}

func severityRank(s string) int { return slices.Index(mapping.Severities, s) }

// AddToGroup folds events into the group key, opening it from init when it is new, in one
// write. It returns whether the group was opened by this call.
func (s *State) AddToGroup(ctx context.Context, key string, init GroupRecord, events ...*mapping.Event) (opened bool, err error) {
	err = s.updateGroup(ctx, key, true, func(r *GroupRecord, exists bool) (bool, error) {
		if !exists {
			*r = init
		}
		opened = !exists
		// The index is built once per write: a storm's write folds many events into a
		// group of up to maxEventsPerTask entries.
		index := make(map[string]int, len(r.Events))
		for i := range r.Events {
			index[eventKey(&r.Events[i].Event)] = i
		}
		changed := false
		for _, ev := range events {
			changed = r.add(ev, s.now(), index) || changed
		}
		return changed, nil
	})
	return opened, err
}

// errDelete ends an update by deleting the record.
var errDelete = errors.New("delete")

// updateGroup applies change to the group's record by compare-and-set (see
// compareAndSet). cached allows starting from this replica's last write of the record: only
// for a change that always writes when it changes anything, so that a stale start fails the
// compare-and-set instead of deciding on old state.
func (s *State) updateGroup(ctx context.Context, key string, cached bool, change func(r *GroupRecord, exists bool) (bool, error)) error {
	// Any update takes the cached copy out, so that none is used after another write.
	last := func() (GroupRecord, uint64, bool) {
		r, rev, ok := s.groups.take(key)
		return r, rev, ok && cached
	}
	r, rev, err := compareAndSet(ctx, s.kv, groupPrefix+key, GroupRecord{}, last, change)
	if err == nil && rev != 0 {
		s.groups.put(key, r, rev)
	}
	return err
}

// compareAndSet applies change to the JSON record at key and writes the result by
// compare-and-set, trying again on the record another replica wrote first. A missing record
// starts as empty. change returns false to write nothing, or errDelete to delete the record.
// start, when it returns true, gives the record and revision to try first instead of reading
// the bucket; a stale one fails the compare-and-set, and the next try reads. It returns the
// record written and its revision, zero when nothing was written.
func compareAndSet[T any](ctx context.Context, kv jetstream.KeyValue, key string, empty T,
	start func() (T, uint64, bool), change func(r *T, exists bool) (bool, error)) (T, uint64, error) {
	for try := range casTries {
		r, rev, ok := empty, uint64(0), false
		if try == 0 && start != nil {
			r, rev, ok = start()
		}
		if !ok {
			r, rev = empty, 0
			e, err := kv.Get(ctx, key)
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound):
			case err != nil:
				return empty, 0, err
			default:
				if err := json.Unmarshal(e.Value(), &r); err != nil {
					return empty, 0, fmt.Errorf("%s: %w", key, err)
				}
				rev = e.Revision()
			}
		}
		write, err := change(&r, rev != 0)
		var next uint64
		switch {
		case errors.Is(err, errDelete):
			err = kv.Delete(ctx, key, jetstream.LastRevision(rev))
		case err != nil || !write:
			return empty, 0, err
		default:
			var b []byte
			if b, err = json.Marshal(&r); err != nil {
				return empty, 0, err
			}
			if rev == 0 {
				next, err = kv.Create(ctx, key, b)
			} else {
				next, err = kv.Update(ctx, key, b, rev)
			}
		}
		if err == nil {
			return r, next, nil
		}
		if !isConflict(err) {
			return empty, 0, err
		}
		// Another replica wrote first: read its version and apply the change to it.
		time.Sleep(time.Duration(rand.IntN(5)) * time.Millisecond) //nolint:gosec // jitter, not security
	}
	return empty, 0, fmt.Errorf("%s: too many concurrent updates", key)
}

// groupCache holds the last record this replica wrote per group. An entry is taken out for
// one update, so two updates never share (and mutate) one record.
type groupCache struct {
	mu      sync.Mutex
	records map[string]cachedGroup
}

type cachedGroup struct {
	rec GroupRecord
	rev uint64
}

// maxCachedGroups bounds the cache; past it, it starts over.
const maxCachedGroups = 1024

func (c *groupCache) take(key string) (GroupRecord, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g, ok := c.records[key]
	delete(c.records, key)
	return g.rec, g.rev, ok
}

func (c *groupCache) put(key string, r GroupRecord, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.records == nil || len(c.records) >= maxCachedGroups {
		c.records = map[string]cachedGroup{}
	}
	c.records[key] = cachedGroup{rec: r, rev: rev}
}

// isConflict is a compare-and-set that lost to another writer.
func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

// Groups lists every group record by its key.
func (s *State) Groups(ctx context.Context) (map[string]GroupRecord, error) {
	records, err := listRecords[GroupRecord](ctx, s.kv, groupPrefix+"*")
	out := make(map[string]GroupRecord, len(records))
	for key, r := range records {
		out[strings.TrimPrefix(key, groupPrefix)] = r
	}
	return out, err
}

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

func budgetKey(agent string) string { return budgetPrefix + hook.Hash(agent) }

// updateBudget applies change to the agent's budget record by compare-and-set.
func (s *State) updateBudget(ctx context.Context, agent string, change func(r *BudgetRecord) bool) error {
	_, _, err := compareAndSet(ctx, s.kv, budgetKey(agent), BudgetRecord{Agent: agent}, nil,
		func(r *BudgetRecord, _ bool) (bool, error) { return change(r), nil })
	return err
}

// TakeBudget takes one task of the agent's budget for messageID, held by holder until
// until, if the budget allows it.
func (s *State) TakeBudget(ctx context.Context, b Budget, agent, messageID, holder string, until time.Time) (bool, error) {
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
func (s *State) ReturnBudget(ctx context.Context, agent, messageID, holder string, refund bool) error {
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
func (s *State) Budgets(ctx context.Context) ([]BudgetRecord, error) {
	records, err := listRecords[BudgetRecord](ctx, s.kv, budgetPrefix+"*")
	return inKeyOrder(records), err
}
