package state

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/streamstest"
)

// openStore applies khook's topology, with the dispatch bucket's TTL set to ttl, on a fresh
// JetStream server, and opens the state from a connection of its own.
func openStore(t *testing.T, ttl time.Duration) (*Store, *server.Server, streams.Config) {
	t.Helper()
	ns := streamstest.RunServer(t)
	_, js := streamstest.Connect(t, ns)
	topo := streams.Default()
	topo.DispatchTTL = ttl
	_, err := streams.Apply(context.Background(), js, topo)
	require.NoError(t, err)
	return replica(t, ns, topo), ns, topo
}

// replica opens the state from another connection: another dispatcher replica.
func replica(t *testing.T, ns *server.Server, topo streams.Config) *Store {
	t.Helper()
	_, js := streamstest.Connect(t, ns)
	s, err := Open(context.Background(), js, topo)
	require.NoError(t, err)
	return s
}

// rawKV is the bucket itself, for a test's own reads.
func rawKV(t *testing.T, ns *server.Server, topo streams.Config) jetstream.KeyValue {
	t.Helper()
	_, js := streamstest.Connect(t, ns)
	kv, err := js.KeyValue(context.Background(), topo.DispatchBucket)
	require.NoError(t, err)
	return kv
}
