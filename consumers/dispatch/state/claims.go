package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Claimed is the outcome of Claim.
type Claimed struct {
	// Owned: the claim is (now) held by the caller's message, including when a redelivery
	// of the same message finds its own claim; Created: this call made it.
	Owned, Created bool
	// Holder is the message id of the task holding the window when another does, and
	// HolderEvent its event's id (empty for a claim made before khook recorded it). Until
	// is when the holder's window ends.
	Holder, HolderEvent string
	Until               time.Time
}

// Claim takes the suppression claim for key on behalf of messageID, the task of event
// eventID, for window. It says whether the claim is the caller's and, when another task
// holds it, which and until when.
//
// The order of its KV operations depends on what this replica saw of key lately, and only
// the cost depends on it, never the answer:
//
//   - A window this replica saw held (a storm: one resource's events, one after another)
//     is read first, and a suppressed event costs that one read. A create that is refused
//     costs three round trips: nats.go's Create reads the key again to tell a delete
//     marker from a value, and the holder must still be read.
//   - Any other window (a new resource) is created first: one create, and a read only
//     when it is refused.
//
// Only the server's answer to a create decides that no claim exists. Reads may be served
// by any replica of the bucket, and one that has not applied the latest write answers "not
// found" for a claim that exists, or shows one that has already expired or been released.
// So a claim that reads as absent, or as past its window, is created, and a refused create
// is read again; when that read still finds nothing, Claim returns ErrClaimUnread, and the
// event is retried rather than acknowledged as suppressed (which would lose it).
func (s *Store) Claim(ctx context.Context, key, messageID, eventID string, window time.Duration) (Claimed, error) {
	full := claims.key(key)
	readFirst := s.held.held(key, s.now())
	for attempt := range 3 {
		if readFirst || attempt > 0 {
			c, err := s.readClaim(ctx, full)
			switch {
			case err == nil:
				holder, holderEvent := parseClaim(c.value)
				until := c.created.Add(window)
				s.held.saw(key, until)
				if holder == messageID {
					return Claimed{Owned: true}, nil
				}
				if attempt > 0 || until.After(s.now()) {
					return Claimed{Holder: holder, HolderEvent: holderEvent, Until: until}, nil
				}
				// Past its window by this clock, though not yet expired by the server: the
				// create below is refused if it still holds.
			case !errors.Is(err, jetstream.ErrKeyNotFound):
				return Claimed{}, err
			}
		}
		_, err := s.kv.Create(ctx, full, claimValue(messageID, eventID), jetstream.KeyTTL(window))
		if err == nil {
			s.held.saw(key, s.now().Add(window))
			return Claimed{Owned: true, Created: true}, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return Claimed{}, err
		}
		// Another event holds the window, or took it between the read and the create.
	}
	return Claimed{}, ErrClaimUnread
}

// claimReadTimeout bounds a claim's read when the caller's context has no deadline, as
// nats.go's default API timeout bounds its KV operations.
const claimReadTimeout = 5 * time.Second

// storedClaim is a claim as the bucket's stream leader holds it.
type storedClaim struct {
	value   []byte
	created time.Time
}

// readClaim reads the claim at full from the leader of the bucket's stream, not with the
// bucket's direct get, which any replica may answer. A replica that is behind may still
// show a claim its holder released (a dead-lettered task) or its own holder's claim after
// a `khook dlq retry`, and a claim decided from it would suppress an event that nothing
// suppresses, losing it, or let two tasks own one window. The leader answers with the
// latest write. A deleted, purged or expired claim reads as ErrKeyNotFound.
func (s *Store) readClaim(ctx context.Context, full string) (storedClaim, error) {
	req, err := json.Marshal(struct {
		LastBySubject string `json:"last_by_subj"`
	}{"$KV." + s.bucket + "." + full})
	if err != nil {
		return storedClaim{}, err
	}
	prefix := s.js.Options().APIPrefix
	if prefix == "" {
		prefix = jetstream.DefaultAPIPrefix
	}
	// A request whose answer is lost (the server restarted under it) would otherwise wait
	// forever and hold its worker: bound it as nats.go bounds its own KV reads.
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.readTimeout)
		defer cancel()
	}
	reply, err := s.js.Conn().RequestWithContext(ctx, prefix+"STREAM.MSG.GET.KV_"+s.bucket, req)
	if err != nil {
		return storedClaim{}, err
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error"`
		Message *struct {
			Header []byte    `json:"hdrs"`
			Data   []byte    `json:"data"`
			Time   time.Time `json:"time"`
		} `json:"message"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return storedClaim{}, fmt.Errorf("reading claim: %w", err)
	}
	if resp.Error != nil {
		if resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return storedClaim{}, jetstream.ErrKeyNotFound
		}
		return storedClaim{}, resp.Error
	}
	if resp.Message == nil {
		return storedClaim{}, fmt.Errorf("reading claim: %w", jetstream.ErrInvalidJetStreamResponse)
	}
	if len(resp.Message.Header) > 0 {
		h, err := nats.DecodeHeadersMsg(resp.Message.Header)
		if err != nil {
			return storedClaim{}, fmt.Errorf("reading claim: %w", err)
		}
		// A delete or purge marker (a released claim), or the marker an expired claim
		// leaves behind.
		if h.Get("KV-Operation") != "" || h.Get("Nats-Marker-Reason") != "" {
			return storedClaim{}, jetstream.ErrKeyNotFound
		}
	}
	return storedClaim{value: resp.Message.Data, created: resp.Message.Time}, nil
}

// heldHints remembers, per suppression key, until when this replica last saw its window
// held. It only chooses the order of Claim's operations, so it may be stale or forget: it
// is bounded by dropping everything when full, which costs a few creates that are refused.
type heldHints struct {
	mu    sync.Mutex
	until map[string]time.Time
}

const maxHeldHints = 16384

func (h *heldHints) held(key string, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.until[key].After(now)
}

func (h *heldHints) saw(key string, until time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.until == nil || len(h.until) >= maxHeldHints {
		h.until = make(map[string]time.Time)
	}
	h.until[key] = until
}

// Holder reads the suppression claim for key without taking it: which task holds it and
// until when, for a window of window. held is false when no task holds it.
func (s *Store) Holder(ctx context.Context, key string, window time.Duration) (c Claimed, held bool, err error) {
	e, err := s.kv.Get(ctx, claims.key(key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Claimed{}, false, nil
	}
	if err != nil {
		return Claimed{}, false, err
	}
	c.Holder, c.HolderEvent = parseClaim(e.Value())
	c.Until = e.Created().Add(window)
	return c, true, nil
}

// claimValue is what a claim holds: the holder's message id and, on a line of its own, its
// event's id, so that a suppressed event can name the event that suppressed it.
func claimValue(messageID, eventID string) []byte {
	return []byte(messageID + "\n" + eventID)
}

// parseClaim reads claimValue, and the message id alone that earlier versions stored.
func parseClaim(v []byte) (messageID, eventID string) {
	messageID, eventID, _ = strings.Cut(string(v), "\n")
	return messageID, eventID
}

// ErrClaimUnread is a claim that exists but could not be read; the caller retries later.
var ErrClaimUnread = errors.New("suppression claim exists but reads say it does not (a replica is behind)")

// Release gives up a claim held by messageID, so that the next event in the window may call
// the agent (used when a task is dead-lettered: suppressing events for a task that never
// reached the agent would hide them).
func (s *Store) Release(ctx context.Context, key, messageID string) error {
	full := claims.key(key)
	e, err := s.kv.Get(ctx, full)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if holder, _ := parseClaim(e.Value()); holder != messageID {
		return nil
	}
	return ignoreExists(s.kv.Delete(ctx, full, jetstream.LastRevision(e.Revision())))
}

// Settled reports whether the task is settled: its agent accepted it, or it was
// dead-lettered. A settled task is never called again for that event. A lookup error counts
// as not settled: a possible duplicate call is better than a lost one.
func (s *Store) Settled(ctx context.Context, messageID string) bool {
	_, ok := s.SettledAs(ctx, messageID)
	return ok
}

// SettledAs is Settled, with how the task settled (MarkSettled's outcome).
func (s *Store) SettledAs(ctx context.Context, messageID string) (string, bool) {
	e, err := s.kv.Get(ctx, settled.key(messageID))
	if err != nil {
		return "", false
	}
	return string(e.Value()), true
}

// MarkSettled records how a task settled ("delivered <state>", "dead-lettered <reason>").
// The task's attempt count is left to expire with the bucket's TTL: nothing reads it once
// the task is settled, and purging it would cost a write on every delivery.
func (s *Store) MarkSettled(ctx context.Context, messageID, outcome string) error {
	_, err := s.kv.Create(ctx, settled.key(messageID), []byte(outcome), jetstream.KeyTTL(s.ttl))
	return ignoreExists(err)
}

// Reopen forgets that a task settled and how many attempts it used, so that it runs again:
// `khook dlq retry` of a dead-lettered task.
func (s *Store) Reopen(ctx context.Context, messageID string) error {
	for _, key := range []string{settled.key(messageID), attempts.key(messageID)} {
		if err := s.kv.Purge(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return err
		}
	}
	return nil
}

// Attempt counts one more failed call of a task and returns the total so far.
func (s *Store) Attempt(ctx context.Context, messageID string) (int, error) {
	key := attempts.key(messageID)
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
