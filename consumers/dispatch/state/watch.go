package state

import (
	"context"
	"encoding/json"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
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
	var h struct {
		GroupRecord
		Events  skipJSON `json:"events"`
		Counted skipJSON `json:"counted"`
		Recent  skipJSON `json:"recent"`
	}
	if u.Deleted || json.Unmarshal(e.Value(), &h) != nil {
		u.Deleted = true
		return u
	}
	u.Group = &h.GroupRecord
	return u
}

// skipJSON is a field left undecoded.
type skipJSON struct{}

func (*skipJSON) UnmarshalJSON([]byte) error { return nil }
