package state

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/mapping"
)

// maxRecent is how many ids a group remembers for the events whose raw-stream sequence it
// does not know (published to the events stream directly, not through the mapper).
const maxRecent = 256

// maxGroupMessage bounds each listed event's message in a group's record: the listing cuts
// it at 200 characters anyway, and a record is rewritten on every event.
const maxGroupMessage = 1024

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
	// Incarnation tells this group from an earlier one of the same key, deleted once it
	// was over: the same incident recurring is a new incarnation, whose tasks have new
	// message ids. It is set once, by the write that creates the record.
	Incarnation string    `json:"incarnation,omitempty"`
	FirstSeen   time.Time `json:"firstSeen"`
	LastSeen    time.Time `json:"lastSeen"`
	// Due is when the pending events are sent: groupWait after the first of them, and never
	// before groupInterval has passed since the last task.
	Due      time.Time `json:"due"`
	Notified time.Time `json:"notified,omitzero"`
	Sent     int       `json:"sent"`
	Total    int       `json:"total"`
	Pending  int       `json:"pending"`
	Omitted  int       `json:"omitted,omitempty"`
	// OmittedClusters are the clusters of the omitted events, so that a task across
	// clusters names them all (at most maxOmittedClusters).
	OmittedClusters []string          `json:"omittedClusters,omitempty"`
	Events          []hook.GroupEvent `json:"events,omitempty"`
	// Counted holds the raw-stream sequences of every event this incarnation counted, so
	// that each is counted once: a redelivery and a replayed copy carry the sequence of the
	// raw event they came from. Recent holds the ids of the last events that carried no
	// sequence. Forgotten counts the sequences Counted let go past its bound.
	Counted   SeqSet      `json:"counted,omitempty"`
	Recent    []string    `json:"recent,omitempty"`
	Forgotten uint64      `json:"forgotten,omitempty"`
	Lease     *GroupLease `json:"lease,omitempty"`
	Attempts  int         `json:"attempts,omitempty"`
	// Single is an ungrouped task waiting for its agent's budget: its one event is sent as
	// khook sends any event, with the ids it had when it was queued (Task, Context and its
	// suppression claim, Claim), whatever the prompt has become since.
	Single  bool   `json:"single,omitempty"`
	Task    string `json:"task,omitempty"`
	Context string `json:"context,omitempty"`
	Claim   string `json:"claim,omitempty"`
	// Replay and Original mark a queued task of a replayed copy, for its outcome records.
	Replay   string `json:"replay,omitempty"`
	Original string `json:"original,omitempty"`
}

// Arrival is one event as it reaches its group: the event, and what identifies it for
// counting it once.
type Arrival struct {
	Event *mapping.Event
	// RawSeq is the sequence, in the raw stream, of the raw event it was mapped from: the
	// same for a redelivery and for a replayed copy. Zero when unknown.
	RawSeq uint64
	// ID identifies it when RawSeq is unknown: the event's id, or the original's for a
	// replayed copy. Empty counts it whatever came before (a dead letter retried on
	// purpose).
	ID string
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

// Idle reports whether the group is over at now: nothing to send, nothing being sent, and
// its groupInterval since the last task has passed.
func (r *GroupRecord) Idle(now time.Time) bool {
	return r.Pending == 0 && r.Lease == nil && !now.Before(r.Notified.Add(r.Interval))
}

// MessageID is the A2A message id of the group's next task: the event's own for a queued
// single task, else one per group incarnation and task number.
func (r *GroupRecord) MessageID(key string) string {
	if r.Single {
		return r.Task
	}
	return hook.GroupMessageID(key, r.Incarnation, r.Sent)
}

// counted reports whether a was counted before, and marks it counted.
func (r *GroupRecord) counted(a Arrival) bool {
	switch {
	case a.RawSeq != 0:
		added, forgotten := r.Counted.Add(a.RawSeq)
		r.Forgotten += forgotten
		return !added
	case a.ID != "":
		if slices.Contains(r.Recent, a.ID) {
			return true
		}
		r.Recent = append(r.Recent, a.ID)
		if len(r.Recent) > maxRecent {
			r.Recent = slices.Delete(r.Recent, 0, len(r.Recent)-maxRecent)
		}
	}
	return false
}

// add folds an arrival into the group; false means it was counted before (a redelivery or
// a replayed copy). index maps the event keys of r.Events to their positions; add keeps it
// current.
func (r *GroupRecord) add(a Arrival, now time.Time, index map[string]int, full bool) bool {
	if r.counted(a) {
		return false
	}
	ev := a.Event
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
		// is rewritten on every event, grow by kilobytes per resource. Only the owner is
		// kept, which grouping by owner reads from the payload: the event's dead letter,
		// retried, must join the same group.
		e.Data = ownerOnly(ev)
		e.Message = hook.Truncate(e.Message, maxGroupMessage)
	}
	k := hook.KeyOf(ev).Hash()
	if i, ok := index[k]; ok {
		r.Events[i].Event = e
		r.Events[i].Count++
		return true
	}
	if len(r.Events) < r.MaxEvents && !full {
		index[k] = len(r.Events)
		r.Events = append(r.Events, hook.GroupEvent{Event: e, Count: 1, FirstSeen: now})
	} else {
		r.Omitted++
		if ev.Cluster != "" && !slices.Contains(r.OmittedClusters, ev.Cluster) && len(r.OmittedClusters) < maxOmittedClusters {
			r.OmittedClusters = append(r.OmittedClusters, ev.Cluster)
		}
	}
	return true
}

// maxOmittedClusters bounds the clusters a group remembers of the events it did not keep.
const maxOmittedClusters = 64

// lease marks the group as being sent by holder until until, covering what is pending now.
// A lease that lapsed (its replica died) is taken over with the coverage it had: its task,
// under the same message id, may have reached the agent already, and then only what it
// covered is done; the events that arrived since stay pending for the next task.
func (r *GroupRecord) lease(holder string, until time.Time) {
	if r.Lease != nil {
		r.Lease.Holder, r.Lease.Until = holder, until
		return
	}
	counts := make(map[string]int, len(r.Events))
	for _, e := range r.Events {
		counts[hook.KeyOf(&e.Event).Hash()] = e.Count
	}
	r.Lease = &GroupLease{Holder: holder, Until: until, Pending: r.Pending, Omitted: r.Omitted, Counts: counts}
}

// reserve is the room a record keeps for the lease it will take: a group that fits only
// without its lease could never be sent.
func (r *GroupRecord) reserve() int {
	if r.Lease != nil {
		return 0
	}
	return 256 + 48*len(r.Events)
}

// sent removes what the lease covered: the events that arrived while the task was sent stay
// pending, due a groupInterval after this task.
func (r *GroupRecord) sent(now time.Time) {
	l := r.Lease
	r.Pending = max(0, r.Pending-l.Pending)
	r.Omitted = max(0, r.Omitted-l.Omitted)
	if r.Omitted == 0 {
		r.OmittedClusters = nil
	}
	kept := r.Events[:0]
	for _, e := range r.Events {
		e.Count -= l.Counts[hook.KeyOf(&e.Event).Hash()]
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
		Clusters: slices.Clone(r.OmittedClusters), Resources: len(r.Events), FirstSeen: r.FirstSeen, LastSeen: r.LastSeen, Sent: r.Sent, Incarnation: r.Incarnation}
}

func severityRank(s string) int { return slices.Index(mapping.Severities, s) }

// SeverityRank orders severities, info lowest; an unknown one ranks below info.
func SeverityRank(s string) int { return severityRank(s) }

// Added is where AddToGroup put its arrivals.
type Added struct {
	// Opened: the write opened the group (a new incarnation).
	Opened bool
	// Task is the message id of the task the arrivals go in: the next one, or the one after
	// when a replica is sending the group's task now (it covers only what came before).
	Task string
	// Repeat marks, per arrival, one the group had counted before (a redelivery, a replayed
	// copy): it adds nothing.
	Repeat []bool
	// Sending is the message id of the task a replica was sending when the arrivals came:
	// it covers only what came before, unless that send is given back and tried again.
	Sending string
}

// AddToGroup folds arrivals into the group key, opening it from init when it is new (a new
// incarnation), in one write, and says where they went. A group whose record is full (its
// listed events fill the server's max_payload) counts new events without listing them, as
// past maxEventsPerTask; a record that cannot take even that (a queued task whose payload is
// too large) is ErrTooLarge: those events cannot join it.
func (s *Store) AddToGroup(ctx context.Context, key string, init GroupRecord, events ...Arrival) (Added, error) {
	var out Added
	add := func(full bool) error {
		return s.updateGroup(ctx, key, !full, func(r *GroupRecord, exists bool) (bool, error) {
			if !exists {
				*r = init
				r.Incarnation = nuid.Next()
			}
			out = Added{Opened: !exists, Repeat: make([]bool, len(events))}
			// The index is built once per write: a storm's write folds many events into a
			// group of up to maxEventsPerTask entries.
			index := make(map[string]int, len(r.Events))
			for i := range r.Events {
				index[hook.KeyOf(&r.Events[i].Event).Hash()] = i
			}
			changed := false
			for i, ev := range events {
				added := r.add(ev, s.now(), index, full)
				out.Repeat[i] = !added
				changed = added || changed
			}
			out.Task = r.MessageID(key)
			if r.Lease != nil && !r.Single {
				out.Sending = out.Task
				out.Task = hook.GroupMessageID(key, r.Incarnation, r.Sent+1)
			}
			return changed, nil
		})
	}
	err := add(false)
	if errors.Is(err, ErrTooLarge) && !init.Single {
		err = add(true)
	}
	return out, err
}

// ErrNotWaiting is a group whose task another replica leased or sent first; ErrGone, a
// group that no longer exists (sent and deleted, a queued task done).
var (
	ErrNotWaiting = errors.New("the group's task is no longer waiting")
	ErrGone       = errors.New("the group is gone")
)

// LeaseGroup takes the lease of the group's task for holder until until, if the task still
// waits at now (another replica may have leased or sent it since the caller looked): it
// returns the group as leased, with its events. Otherwise it returns ErrGone, or
// ErrNotWaiting with the group as it is, so that the caller's view can catch up.
func (s *Store) LeaseGroup(ctx context.Context, key, holder string, until, now time.Time) (GroupRecord, error) {
	var r GroupRecord
	err := s.updateGroup(ctx, key, false, func(latest *GroupRecord, exists bool) (bool, error) {
		if !exists {
			return false, ErrGone
		}
		r = *latest
		if !latest.Waiting(now) {
			return false, ErrNotWaiting
		}
		latest.lease(holder, until)
		r = *latest
		// The sender renders the task from these events while this replica's next write
		// of the group (from its cached record) may change them: the sender has its own.
		r.Events = slices.Clone(latest.Events)
		return true, nil
	})
	return r, err
}

// FinishGroup records that holder's leased task is done: the events it covered leave the
// group, which is then suppressed for groupInterval. A queued single task's record is
// deleted. A lease that lapsed and passed to another replica is left to that replica, which
// finds the task settled and finishes it.
func (s *Store) FinishGroup(ctx context.Context, key, holder string) error {
	return s.updateGroup(ctx, key, false, func(r *GroupRecord, exists bool) (bool, error) {
		if !exists || r.Lease == nil || r.Lease.Holder != holder {
			return false, nil
		}
		if r.Single {
			return false, errDelete
		}
		r.sent(s.now())
		return true, nil
	})
}

// ReleaseGroup gives holder's lease back without a task sent: the group is due again at due,
// having used attempts calls.
func (s *Store) ReleaseGroup(ctx context.Context, key, holder string, due time.Time, attempts int) error {
	return s.updateGroup(ctx, key, false, func(r *GroupRecord, exists bool) (bool, error) {
		if !exists || r.Lease == nil || r.Lease.Holder != holder {
			return false, nil
		}
		r.Lease = nil
		r.Due = due
		r.Attempts = attempts
		return true, nil
	})
}

// DeleteGroup deletes the group if it is still at revision rev: a group that is over. The
// revision makes the delete lose to an event that arrives meanwhile.
func (s *Store) DeleteGroup(ctx context.Context, key string, rev uint64) error {
	return s.kv.Delete(ctx, groups.key(key), jetstream.LastRevision(rev))
}

// updateGroup applies change to the group's record by compare-and-set (see
// compareAndSet). cached allows starting from this replica's last write of the record: only
// for a change that always writes when it changes anything, so that a stale start fails the
// compare-and-set instead of deciding on old state.
func (s *Store) updateGroup(ctx context.Context, key string, cached bool, change func(r *GroupRecord, exists bool) (bool, error)) error {
	// Any update takes the cached copy out, so that none is used after another write.
	last := func() (GroupRecord, uint64, bool) {
		r, rev, ok := s.cache.take(key)
		return r, rev, ok && cached
	}
	r, rev, err := compareAndSet(ctx, s, groups, key, GroupRecord{}, last, change)
	if err == nil && rev != 0 {
		s.cache.put(key, r, rev)
	}
	return err
}

// Groups lists every group record by its key.
func (s *Store) Groups(ctx context.Context) (map[string]GroupRecord, error) {
	return list[GroupRecord](ctx, s, groups, "*")
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

// ownerOnly is the part of ev's payload that hook.Owner reads, or nil when the event has no
// owner of its own.
func ownerOnly(ev *mapping.Event) json.RawMessage {
	owner := hook.Owner(ev)
	if owner == strings.TrimPrefix(ev.Resource.Kind+"/"+ev.Resource.Name, "/") {
		return nil
	}
	kind, name, _ := strings.Cut(owner, "/")
	b, _ := json.Marshal(map[string]map[string]string{"owner": {"kind": kind, "name": name}})
	return b
}
