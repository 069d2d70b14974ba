package state

import (
	"context"
	"time"

	"github.com/khook/khook/hook"
)

// ActiveEvent is one event type on one resource that a hook has seen: firing while it
// recurs, resolved once a whole suppression window passes without it.
type ActiveEvent struct {
	Hook         string        `json:"hook"`
	Cluster      string        `json:"cluster,omitempty"`
	EventType    string        `json:"eventType"`
	Namespace    string        `json:"namespace"`
	ResourceKind string        `json:"resourceKind,omitempty"`
	ResourceName string        `json:"resourceName"`
	FirstSeen    time.Time     `json:"firstSeen"`
	LastSeen     time.Time     `json:"lastSeen"`
	Window       time.Duration `json:"window"`
}

// Key is the event key the record is about.
func (a ActiveEvent) Key() hook.EventKey {
	return hook.EventKey{Cluster: a.Cluster, Type: a.EventType, Namespace: a.Namespace, Kind: a.ResourceKind, Name: a.ResourceName}
}

// Status is firing or resolved at now.
func (a ActiveEvent) Status(now time.Time) string {
	if now.Sub(a.LastSeen) < a.Window {
		return "firing"
	}
	return "resolved"
}

// Seen records an occurrence of an event for a hook, keeping the first time it was seen.
func (s *Store) Seen(ctx context.Context, a ActiveEvent) error {
	_, _, err := compareAndSet(ctx, s, active, hook.Hash(a.Hook)+"."+a.Key().Hash(), ActiveEvent{}, nil,
		func(prev *ActiveEvent, exists bool) (bool, error) {
			if exists && !prev.FirstSeen.IsZero() && a.LastSeen.Sub(prev.LastSeen) < prev.Window {
				a.FirstSeen = prev.FirstSeen
			}
			*prev = a
			return true, nil
		})
	return err
}

// ActiveEvents lists the events a hook has seen within the state's lifetime.
func (s *Store) ActiveEvents(ctx context.Context, hookKey string) ([]ActiveEvent, error) {
	records, err := list[ActiveEvent](ctx, s, active, hook.Hash(hookKey)+".>")
	if err != nil {
		return nil, err
	}
	return inKeyOrder(records), nil
}
