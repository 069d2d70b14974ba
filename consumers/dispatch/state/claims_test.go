package state

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

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

// A claim that exists but reads as absent is neither this message's nor another's: Claim
// must not report it as held by another event (the dispatcher would acknowledge the event as
// suppressed and it would never reach its agent). It reports an error, so the event is
// retried, and the retry finds the claim its own.
func TestClaimReadFromALaggingReplicaIsRetriedNotSuppressed(t *testing.T) {
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	ctx := context.Background()
	bucket, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "claims", LimitMarkerTTL: time.Second})
	require.NoError(t, err)
	kv := &laggingKV{KeyValue: bucket}
	s := New(js, kv, time.Hour)

	// The claim was created by this message, but its acknowledgement was lost: the
	// dispatcher saw an error and the event came back.
	_, err = bucket.Create(ctx, "claim.k", []byte("msg-1"), jetstream.KeyTTL(time.Minute))
	require.NoError(t, err)

	kv.staleReads.Store(10)
	owned, created, err := s.Claim(ctx, "k", "msg-1", time.Minute)
	require.ErrorIs(t, err, ErrClaimUnread)
	require.False(t, owned)
	require.False(t, created)

	// Once reads catch up, the redelivery finds its own claim and calls the agent.
	kv.staleReads.Store(0)
	owned, created, err = s.Claim(ctx, "k", "msg-1", time.Minute)
	require.NoError(t, err)
	require.True(t, owned)
	require.False(t, created, "found, not made")

	// Another message is suppressed by it, as before.
	owned, _, err = s.Claim(ctx, "k", "msg-2", time.Minute)
	require.NoError(t, err)
	require.False(t, owned)

	// One stale read among fresh ones costs nothing: the next read is fresh.
	kv.staleReads.Store(1)
	owned, _, err = s.Claim(ctx, "k", "msg-1", time.Minute)
	require.NoError(t, err)
	require.True(t, owned)

	// A key nobody holds is created by the call.
	owned, created, err = s.Claim(ctx, "k2", "msg-3", time.Minute)
	require.NoError(t, err)
	require.True(t, owned)
	require.True(t, created)
}
