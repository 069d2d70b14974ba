package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/streams"
)

// State is the dispatch state every replica shares, in one JetStream KV bucket:
//
//	claim.<key>        the suppression claim of (hook, event type, namespace, resource), with
//	                   the window as its TTL; the value is the message id that holds it
//	settled.<msgid>    a task that was delivered or dead-lettered, so it is never called again
//	attempts.<msgid>   how many real calls a task has used
//	active.<hook>.<key> the firing/resolved record of one (event type, resource) per hook
//
// Claims are created atomically (create-if-absent), never decided in one process's memory.
type State struct {
	kv     jetstream.KeyValue
	groups groupCache    // the group records this replica wrote last
	ttl    time.Duration // lifetime of delivery records, attempt counts and active records
	now    func() time.Time
}

// OpenState opens the dispatch bucket of topo: the state every dispatcher replica shares.
// It is opened before the actors start and handed to each that reads it (the dispatcher,
// the Hook status writer), so none of them waits on another to open it.
func OpenState(ctx context.Context, js jetstream.JetStream, topo streams.Config) (*State, error) {
	kv, err := js.KeyValue(ctx, topo.DispatchBucket)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: kv %s: %w", topo.DispatchBucket, err)
	}
	return NewState(kv, topo.DispatchTTL), nil
}

// NewState returns the state kept in kv.
func NewState(kv jetstream.KeyValue, ttl time.Duration) *State {
	return &State{kv: kv, ttl: ttl, now: time.Now}
}

// Claim takes the suppression claim for key on behalf of messageID for window. It returns
// owned when the claim is (now) held by messageID, including when a redelivery of the same
// message finds its own claim, and false when another event holds it; created says this
// call made the claim.
//
// "Another event holds it" is concluded only from reading the holder. Reads may be served by
// any replica of the bucket, and one that has not applied the latest write yet answers "not
// found" for a claim that exists, typically this message's own claim, whose creation was
// acknowledged too late during a leader change. Such a claim is neither ours nor someone
// else's yet: Claim returns errClaimUnread, and the event is retried rather than
// acknowledged as suppressed (which would lose it).
func (s *State) Claim(ctx context.Context, key, messageID string, window time.Duration) (owned, created bool, err error) {
	for range 3 {
		_, err := s.kv.Create(ctx, "claim."+key, []byte(messageID), jetstream.KeyTTL(window))
		if err == nil {
			return true, true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return false, false, err
		}
		e, err := s.kv.Get(ctx, "claim."+key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			// Expired between the two calls, or read from a replica that is behind.
			continue
		}
		if err != nil {
			return false, false, err
		}
		return string(e.Value()) == messageID, false, nil
	}
	return false, false, errClaimUnread
}

// errClaimUnread is a claim that exists but could not be read; the caller retries later.
var errClaimUnread = errors.New("suppression claim exists but reads say it does not (a replica is behind)")

// Release gives up a claim held by messageID, so that the next event in the window may call
// the agent (used when a task is dead-lettered: suppressing events for a task that never
// reached the agent would hide them).
func (s *State) Release(ctx context.Context, key, messageID string) error {
	e, err := s.kv.Get(ctx, "claim."+key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if string(e.Value()) != messageID {
		return nil
	}
	return ignoreExists(s.kv.Delete(ctx, "claim."+key, jetstream.LastRevision(e.Revision())))
}

// Settled reports whether the task is settled: its agent accepted it, or it was
// dead-lettered. A settled task is never called again for that event. A lookup error counts
// as not settled: a possible duplicate call is better than a lost one.
func (s *State) Settled(ctx context.Context, messageID string) bool {
	_, err := s.kv.Get(ctx, "settled."+messageID)
	return err == nil
}

// MarkSettled records how a task settled ("delivered <state>", "dead-lettered <reason>").
// The task's attempt count is left to expire with the bucket's TTL: nothing reads it once
// the task is settled, and purging it would cost a write on every delivery.
func (s *State) MarkSettled(ctx context.Context, messageID, outcome string) error {
	_, err := s.kv.Create(ctx, "settled."+messageID, []byte(outcome), jetstream.KeyTTL(s.ttl))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return err
	}
	return nil
}

// Reopen forgets that a task settled and how many attempts it used, so that it runs again:
// `khook dlq retry` of a dead-lettered task.
func (s *State) Reopen(ctx context.Context, messageID string) error {
	for _, key := range []string{"settled." + messageID, "attempts." + messageID} {
		if err := s.kv.Purge(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return err
		}
	}
	return nil
}

// Attempt counts one more failed call of a task and returns the total so far.
func (s *State) Attempt(ctx context.Context, messageID string) (int, error) {
	key := "attempts." + messageID
	for range 5 {
		e, err := s.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if _, err := s.kv.Create(ctx, key, []byte("1"), jetstream.KeyTTL(s.ttl)); err == nil {
				return 1, nil
			} else if !errors.Is(err, jetstream.ErrKeyExists) {
				return 0, err
			}
		case err != nil:
			return 0, err
		default:
			n, _ := strconv.Atoi(string(e.Value()))
			if _, err := s.kv.Update(ctx, key, []byte(strconv.Itoa(n+1)), e.Revision()); err == nil {
				return n + 1, nil
			}
		}
	}
	return 0, errors.New("attempt counter: too many concurrent updates")
}

// ActiveEvent is one event type on one resource that a hook has seen: firing while it
// recurs, resolved once a whole suppression window passes without it.
type ActiveEvent struct {
	Hook         string        `json:"hook"`
	EventType    string        `json:"eventType"`
	Namespace    string        `json:"namespace"`
	ResourceKind string        `json:"resourceKind,omitempty"`
	ResourceName string        `json:"resourceName"`
	FirstSeen    time.Time     `json:"firstSeen"`
	LastSeen     time.Time     `json:"lastSeen"`
	Window       time.Duration `json:"window"`
}

// Status is firing or resolved at now.
func (a ActiveEvent) Status(now time.Time) string {
	if now.Sub(a.LastSeen) < a.Window {
		return "firing"
	}
	return "resolved"
}

// Seen records an occurrence of an event for a hook, keeping the first time it was seen.
func (s *State) Seen(ctx context.Context, a ActiveEvent) error {
	key := "active." + hook.Hash(a.Hook) + "." + hook.Hash(a.EventType, a.Namespace, a.ResourceKind, a.ResourceName)
	for range 5 {
		e, err := s.kv.Get(ctx, key)
		var rev uint64
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			var prev ActiveEvent
			if json.Unmarshal(e.Value(), &prev) == nil && !prev.FirstSeen.IsZero() && a.LastSeen.Sub(prev.LastSeen) < prev.Window {
				a.FirstSeen = prev.FirstSeen
			}
			rev = e.Revision()
		}
		b, err := json.Marshal(a)
		if err != nil {
			return err
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, key, b, jetstream.KeyTTL(s.ttl))
		} else {
			_, err = s.kv.Update(ctx, key, b, rev)
		}
		if err == nil {
			return nil
		}
	}
	return errors.New("active event: too many concurrent updates")
}

// ActiveEvents lists the events a hook has seen within the state's lifetime.
func (s *State) ActiveEvents(ctx context.Context, hookKey string) ([]ActiveEvent, error) {
	records, err := listRecords[ActiveEvent](ctx, s.kv, "active."+hook.Hash(hookKey)+".>")
	if err != nil {
		return nil, err
	}
	return inKeyOrder(records), nil
}

// inKeyOrder returns the records in the order of their keys, as the bucket lists them.
func inKeyOrder[T any](records map[string]T) []T {
	out := make([]T, 0, len(records))
	for _, key := range slices.Sorted(maps.Keys(records)) {
		out = append(out, records[key])
	}
	return out
}

// listRecords reads every JSON record whose key matches filter, by key. A record that
// expires or fails to decode between the listing and its read is left out.
func listRecords[T any](ctx context.Context, kv jetstream.KeyValue, filter string) (map[string]T, error) {
	out := map[string]T{}
	lister, err := kv.ListKeysFiltered(ctx, filter)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	for key := range lister.Keys() {
		e, err := kv.Get(ctx, key)
		if err != nil {
			continue
		}
		var r T
		if json.Unmarshal(e.Value(), &r) == nil {
			out[key] = r
		}
	}
	return out, nil
}

func ignoreExists(err error) error {
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil
	}
	return err
}
