package state

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams/streamstest"
)

// A replica that has not applied a Release (a dead-lettered task gives its window up) still
// shows the released claim, created moments ago, inside its window. Were Claim to decide
// from it, the next event would be acknowledged as suppressed by a task that no longer
// holds the window, and lost. (Found by an adversarial review of the read-first claims.)
func TestClaimIgnoresAStaleViewOfAReleasedClaim(t *testing.T) {
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	ctx := context.Background()
	bucket, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "claims", LimitMarkerTTL: time.Second})
	require.NoError(t, err)
	kv := &staleKV{KeyValue: bucket}
	s := New(js, kv, time.Hour)

	// msg-1 takes the window; this replica now reads this key first.
	c, err := s.Claim(ctx, "k", "msg-1", "ev-1", 10*time.Minute)
	require.NoError(t, err)
	require.True(t, c.Created)
	held, err := bucket.Get(ctx, "claim.k")
	require.NoError(t, err)

	// msg-1 is dead-lettered: its claim is released at the leader.
	require.NoError(t, s.Release(ctx, "k", "msg-1"))
	_, err = bucket.Get(ctx, "claim.k")
	require.ErrorIs(t, err, jetstream.ErrKeyNotFound, "the leader holds no claim")

	// The next event's read is served by a replica that missed the release.
	kv.stale = held
	c, err = s.Claim(ctx, "k", "msg-2", "ev-2", 10*time.Minute)
	if err == nil && !c.Owned {
		t.Fatalf("event suppressed by %q, whose claim was released: no task holds the window, the event is lost", c.Holder)
	}
}

// A dead-lettered task whose claim was released, retried (khook dlq retry) while a replica
// still shows its old claim, must not be told it owns the window from that view: the next
// event would create the claim and own the same window too, and two tasks would call their
// agents in one window.
func TestClaimIgnoresAStaleViewOfItsOwnReleasedClaim(t *testing.T) {
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	ctx := context.Background()
	bucket, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "claims", LimitMarkerTTL: time.Second})
	require.NoError(t, err)
	kv := &staleKV{KeyValue: bucket}
	s := New(js, kv, time.Hour)

	c, err := s.Claim(ctx, "k", "msg-1", "ev-1", 10*time.Minute)
	require.NoError(t, err)
	require.True(t, c.Created)
	held, err := bucket.Get(ctx, "claim.k")
	require.NoError(t, err)
	require.NoError(t, s.Release(ctx, "k", "msg-1")) // dead-lettered

	kv.stale = held // the retried task's read: a replica that missed the release
	first, err := s.Claim(ctx, "k", "msg-1", "ev-1", 10*time.Minute)
	require.NoError(t, err)
	second, err := s.Claim(ctx, "k", "msg-2", "ev-2", 10*time.Minute)
	require.NoError(t, err)
	require.False(t, first.Owned && second.Owned, "msg-1 (owned: %+v) and msg-2 (owned: %+v) both own the window", first, second)
}

// staleKV is a real bucket whose next Get answers with an entry a lagging replica still
// holds, as a direct get served by a follower can.
type staleKV struct {
	jetstream.KeyValue
	stale jetstream.KeyValueEntry
}

func (k *staleKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if e := k.stale; e != nil {
		k.stale = nil
		return e, nil
	}
	return k.KeyValue.Get(ctx, key)
}

// A claim's read whose answer is lost (the server restarted under it) must end: the
// dispatcher's contexts carry no deadline, and a read that waited forever held its worker,
// and with it the event, until the soak's settling check gave up.
func TestClaimReadIsBoundedWhenItsAnswerIsLost(t *testing.T) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true})
	require.NoError(t, err)
	ns.Start()
	t.Cleanup(ns.Shutdown)
	require.True(t, ns.ReadyForConnections(10*time.Second))
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	// No JetStream here: the only responder takes the request and never answers.
	_, err = nc.Subscribe("$JS.API.STREAM.MSG.GET.KV_claims", func(*nats.Msg) {})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())

	s := &Store{js: js, bucket: "claims", now: time.Now, readTimeout: 50 * time.Millisecond}
	_, err = s.readClaim(context.Background(), "claim.k")
	require.ErrorIs(t, err, context.DeadlineExceeded)
}
