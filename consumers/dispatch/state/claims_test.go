package state

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams/streamstest"
)

// laggingKV is a real bucket whose next reads answer as a replica that has not applied the
// latest writes yet: "not found". Direct gets, which KV reads use, may be served by any
// replica, so this is what a dispatcher sees around a stream leader change.
type laggingKV struct {
	jetstream.KeyValue
	staleReads atomic.Int32
}

func (k *laggingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if k.staleReads.Add(-1) >= 0 {
		return nil, jetstream.ErrKeyNotFound
	}
	return k.KeyValue.Get(ctx, key)
}

// Claims are read from the bucket's stream leader, never with a direct get that any replica
// may answer: a claim that exists but a lagging replica does not show is still found, and
// the event is neither suppressed by a claim that is gone nor given a window another holds.
func TestClaimIsReadAtTheLeaderNotFromALaggingReplica(t *testing.T) {
	nc, js := streamstest.Connect(t, streamstest.RunServer(t))
	ctx := context.Background()
	bucket, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "claims", LimitMarkerTTL: time.Second})
	require.NoError(t, err)
	kv := &laggingKV{KeyValue: bucket}
	s := New(js, kv, time.Hour)
	leaderReads := countRequests(t, nc, "$JS.API.STREAM.MSG.GET.KV_claims")

	// The claim was created by this message, but its acknowledgement was lost: the
	// dispatcher saw an error and the event came back, while every replica answering
	// direct gets is behind.
	_, err = bucket.Create(ctx, "claim.k", []byte("msg-1"), jetstream.KeyTTL(time.Minute))
	require.NoError(t, err)
	kv.staleReads.Store(10)
	c, err := s.Claim(ctx, "k", "msg-1", "ev-1", time.Minute)
	require.NoError(t, err)
	require.True(t, c.Owned)
	require.False(t, c.Created, "found, not made")

	// Another message is suppressed by it, and told which holds it: a claim stored before
	// claims named their event has only the message id.
	c, err = s.Claim(ctx, "k", "msg-2", "ev-2", time.Minute)
	require.NoError(t, err)
	require.False(t, c.Owned)
	require.Equal(t, "msg-1", c.Holder)
	require.Empty(t, c.HolderEvent)
	require.WithinDuration(t, time.Now().Add(time.Minute), c.Until, 10*time.Second)
	require.Equal(t, int32(2), leaderReads.take(), "each decision read at the leader")

	// A key nobody holds is created by the call; whoever comes next learns its event.
	c, err = s.Claim(ctx, "k2", "msg-3", "ev-3", time.Minute)
	require.NoError(t, err)
	require.True(t, c.Owned)
	require.True(t, c.Created)
	c, err = s.Claim(ctx, "k2", "msg-4", "ev-4", time.Minute)
	require.NoError(t, err)
	require.Equal(t, Claimed{Holder: "msg-3", HolderEvent: "ev-3", Until: c.Until}, c)
	// Reading the holder, as a replay's dry run does, tells the same and takes nothing.
	kv.staleReads.Store(0)
	h, held, err := s.Holder(ctx, "k2", time.Minute)
	require.NoError(t, err)
	require.True(t, held)
	require.Equal(t, c.Holder, h.Holder)
	_, held, err = s.Holder(ctx, "nobody-holds-this", time.Minute)
	require.NoError(t, err)
	require.False(t, held)
	_, err = bucket.Get(ctx, "claim.nobody-holds-this")
	require.ErrorIs(t, err, jetstream.ErrKeyNotFound, "a read makes no claim")

	// The holder releases its own claim, and only its own.
	require.NoError(t, s.Release(ctx, "k2", "msg-4"))
	c, err = s.Claim(ctx, "k2", "msg-4", "ev-4", time.Minute)
	require.NoError(t, err)
	require.False(t, c.Owned)
	require.NoError(t, s.Release(ctx, "k2", "msg-3"))
	c, err = s.Claim(ctx, "k2", "msg-4", "ev-4", time.Minute)
	require.NoError(t, err)
	require.True(t, c.Created)
}

// requests counts the requests published on a subject, by listening beside the server.
type requests struct {
	t   *testing.T
	nc  *nats.Conn
	sub *nats.Subscription
}

func countRequests(t *testing.T, nc *nats.Conn, subject string) *requests {
	sub, err := nc.SubscribeSync(subject)
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return &requests{t: t, nc: nc, sub: sub}
}

// take returns how many requests were published since the last take. The flush's round
// trip puts every earlier request's copy in the subscription's queue.
func (r *requests) take() int32 {
	require.NoError(r.t, r.nc.Flush())
	n, _, err := r.sub.Pending()
	require.NoError(r.t, err)
	for range n {
		_, err := r.sub.NextMsg(time.Second)
		require.NoError(r.t, err)
	}
	return int32(n)
}

// countingKV is a real bucket that counts the reads and creates made through it, and can
// answer the next read with an entry a lagging replica still holds.
type countingKV struct {
	jetstream.KeyValue
	gets, creates atomic.Int32
}

func (k *countingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	k.gets.Add(1)
	return k.KeyValue.Get(ctx, key)
}

func (k *countingKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	k.creates.Add(1)
	return k.KeyValue.Create(ctx, key, value, opts...)
}

// A suppressed event costs one read once this replica has seen its window held: the
// storm's path. A new window costs one create. Every other answer is decided by the
// stream's leader.
func TestClaimReadsFirstWhereItSawTheWindowHeld(t *testing.T) {
	nc, js := streamstest.Connect(t, streamstest.RunServer(t))
	ctx := context.Background()
	bucket, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "claims", LimitMarkerTTL: time.Second})
	require.NoError(t, err)
	kv := &countingKV{KeyValue: bucket}
	s := New(js, kv, time.Hour)
	reads := countRequests(t, nc, "$JS.API.STREAM.MSG.GET.KV_claims")
	ops := func() [2]int32 { return [2]int32{reads.take(), kv.creates.Swap(0)} }

	c, err := s.Claim(ctx, "k", "msg-1", "ev-1", time.Minute)
	require.NoError(t, err)
	require.True(t, c.Created)
	require.Equal(t, [2]int32{0, 1}, ops(), "a new window: one create")

	for i := range 100 {
		c, err = s.Claim(ctx, "k", "msg-other", "ev-other", time.Minute)
		require.NoError(t, err)
		require.Equal(t, "msg-1", c.Holder, "event %d", i)
	}
	require.Equal(t, [2]int32{100, 0}, ops(), "each suppressed event: one read, nothing written")

	// Another replica (a store that has seen nothing) learns the holder from a refused
	// create, and from then on reads first too.
	other := New(js, kv, time.Hour)
	c, err = other.Claim(ctx, "k", "msg-2", "ev-2", time.Minute)
	require.NoError(t, err)
	require.Equal(t, "msg-1", c.Holder)
	require.Equal(t, [2]int32{1, 1}, ops())
	_, err = other.Claim(ctx, "k", "msg-3", "ev-3", time.Minute)
	require.NoError(t, err)
	require.Equal(t, [2]int32{1, 0}, ops())

	// A claim older than the window this event's Hook now asks for (its window was
	// shortened, or the server has not expired it yet): the leader still holds it, so the
	// create is refused and the event is suppressed, as it always was.
	c, err = s.Claim(ctx, "k", "msg-other", "ev-other", time.Nanosecond)
	require.NoError(t, err)
	require.Equal(t, "msg-1", c.Holder)
	require.Equal(t, [2]int32{2, 1}, ops())

	// A released claim, where this replica still remembers the window held: the read
	// finds the release, and the create takes the window.
	_, err = s.Claim(ctx, "k", "msg-other", "ev-other", time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Release(ctx, "k", "msg-1"))
	ops()
	c, err = s.Claim(ctx, "k", "msg-5", "ev-5", time.Minute)
	require.NoError(t, err)
	require.True(t, c.Owned)
	require.True(t, c.Created)
	require.Equal(t, [2]int32{1, 1}, ops())
}

func TestHeldHintsStayBounded(t *testing.T) {
	var h heldHints
	now := time.Now()
	for i := range maxHeldHints + 10 {
		h.saw(fmt.Sprint("key-", i), now.Add(time.Minute))
	}
	require.LessOrEqual(t, len(h.until), maxHeldHints)
	require.True(t, h.held(fmt.Sprint("key-", maxHeldHints+9), now))
	require.False(t, h.held(fmt.Sprint("key-", maxHeldHints+9), now.Add(2*time.Minute)), "a window past its end is not held")
}
