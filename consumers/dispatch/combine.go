package dispatch

import (
	"context"
	"errors"
	"sync"

	"github.com/khook/khook/consumers/dispatch/state"
)

// combiner folds the events of one group that this replica's workers handle at the same
// time into one write. Without it, every worker holding an event of a hot group (a storm:
// all 16 workers of each replica) races the others' compare-and-set on the one record, and
// most attempts lose and retry. With it, one worker per group writes, taking every event
// queued for that group since its last write; the others wait for that write's outcome, so
// each event is still acknowledged only once the group holds it.
type combiner struct {
	mu      sync.Mutex
	pending map[string]*combined
}

// combined is what waits for the next write of a group: its events, and a channel per
// waiting worker. The writer's init opens the group if it is new; it differs from the
// others' only in the first event's severity, which add raises anyway.
type combined struct {
	events  []state.Arrival
	waiters []chan placed
}

// placed is one event's share of a write: where it went, or the write's error.
type placed struct {
	task, sending string
	repeat        bool
	err           error
}

// writeFunc stores events in the group key, opening it from init when it is new.
type writeFunc func(ctx context.Context, key string, init state.GroupRecord, events []state.Arrival) (state.Added, error)

// share is the i-th event's part of a write's outcome.
func share(a state.Added, err error, i int) placed {
	if err != nil {
		return placed{err: err}
	}
	p := placed{task: a.Task, sending: a.Sending}
	if i < len(a.Repeat) {
		p.repeat = a.Repeat[i]
	}
	return p
}

func newCombiner() *combiner { return &combiner{pending: map[string]*combined{}} }

// add stores ev in group key through write, together with whatever other workers queue for
// the same group meanwhile, and returns once ev is stored (or its write failed), with where
// it went.
func (c *combiner) add(ctx context.Context, key string, init state.GroupRecord, ev state.Arrival, write writeFunc) placed {
	c.mu.Lock()
	if p, writing := c.pending[key]; writing {
		ch := make(chan placed, 1)
		p.events = append(p.events, ev)
		p.waiters = append(p.waiters, ch)
		c.mu.Unlock()
		select {
		case r := <-ch:
			return r
		case <-ctx.Done():
			// The writer may still store ev; the event is redelivered, and the group counts
			// its id once.
			return placed{err: ctx.Err()}
		}
	}
	c.pending[key] = &combined{}
	c.mu.Unlock()

	a, err := write(ctx, key, init, []state.Arrival{ev})
	mine := share(a, err, 0)
	// Write what queued up meanwhile, until nothing did: this worker is the group's writer
	// until then.
	for {
		c.mu.Lock()
		p := c.pending[key]
		if len(p.events) == 0 {
			delete(c.pending, key)
			c.mu.Unlock()
			return mine
		}
		c.pending[key] = &combined{}
		c.mu.Unlock()
		wa, werr := write(ctx, key, init, p.events)
		if errors.Is(werr, state.ErrTooLarge) && len(p.events) > 1 {
			// One event can make the record too large to store; the others of the batch
			// may fit. Each is written on its own, and told its own outcome.
			for i, ev := range p.events {
				one, err := write(ctx, key, init, []state.Arrival{ev})
				p.waiters[i] <- share(one, err, 0)
			}
			continue
		}
		for i, ch := range p.waiters {
			ch <- share(wa, werr, i)
		}
	}
}
