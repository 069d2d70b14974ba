package streams_test

import (
	"context"
	"testing"
	"time"

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
	require.Len(t, first, 6)
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
