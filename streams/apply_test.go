package streams_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/streamstest"
)

func TestApplyIsIdempotentAndAppliesChanges(t *testing.T) {
	ctx := context.Background()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	cfg := streams.Default()

	first, err := streams.Apply(ctx, js, cfg)
	require.NoError(t, err)
	require.Len(t, first, 7)
	for _, c := range first {
		require.Equal(t, streams.Created, c.Action, c.String())
	}

	second, err := streams.Apply(ctx, js, cfg)
	require.NoError(t, err)
	for _, c := range second {
		require.Equal(t, streams.Unchanged, c.Action, c.String())
	}

	// A changed max age and consumer ack wait are applied to the existing objects.
	cfg.Raw.MaxAge = time.Hour
	cfg.Mapper.AckWait = 45 * time.Second
	third, err := streams.Apply(ctx, js, cfg)
	require.NoError(t, err)
	actions := map[string]streams.Action{}
	for _, c := range third {
		actions[c.Kind+" "+c.Name] = c.Action
	}
	require.Equal(t, streams.Updated, actions["stream KHOOK_RAW"])
	require.Equal(t, streams.Unchanged, actions["stream KHOOK_EVENTS"])
	require.Equal(t, streams.Updated, actions["consumer KHOOK_RAW/khook-mapper"])

	s, err := js.Stream(ctx, "KHOOK_RAW")
	require.NoError(t, err)
	require.Equal(t, time.Hour, s.CachedInfo().Config.MaxAge)
	c, err := js.Consumer(ctx, "KHOOK_RAW", "khook-mapper")
	require.NoError(t, err)
	require.Equal(t, 45*time.Second, c.CachedInfo().Config.AckWait)
	// The stream's data subjects follow the prefix.
	require.Equal(t, []string{"khook.raw.>"}, s.CachedInfo().Config.Subjects)
}

// TestPlanChangesNothingAndSaysWhatWouldGo: the dry run of streams apply creates nothing on
// an empty server, and on an existing one names every setting it would change, with what a
// shorter retention would delete, while the server keeps its settings and its messages.
func TestPlanChangesNothingAndSaysWhatWouldGo(t *testing.T) {
	ctx := context.Background()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	cfg := streams.Default()

	plan, err := streams.Plan(ctx, js, cfg)
	require.NoError(t, err)
	require.Len(t, plan, 7)
	for _, c := range plan {
		require.Equal(t, streams.Created, c.Action)
		require.True(t, strings.HasSuffix(c.String(), "would be created"), c.String())
	}
	_, err = js.Stream(ctx, "KHOOK_RAW")
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound, "a dry run creates nothing")

	_, err = streams.Apply(ctx, js, cfg)
	require.NoError(t, err)
	_, err = js.Publish(ctx, "khook.raw.webhook.x", []byte("{}"))
	require.NoError(t, err)

	cfg.Raw.MaxAge = 24 * time.Hour
	cfg.Raw.MaxMsgs = 1000
	cfg.Dispatcher.MaxAckPending = 64
	plan, err = streams.Plan(ctx, js, cfg)
	require.NoError(t, err)
	byName := map[string]streams.Change{}
	for _, c := range plan {
		byName[c.Kind+" "+c.Name] = c
	}
	raw := byName["stream KHOOK_RAW"]
	require.Equal(t, streams.Updated, raw.Action)
	require.Equal(t, []string{
		"max_age: 72h0m0s -> 24h0m0s (deletes the messages older than the new age now)",
		"max_msgs: -1 -> 1000 (deletes the oldest messages over the new count now)",
	}, raw.Diff)
	require.Contains(t, raw.String(), "stream KHOOK_RAW would be updated\n  max_age: 72h0m0s -> 24h0m0s")
	require.Equal(t, []string{"max_ack_pending: 256 -> 64"}, byName["consumer KHOOK_EVENTS/khook-dispatcher"].Diff)
	require.Equal(t, streams.Unchanged, byName["stream KHOOK_EVENTS"].Action)

	s, err := js.Stream(ctx, "KHOOK_RAW")
	require.NoError(t, err)
	require.Equal(t, 72*time.Hour, s.CachedInfo().Config.MaxAge, "the dry run changed nothing")
	require.Equal(t, uint64(1), s.CachedInfo().State.Msgs)

	applied, err := streams.Apply(ctx, js, cfg)
	require.NoError(t, err)
	require.Equal(t, raw.Diff, applied[0].Diff, "apply reports the same changes it made")
	require.Equal(t, "stream KHOOK_RAW updated\n  "+strings.Join(raw.Diff, "\n  "), applied[0].String())
}

func TestApplyWithCustomPrefixSharesServer(t *testing.T) {
	ctx := context.Background()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	a := streams.Default()
	b := streams.Default()
	b.Prefix = "team-b"
	b.Raw.Name, b.Events.Name, b.DLQ.Name = "B_RAW", "B_EVENTS", "B_DLQ"
	b.DispatchBucket = "B_DISPATCH"
	_, err := streams.Apply(ctx, js, a)
	require.NoError(t, err)
	_, err = streams.Apply(ctx, js, b)
	require.NoError(t, err)
	s, err := js.Stream(ctx, "B_RAW")
	require.NoError(t, err)
	require.Equal(t, []string{"team-b.raw.>"}, s.CachedInfo().Config.Subjects)
}

func TestValidateNamesKeys(t *testing.T) {
	cfg := streams.Default()
	cfg.Prefix = "Bad.Prefix"
	cfg.Raw.Replicas = 0
	cfg.Events.Storage = "disk"
	cfg.Dispatcher.AckWait = 0
	err := cfg.Validate("streams")
	require.Error(t, err)
	for _, want := range []string{"streams.prefix", "streams.raw.replicas", "streams.events.storage", "streams.dispatcher.ack_wait"} {
		require.Contains(t, err.Error(), want)
	}
}
