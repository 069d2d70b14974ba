package dispatch

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.uber.org/zap"

	"github.com/khook/khook/consumers/dispatch/state"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/deadletter"
	"github.com/khook/khook/streams/outcome"
	"github.com/khook/khook/streams/subject"
)

// Grouping and budgets: tasks that do not go straight to their agent.
//
// A grouped hook's events are folded into their group's record in the dispatch bucket and
// acknowledged; the record is their durable home from then on. An event of an ungrouped hook
// whose agent has a budget is queued the same way, as a group of one. Every replica watches
// the records and, when a group is due, tries to take its lease by compare-and-set: exactly
// one replica wins and sends the task. Due groups go in severity order (critical first),
// then oldest first, and only while their agent's budget allows. A replica that dies while
// sending loses its lease when the lease lapses, and another sends the task again under
// the same message id, which the settled record turns into at most one call when the first
// call had completed.

// flushTick is how often a replica looks for due groups: the resolution of groupWait and
// groupInterval.
const flushTick = 200 * time.Millisecond

// taskRunner is what the flusher needs of the dispatcher: the hook entry a waiting task
// belongs to, as the hooks are now, and the path every task takes to its agent and out of
// it.
type taskRunner interface {
	// entry returns the hook entry id names, if a hook still has it.
	entry(id string) (hook.Match, bool)
	// call makes one call of t to its agent (Dispatcher.call).
	call(ctx context.Context, t hook.Task, attempt int, log *zap.Logger) callResult
	// retryLater reports a retryable failure and returns the delay before the next call.
	retryLater(t hook.Task, c callResult, attempts int, log *zap.Logger) time.Duration
	// unsendable reports whether a task whose prompt rendered with err cannot be sent.
	unsendable(err error, log *zap.Logger) bool
	// abandon dead-letters a task that no retry will deliver (Dispatcher.abandon); target
	// nil is the agent's.
	abandon(ctx context.Context, t hook.Task, target Target, reason string, attempts int, cause error,
		letters []deadletter.Letter, log *zap.Logger) ([]uint64, error)
}

// flushConfig is what the flusher takes of the dispatcher's configuration.
type flushConfig struct {
	budgets     []state.Budget
	maxAttempts int
	workers     int
	// leaseFor is how long a lease holds before another replica may take the task over: the
	// dispatcher consumer's ack wait, as for an event's redelivery.
	leaseFor time.Duration
	// retryBase is how soon a task whose dead letters could not be stored is tried again.
	retryBase time.Duration
	subjects  subject.Builder
	// rec records each task's outcome: a group's under the group, a queued task's under
	// its event.
	rec *outcome.Recorder
}

type viewEntry struct {
	rec state.GroupRecord
	rev uint64
}

// flusher sends the tasks of due groups. Its view of the records is a cache of the bucket
// fed by a watch; decisions are made by compare-and-set on the bucket, never on the view.
type flusher struct {
	st      *state.Store
	run     taskRunner
	cfg     flushConfig
	logger  *zap.Logger
	metrics *metrics
	holder  string // this replica, in leases

	view    map[string]viewEntry // by group key; only the loop touches it
	budgets map[string]state.BudgetRecord

	// poke asks the loop for a tick now: a send ended or a budget changed, so a waiting
	// task may start without waiting for the next flushTick.
	poke chan struct{}

	mu      sync.Mutex
	sending map[string]bool
	waiting map[string]int // by agent, for the metric
	open    int
	sem     chan struct{}
	wg      sync.WaitGroup
}

func newFlusher(st *state.Store, run taskRunner, cfg flushConfig, m *metrics, logger *zap.Logger) *flusher {
	return &flusher{st: st, run: run, cfg: cfg, metrics: m, logger: logger, holder: nuid.Next(),
		view: map[string]viewEntry{}, budgets: map[string]state.BudgetRecord{}, poke: make(chan struct{}, 1),
		sending: map[string]bool{}, waiting: map[string]int{}, sem: make(chan struct{}, cfg.workers)}
}

// watch follows the group and budget records and sends due tasks until ctx ends. Sends run
// on work, so that shutdown lets them finish as it lets deliveries finish.
func (f *flusher) watch(ctx, work context.Context) {
	for ctx.Err() == nil {
		reconnects := f.st.Reconnects()
		w, err := f.st.Watch(ctx)
		if err != nil {
			f.logger.Warn("group watcher", zap.Error(err))
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		// A new watch starts with every current record: the view is rebuilt from it, so
		// nothing deleted while the last watch stalled stays in it.
		f.view = map[string]viewEntry{}
		f.mu.Lock()
		f.budgets = map[string]state.BudgetRecord{}
		f.mu.Unlock()
		f.loop(ctx, work, w, reconnects)
		_ = w.Stop()
	}
}

// loop applies the watch's updates to the view and sends what is due, until ctx ends, the
// watch ends, or the connection reconnected (after which a watch can lag for many seconds:
// it is started afresh instead).
func (f *flusher) loop(ctx, work context.Context, w *state.Watch, reconnects uint64) {
	tick := time.NewTicker(flushTick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-w.Updates():
			if !ok {
				return
			}
			f.apply(u)
		case <-tick.C:
			if f.st.Reconnects() != reconnects {
				f.logger.Info("reconnected to NATS: watching the groups afresh")
				return
			}
			f.tick(ctx, work, true)
		case <-f.poke:
			f.tick(ctx, work, false)
		}
	}
}

func (f *flusher) apply(u state.Update) {
	if u.IsBudget {
		f.mu.Lock()
		defer f.mu.Unlock()
		if u.Deleted {
			delete(f.budgets, u.Key)
		} else {
			f.budgets[u.Key] = *u.Budget
		}
		// A slot may have freed: a budgeted agent's next task need not wait for the tick.
		f.wake()
		return
	}
	if u.Deleted {
		delete(f.view, u.Key)
		return
	}
	if v, ok := f.view[u.Key]; ok && v.rev > u.Revision {
		return
	}
	f.view[u.Key] = viewEntry{rec: *u.Group, rev: u.Revision}
}

// maxDeletesPerTick bounds the deletes of ended groups one tick makes: they are round trips
// made on the loop, which also keeps the view current.
const maxDeletesPerTick = 32

// tick sends what is due, most severe first, within budgets; on the timer's ticks (not
// every poke), it also deletes groups that are over.
func (f *flusher) tick(ctx, work context.Context, timer bool) {
	now := time.Now()
	var due []string
	waiting := map[string]int{}
	open, deletes := 0, 0
	for key, v := range f.view {
		r := &v.rec
		if r.Open() {
			open++
		}
		if r.Waiting(now) {
			waiting[r.Agent]++
			if !f.isSending(key) {
				due = append(due, key)
			}
			continue
		}
		if timer && r.Idle(now) && deletes < maxDeletesPerTick {
			// Nothing to send and nothing to suppress: the group is over.
			deletes++
			if err := f.st.DeleteGroup(ctx, key, v.rev); err == nil {
				delete(f.view, key)
			}
		}
	}
	f.mu.Lock()
	f.waiting, f.open = waiting, open
	f.mu.Unlock()
	slices.SortFunc(due, func(a, b string) int {
		ra, rb := f.view[a].rec, f.view[b].rec
		return cmp.Or(state.SeverityRank(rb.Severity)-state.SeverityRank(ra.Severity), ra.Due.Compare(rb.Due), strings.Compare(a, b))
	})
	blocked := map[string]bool{}
	for _, key := range due {
		v := f.view[key]
		agent := v.rec.Agent
		if blocked[agent] {
			continue
		}
		select {
		case f.sem <- struct{}{}:
		default:
			return // every sender is busy: the rest wait for the next tick
		}
		if !f.start(ctx, work, key, v, now) {
			// The most severe due task of this agent could not start (its budget is spent,
			// or another replica took it): no less severe task may overtake it.
			blocked[agent] = true
			<-f.sem
		}
	}
}

// start takes the agent's budget and the group's lease, and sends the task in the
// background. False means it did not start.
func (f *flusher) start(ctx, work context.Context, key string, v viewEntry, now time.Time) bool {
	msgID := v.rec.MessageID(key)
	agent := v.rec.Agent
	until := now.Add(f.cfg.leaseFor)
	b, budgeted := state.BudgetFor(f.cfg.budgets, agent)
	if budgeted {
		if used, ok := f.budgets[state.BudgetKey(agent)]; ok && !used.Free(b, now) {
			return false
		}
		took, err := f.st.TakeBudget(ctx, b, agent, msgID, f.holder, until)
		if err != nil {
			f.logger.Warn("budget not read", zap.String("agent", agent), zap.Error(err))
		}
		if !took {
			return false
		}
	}
	// The view holds no events, and may trail a hot group by a write or two: the lease is
	// taken on the latest record, if its task still waits.
	r, err := f.st.LeaseGroup(ctx, key, f.holder, until, now)
	if err != nil {
		if budgeted {
			f.returnBudget(agent, msgID, true)
		}
		// The view was behind: it catches up here rather than trying the same key again.
		switch {
		case errors.Is(err, state.ErrGone):
			delete(f.view, key)
		case errors.Is(err, state.ErrNotWaiting):
			f.view[key] = viewEntry{rec: r, rev: v.rev}
		default:
			f.logger.Warn("group lease not taken, will try again", zap.String("group", key), zap.Error(err))
		}
		return false
	}
	f.setSending(key, true)
	f.wg.Go(func() {
		defer f.wake()
		defer func() { <-f.sem }()
		defer f.setSending(key, false)
		f.send(work, key, r, msgID, budgeted)
	})
	return true
}

// wake asks for a tick now, unless one is asked for already.
func (f *flusher) wake() {
	select {
	case f.poke <- struct{}{}:
	default:
	}
}

// send builds the group's task, calls its agent, and records the outcome in the group.
func (f *flusher) send(ctx context.Context, key string, r state.GroupRecord, msgID string, budgeted bool) {
	log := f.logger.With(zap.String("group", key), zap.String("hook", r.Hook), zap.String("agent", r.Agent),
		zap.String("message_id", msgID))
	refund := true
	defer func() {
		if budgeted {
			f.returnBudget(r.Agent, msgID, refund)
		}
	}()
	m, ok := f.run.entry(r.Entry)
	if !ok {
		// The Hook, or this entry of it (its event type or agent), was deleted while the
		// events waited: they are dead-lettered, for `khook dlq retry` once it is back.
		f.fail(ctx, key, r, orphanTask(r, msgID), nil, "hook-deleted", errors.New("the hook entry of the waiting task was deleted"), log)
		return
	}
	var t hook.Task
	var err error
	if r.Single {
		t, err = hook.NewTask(m, &r.Events[0].Event)
		// The ids it was queued with: the prompt may have changed since, and its event's
		// suppression claim and delivery record are under these.
		if r.Task != "" {
			t.MessageID, t.ContextID, t.SuppressionKey = r.Task, cmp.Or(r.Context, t.ContextID), cmp.Or(r.Claim, t.SuppressionKey)
		}
	} else {
		t, err = hook.GroupTask(m, r.Group(key), r.Events)
	}
	if f.run.unsendable(err, log) {
		// No call was made: the budget's slot and share of the hour go back.
		f.fail(ctx, key, r, t, nil, "prompt-too-large", err, log)
		return
	}
	if how, ok := f.st.SettledAs(ctx, t.MessageID); ok {
		// A replica sent it (or gave it up) and died before recording it in the group, and
		// perhaps before its outcome record reached the server: the outcome is recorded
		// again, as the per-event path does for a settled task's redelivery.
		log.Info("task settled before, by a replica that did not finish it; finishing")
		f.metrics.groupTasks.WithLabelValues("settled-before").Inc()
		kind := outcome.Delivered
		if strings.HasPrefix(how, "dead-lettered") {
			kind = outcome.DeadLettered
		}
		f.note(key, r, t, outcome.Record{Outcome: kind, Reason: "settled before: " + how})
		f.finish(ctx, key, log)
		refund = false
		return
	}
	c := f.run.call(ctx, t, r.Attempts+1, log.With(zap.Int("events", r.Pending), zap.Int("resources", len(r.Events))))
	switch c.outcome {
	case callDelivered:
		refund = false
		f.metrics.groupTasks.WithLabelValues("delivered").Inc()
		f.note(key, r, t, outcome.Record{Outcome: outcome.Delivered, Attempt: r.Attempts + 1, Took: outcome.Duration(c.took),
			TaskState: c.state})
		f.finish(ctx, key, log)
	case callDelayed:
		f.note(key, r, t, outcome.Record{Outcome: outcome.Retrying, Reason: "endpoint-busy", RetryIn: outcome.Duration(c.wait)})
		f.release(ctx, key, c.wait, r.Attempts, log)
	case callInterrupted:
		// Given back at once, so that another replica need not wait for the lease to lapse.
		f.note(key, r, t, outcome.Record{Outcome: outcome.Retrying, Reason: "interrupted by shutdown"})
		f.release(context.WithoutCancel(ctx), key, 0, r.Attempts, log)
	case callPermanent:
		refund = false
		f.fail(ctx, key, r, t, c.target, "permanent", c.err, log)
	case callRetryable:
		if attempts := r.Attempts + 1; attempts < f.cfg.maxAttempts {
			delay := f.run.retryLater(t, c, attempts, log)
			f.note(key, r, t, outcome.Record{Outcome: outcome.Retrying, Attempt: attempts, Error: errText(c.err),
				RetryIn: outcome.Duration(delay)})
			f.release(ctx, key, delay, attempts, log)
		} else {
			refund = false
			f.fail(ctx, key, r, t, c.target, "max-attempts", c.err, log)
		}
	}
}

// fail gives up a leased task that no retry will deliver: every event it held is
// dead-lettered, then the task leaves the group as a sent one would. When a dead letter
// cannot be stored, the lease is given back and the task is given up again later.
func (f *flusher) fail(ctx context.Context, key string, r state.GroupRecord, t hook.Task, target Target, reason string,
	cause error, log *zap.Logger) {
	letters, err := f.letters(key, r)
	var seqs []uint64
	if err != nil {
		log.Error("dead letters not built", zap.Error(err))
	} else {
		seqs, err = f.run.abandon(ctx, t, target, reason, r.Attempts+1, cause, letters, log)
	}
	if err != nil {
		f.release(ctx, key, f.cfg.retryBase, r.Attempts, log)
		return
	}
	f.metrics.groupTasks.WithLabelValues("dead-lettered").Inc()
	failed := outcome.Record{Outcome: outcome.DeadLettered, Attempt: r.Attempts + 1, Reason: reason, Error: errText(cause)}
	if r.Single && len(seqs) > 0 {
		failed.DeadLetterSeq = seqs[0]
	}
	f.note(key, r, t, failed)
	if !r.Single {
		// Each event the group listed has a dead letter of its own, which describing the
		// event names.
		for i, e := range r.Events {
			one := failed
			one.Group, one.GroupTask, one.DeadLetterSeq = key, t.MessageID, seqs[i]
			one.Hook, one.Agent, one.EventType = r.Hook, r.Agent, e.Event.Type
			one.Stage = outcome.StageDispatcher
			f.cfg.rec.Event(e.Event.ID, one)
		}
	}
	if r.Omitted > 0 {
		log.Warn("events past maxEventsPerTask were counted, not kept, and have no dead letter", zap.Int("omitted", r.Omitted))
	}
	f.finish(ctx, key, log)
}

// letters are the dead letters of what a group or a queued task held: each listed event as
// the normalized event it arrived as (a group's without its payload), to be retried through
// the dispatcher.
func (f *flusher) letters(key string, r state.GroupRecord) ([]deadletter.Letter, error) {
	out := make([]deadletter.Letter, 0, len(r.Events))
	for _, e := range r.Events {
		ev := e.Event
		// The envelope needs a source; only events published by hand lack one.
		ev.Source = cmp.Or(ev.Source, "khook")
		subject, err := f.cfg.subjects.Events(ev.Type)
		if err != nil {
			return nil, err
		}
		body, err := ev.Encode()
		if err != nil {
			return nil, err
		}
		held := &deadletter.Held{Subject: subject, Data: body, Header: nats.Header{}}
		held.Header.Set("Content-Type", cloudevent.ContentType)
		l := deadletter.Letter{Held: held}
		if !r.Single {
			held.Header.Set(deadletter.HeaderGroup, key)
			held.Header.Set(deadletter.HeaderCount, strconv.Itoa(e.Count))
			l.Part = hook.KeyOf(&ev).Hash()
		}
		out = append(out, l)
	}
	return out, nil
}

// note records what became of the group's task t. A queued task's record is its event's;
// a group's is the group's, and each of its events points at it from its grouped record.
func (f *flusher) note(key string, r state.GroupRecord, t hook.Task, rec outcome.Record) {
	rec.Stage, rec.Hook, rec.Agent, rec.MessageID = outcome.StageDispatcher, r.Hook, r.Agent, t.MessageID
	if r.Single {
		if len(r.Events) > 0 {
			ev := r.Events[0].Event
			rec.EventType, rec.ReplayID, rec.OriginalID = ev.Type, r.Replay, r.Original
			f.cfg.rec.Event(ev.ID, rec)
		}
		return
	}
	rec.Group, rec.Events = key, r.Pending
	if r.Lease != nil {
		rec.Events = r.Lease.Pending
	}
	f.cfg.rec.Group(key, rec)
}

// orphanTask is the task of a waiting group whose hook entry is gone: its ids, for its dead
// letters.
func orphanTask(r state.GroupRecord, msgID string) hook.Task {
	ns, name, _ := strings.Cut(r.Agent, "/")
	t := hook.Task{Hook: r.Hook, Agent: hook.AgentRef{Namespace: ns, Name: name}, MessageID: msgID}
	if r.Single {
		t.SuppressionKey = r.Claim
	}
	if len(r.Events) > 0 {
		t.Event = &r.Events[len(r.Events)-1].Event
	}
	return t
}

// finish records that the leased task is done.
func (f *flusher) finish(ctx context.Context, key string, log *zap.Logger) {
	if err := f.st.FinishGroup(ctx, key, f.holder); err != nil {
		log.Warn("group not updated after its task; another replica finishes it when the lease lapses", zap.Error(err))
	}
}

// release gives the lease back without a task sent: the group is due again after delay.
func (f *flusher) release(ctx context.Context, key string, delay time.Duration, attempts int, log *zap.Logger) {
	if err := f.st.ReleaseGroup(ctx, key, f.holder, time.Now().Add(delay), attempts); err != nil {
		log.Warn("group lease not released; it lapses", zap.Error(err))
	}
}

func (f *flusher) returnBudget(agent, msgID string, refund bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.st.ReturnBudget(ctx, agent, msgID, f.holder, refund); err != nil {
		f.logger.Warn("budget not returned; its hold lapses", zap.String("agent", agent), zap.Error(err))
	}
}

func (f *flusher) isSending(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sending[key]
}

func (f *flusher) setSending(key string, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if on {
		f.sending[key] = true
	} else {
		delete(f.sending, key)
	}
}

// budgetView returns the budget records as the watch last saw them.
func (f *flusher) budgetView() []state.BudgetRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]state.BudgetRecord, 0, len(f.budgets))
	for _, r := range f.budgets {
		out = append(out, r)
	}
	return out
}

// stats returns the groups open and the tasks waiting per agent, as of the last tick.
func (f *flusher) stats() (open int, waiting map[string]int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.open, f.waiting
}

// gather folds an event of a grouped hook into its group. The event is acknowledged once the
// group holds it.
func (d *Dispatcher) gather(ctx context.Context, msg jetstream.Msg, m hook.Match, g hook.Grouping, ev *mapping.Event, log *zap.Logger) settle {
	labels := g.Labels(ev)
	key := hook.GroupKey(m.StableEntry(), labels)
	init := state.GroupRecord{
		Entry: m.StableEntry(), Hook: m.Hook.Key(), Agent: m.Agent.Key(), Labels: labels, Severity: ev.Severity,
		Wait: g.Wait, Interval: g.Interval, MaxEvents: g.MaxEvents,
	}
	p := d.combiner.add(ctx, key, init, arrivalOf(msg, ev), func(ctx context.Context, key string, init state.GroupRecord, events []state.Arrival) (state.Added, error) {
		a, err := d.state.AddToGroup(ctx, key, init, events...)
		if err == nil && a.Opened {
			log.Info("group opened", zap.String("group", key), zap.Any("labels", labels), zap.Duration("group_wait", g.Wait))
		}
		return a, err
	})
	err := p.err
	if errors.Is(err, state.ErrTooLarge) {
		// No retry makes it fit: the event is dead-lettered instead of coming back for ever.
		return d.giveUp(ctx, msg, hook.Identify(m, ev), nil, "too-large", 0, err, log)
	}
	if err != nil {
		log.Warn("event not added to its group, will retry", zap.String("group", key), zap.Error(err))
		return settle{delay: d.cfg.RetryBase}
	}
	d.metrics.groupedEvents.Inc()
	r := outcome.Record{Outcome: outcome.Grouped, Hook: m.Hook.Key(), Agent: m.Agent.Key(), Group: key,
		GroupTask: p.task, GroupSending: p.sending, Repeat: p.repeat}
	if p.repeat {
		// Counted before (a redelivery, a replayed copy): it goes in no task of its own.
		r.GroupTask, r.GroupSending = "", ""
	}
	d.note(msg, ev, r)
	return settle{ack: true}
}

// arrivalOf is how a group counts ev once: by the raw event it was mapped from, which a
// redelivery and a replayed copy share; failing that, by its id or its original's. An event
// retried from a dead letter is counted again, on purpose, once per dead letter.
func arrivalOf(msg jetstream.Msg, ev *mapping.Event) state.Arrival {
	h := msg.Headers()
	if retry := h.Get(streams.HeaderRetryOf); retry != "" {
		return state.Arrival{Event: ev, ID: "dlq-retry-" + retry}
	}
	a := state.Arrival{Event: ev, ID: cmp.Or(h.Get(streams.HeaderOriginalID), ev.ID)}
	a.RawSeq, _ = strconv.ParseUint(h.Get(streams.HeaderRawSeq), 10, 64)
	return a
}

// enqueue queues a task whose agent has a budget, as a group of one: the flusher sends it
// when the budget allows, most severe first, with the ids it has now.
func (d *Dispatcher) enqueue(ctx context.Context, msg jetstream.Msg, t hook.Task, m hook.Match, ev *mapping.Event, log *zap.Logger) settle {
	key := hook.Hash("single", t.MessageID)
	a, err := d.state.AddToGroup(ctx, key, state.GroupRecord{
		Entry: m.StableEntry(), Hook: m.Hook.Key(), Agent: m.Agent.Key(), Severity: ev.Severity, MaxEvents: 1,
		Single: true, Task: t.MessageID, Context: t.ContextID, Claim: t.SuppressionKey,
		Replay: msg.Headers().Get(streams.HeaderReplayID), Original: msg.Headers().Get(streams.HeaderOriginalID),
	}, arrivalOf(msg, ev))
	if errors.Is(err, state.ErrTooLarge) {
		// The task cannot wait in the queue (its event's payload is too large for the
		// record): it is dead-lettered, not retried for ever.
		return d.giveUp(ctx, msg, t, nil, "too-large", 0, err, log)
	} else if err != nil {
		log.Warn("task not queued for its agent's budget, will retry", zap.Error(err))
		return settle{delay: d.cfg.RetryBase}
	}
	if !a.Repeat[0] {
		d.note(msg, ev, taskRecord(outcome.Waiting, t, outcome.Record{}))
	}
	return settle{ack: true}
}

// entry: the rest of the flusher's taskRunner.
func (d *Dispatcher) entry(id string) (hook.Match, bool) { return d.Hooks().Entry(id) }

var _ taskRunner = (*Dispatcher)(nil)
