package state

import (
	"context"
	"encoding/json"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/internal/jsonscan"
	"github.com/khook/khook/streams/cloudevent"
)

// Update is one change of a group or budget record, as a watch delivers it: Group or Budget
// is set, unless the record was Deleted.
type Update struct {
	// Key is the group key, or the budget key (BudgetKey) when IsBudget.
	Key      string
	IsBudget bool
	Revision uint64
	Deleted  bool
	// Group is the group's record without its events and remembered ids, which a watcher
	// of every write of every group need not decode; LeaseGroup returns them.
	Group  *GroupRecord
	Budget *BudgetRecord
}

// Watch follows the group and budget records: first their current values, then every
// change, until ctx ends or the watch fails (the channel closes).
type Watch struct {
	w    jetstream.KeyWatcher
	out  chan Update
	stop chan struct{}
	once sync.Once
}

// Watch starts a watch of the group and budget records.
func (s *Store) Watch(ctx context.Context) (*Watch, error) {
	w, err := s.kv.WatchFiltered(ctx, []string{groups.key("*"), budgets.key("*")})
	if err != nil {
		return nil, err
	}
	watch := &Watch{w: w, out: make(chan Update, 64), stop: make(chan struct{})}
	go func() {
		defer close(watch.out)
		for e := range w.Updates() {
			if e == nil {
				continue // the end of the initial values
			}
			select {
			case watch.out <- decodeUpdate(e):
			case <-ctx.Done():
				return
			case <-watch.stop:
				return
			}
		}
	}()
	return watch, nil
}

// Updates delivers the changes; it closes when the watch ends.
func (w *Watch) Updates() <-chan Update { return w.out }

// Stop ends the watch.
func (w *Watch) Stop() error {
	w.once.Do(func() { close(w.stop) })
	return w.w.Stop()
}

func decodeUpdate(e jetstream.KeyValueEntry) Update {
	u := Update{Revision: e.Revision(), Deleted: e.Operation() != jetstream.KeyValuePut}
	if key, ok := strings.CutPrefix(e.Key(), budgets.prefix); ok {
		u.Key, u.IsBudget = key, true
		var r BudgetRecord
		if u.Deleted || json.Unmarshal(e.Value(), &r) != nil {
			u.Deleted = true
			return u
		}
		u.Budget = &r
		return u
	}
	u.Key = strings.TrimPrefix(e.Key(), groups.prefix)
	if u.Deleted {
		return u
	}
	g, err := decodeGroupHeader(e.Value())
	if err != nil {
		u.Deleted = true
		return u
	}
	u.Group = g
	return u
}

// watchSkips are the members of a group record a watcher does not read: its events and the
// sequences and ids it counted, which are most of the record and are read by the one
// replica that sends the group (from the record it leases).
var watchSkips = map[string]bool{"events": true, "counted": true, "recent": true}

// decodeGroupHeader decodes a group record without the members in watchSkips. Every replica
// decodes every write of every group record, and in a storm those writes come as fast as
// events: decoding them whole with encoding/json (which validates and walks even what it
// skips) was a sixth of a grouping dispatcher's CPU. jsonscan validates the record once
// and hands over the small members, which are re-assembled into one object for
// encoding/json.
func decodeGroupHeader(b []byte) (*GroupRecord, error) {
	head := make([]byte, 0, 512)
	head = append(head, '{')
	err := jsonscan.Members(b, func(name, v []byte) error {
		if watchSkips[string(name)] {
			return nil
		}
		if len(head) > 1 {
			head = append(head, ',')
		}
		head = cloudevent.AppendString(head, string(name))
		head = append(head, ':')
		head = append(head, v...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	var g GroupRecord
	if err := json.Unmarshal(append(head, '}'), &g); err != nil {
		return nil, err
	}
	return &g, nil
}
