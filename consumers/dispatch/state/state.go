// Package state owns the dispatch bucket: the state every dispatcher replica shares, in one
// JetStream KV bucket. Nothing else touches the bucket. Each kind of record has one key
// prefix and one lifetime, in the table below; each is changed atomically (create-if-absent
// or compare-and-set on its revision), never decided in one process's memory.
//
// It is to the dispatcher what Alertmanager's nflog and silence packages are to its
// dispatcher: the record of what was claimed, sent and waiting, kept apart from the code
// that decides what to send.
package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/streams"
)

// kind is one kind of record: its key prefix and how long it lives.
type kind struct {
	prefix string
	life   lifetime
}

// lifetime says when a record expires.
type lifetime int

const (
	// bucketTTL: the bucket's own TTL (streams.dispatch_ttl) after its last write.
	bucketTTL lifetime = iota
	// ownTTL: a TTL given with each write (a suppression claim's window).
	ownTTL
	// untilDeleted: never by time. Waiting work (a group's events, a task queued for its
	// agent's budget) and the budgets themselves live until khook deletes them, however
	// long a budget or a groupInterval makes them wait.
	untilDeleted
)

// The bucket's records. Key layout: <prefix><rest>, with the rest described at each kind.
var (
	// claims: claim.<suppression key>, the suppression claim of (hook entry, event key),
	// whose value is the message id that holds it, and whose TTL is the window.
	claims = kind{"claim.", ownTTL}
	// settled: settled.<message id>, a task that was delivered or dead-lettered, so that it
	// is never called again.
	settled = kind{"settled.", bucketTTL}
	// attempts: attempts.<message id>, how many real calls a task has used.
	attempts = kind{"attempts.", bucketTTL}
	// active: active.<hash of hook>.<hash of event key>, the firing/resolved record of
	// one event key per Hook, for Hook status.
	active = kind{"active.", bucketTTL}
	// groups: group.<group key>, one group's gathered events, its timer and its lease; also
	// an ungrouped task waiting for its agent's budget (a group of one).
	groups = kind{"group.", untilDeleted}
	// budgets: budget.<hash of agent>, one agent's budget in use.
	budgets = kind{"budget.", untilDeleted}
)

func (k kind) key(rest string) string { return k.prefix + rest }

// Store is the dispatch state, kept in the dispatch bucket.
type Store struct {
	kv     jetstream.KeyValue
	js     jetstream.JetStream
	bucket string
	ttl    time.Duration // the bucket's TTL: lifetime of settled, attempt and active records
	// maxValue is the largest record the server accepts (its max_payload, less room for
	// headers); a record past it is ErrTooLarge, not a write that fails forever.
	maxValue int
	now      func() time.Time
	cache    groupCache // the group records this replica wrote last
	held     heldHints  // the suppression windows this replica saw held lately
	// readTimeout bounds a claim's read from the stream leader (claimReadTimeout).
	readTimeout time.Duration
}

// Open opens the dispatch bucket of topo. It is opened before the dispatcher's actors start
// and handed to each that reads it (the dispatcher, the Hook status writer), so none of them
// waits on another to open it.
func Open(ctx context.Context, js jetstream.JetStream, topo streams.Config) (*Store, error) {
	kv, err := js.KeyValue(ctx, topo.DispatchBucket)
	if err != nil {
		return nil, fmt.Errorf("dispatch state: kv %s: %w", topo.DispatchBucket, err)
	}
	return New(js, kv, topo.DispatchTTL), nil
}

// New returns the state kept in kv, a bucket of js.
func New(js jetstream.JetStream, kv jetstream.KeyValue, ttl time.Duration) *Store {
	s := &Store{kv: kv, js: js, bucket: kv.Bucket(), ttl: ttl, now: time.Now, readTimeout: claimReadTimeout}
	if limit := streams.MaxPayload(js); limit > 0 {
		s.maxValue = limit - 1024
	}
	return s
}

// Reconnects counts the connection's reconnections to NATS. A watch may stall for a while
// after one (its consumer is recreated when heartbeats go missing), so a watcher that sees
// the count change starts afresh.
func (s *Store) Reconnects() uint64 { return s.js.Conn().Stats().Reconnects }

// ErrTooLarge is a record that would not fit in one message of the server: it cannot be
// stored, on this try or any other.
var ErrTooLarge = errors.New("record larger than the server's max_payload")

// errDelete ends a change by deleting the record.
var errDelete = errors.New("delete")

// casTries bounds one compare-and-set loop; past it the caller retries later.
const casTries = 50

// compareAndSet applies change to the JSON record at key and writes the result by
// compare-and-set, trying again on the record another replica wrote first. A missing record
// starts as empty. change returns false to write nothing, or errDelete to delete the record.
// start, when it returns true, gives the record and revision to try first instead of reading
// the bucket; a stale one fails the compare-and-set, and the next try reads. It returns the
// record written and its revision, zero when nothing was written.
//
// Every record of a kind with an untilDeleted life is written with a per-message TTL of
// "never", so the bucket's TTL never expires it.
func compareAndSet[T any](ctx context.Context, s *Store, k kind, key string, empty T,
	start func() (T, uint64, bool), change func(r *T, exists bool) (bool, error)) (T, uint64, error) {
	full := k.key(key)
	for try := range casTries {
		r, rev, ok := empty, uint64(0), false
		if try == 0 && start != nil {
			r, rev, ok = start()
		}
		if !ok {
			var err error
			if r, rev, err = read(ctx, s.kv, full, empty); err != nil {
				return empty, 0, err
			}
		}
		write, err := change(&r, rev != 0)
		var next uint64
		switch {
		case errors.Is(err, errDelete):
			err = s.kv.Delete(ctx, full, jetstream.LastRevision(rev))
		case err != nil || !write:
			return empty, 0, err
		default:
			var b []byte
			if b, err = json.Marshal(&r); err != nil {
				return empty, 0, err
			}
			extra := 0
			if rr, ok := any(&r).(reserver); ok {
				extra = rr.reserve()
			}
			next, err = s.put(ctx, k, full, b, rev, extra)
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
	return empty, 0, fmt.Errorf("%s: too many concurrent updates", full)
}

// read returns the JSON record at key and its revision, or empty and 0 when there is none.
func read[T any](ctx context.Context, kv jetstream.KeyValue, key string, empty T) (T, uint64, error) {
	e, err := kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return empty, 0, nil
	case err != nil:
		return empty, 0, err
	}
	r := empty
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return empty, 0, fmt.Errorf("%s: %w", key, err)
	}
	return r, e.Revision(), nil
}

// reserver is a record that keeps room for a later write of itself (a group, for its lease).
type reserver interface{ reserve() int }

// put writes value at key if the key's revision is still rev (0: the key has no value),
// keeping reserve bytes of room below the largest record.
func (s *Store) put(ctx context.Context, k kind, key string, value []byte, rev uint64, reserve int) (uint64, error) {
	if s.maxValue > 0 && len(value)+reserve > s.maxValue {
		return 0, fmt.Errorf("%s: %d bytes: %w", key, len(value), ErrTooLarge)
	}
	if k.life != untilDeleted {
		if rev == 0 {
			return s.kv.Create(ctx, key, value)
		}
		return s.kv.Update(ctx, key, value, rev)
	}
	// The KV API sets no per-message TTL on an update, and only a duration on a create, so
	// a record that must outlive the bucket's TTL is published as the KV API would publish
	// it, with the TTL "never".
	m := &nats.Msg{Subject: "$KV." + s.bucket + "." + key, Data: value, Header: nats.Header{}}
	m.Header.Set(jetstream.MsgTTLHeader, "never")
	for range 2 {
		ack, err := s.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(rev))
		if err == nil {
			return ack.Sequence, nil
		}
		if rev != 0 || !isWrongLastSequence(err) {
			return 0, mapConflict(err)
		}
		// A key that was deleted still has its delete marker as its last message: a
		// create expects that marker's sequence, as the KV API's Create does.
		marker, merr := s.deletedAt(ctx, key)
		if merr != nil || marker == 0 {
			return 0, mapConflict(err)
		}
		rev = marker
	}
	return 0, jetstream.ErrKeyExists
}

// deletedAt returns the sequence of key's delete or purge marker, or 0 when its last
// message is a value or there is none.
func (s *Store) deletedAt(ctx context.Context, key string) (uint64, error) {
	st, err := s.js.Stream(ctx, "KV_"+s.bucket)
	if err != nil {
		return 0, err
	}
	m, err := st.GetLastMsgForSubject(ctx, "$KV."+s.bucket+"."+key)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	// A marker khook wrote carries KV-Operation; one the server wrote when a record aged out
	// (the bucket's TTL, then LimitMarkerTTL) carries Nats-Marker-Reason instead.
	switch {
	case m.Header.Get("KV-Operation") == "DEL", m.Header.Get("KV-Operation") == "PURGE",
		m.Header.Get("Nats-Marker-Reason") != "":
		return m.Sequence, nil
	}
	return 0, nil
}

func isWrongLastSequence(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && (api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// mapConflict makes a lost compare-and-set of a raw publish look like the KV API's.
func mapConflict(err error) error {
	if isWrongLastSequence(err) {
		return fmt.Errorf("%w: %w", err, jetstream.ErrKeyRevisionMismatch)
	}
	return err
}

// isConflict is a compare-and-set that lost to another writer.
func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

func ignoreExists(err error) error {
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil
	}
	return err
}

// list reads every JSON record of kind k whose key after the prefix matches filter, by that
// rest of the key. A record that expires or fails to decode between the listing and its read
// is left out.
func list[T any](ctx context.Context, s *Store, k kind, filter string) (map[string]T, error) {
	out := map[string]T{}
	lister, err := s.kv.ListKeysFiltered(ctx, k.key(filter))
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	for key := range lister.Keys() {
		e, err := s.kv.Get(ctx, key)
		if err != nil {
			continue
		}
		var r T
		if json.Unmarshal(e.Value(), &r) == nil {
			out[key[len(k.prefix):]] = r
		}
	}
	return out, nil
}

// inKeyOrder returns the records in the order of their keys, as the bucket lists them.
func inKeyOrder[T any](records map[string]T) []T {
	out := make([]T, 0, len(records))
	for _, key := range slices.Sorted(maps.Keys(records)) {
		out = append(out, records[key])
	}
	return out
}
