package mapper

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/deadletter"
	"github.com/khook/khook/streams/streamstest"
)

// clusterEvent is a raw deploy-failed envelope with id and cluster, as an edge's producer
// writes it.
func clusterEvent(t *testing.T, id, cluster string) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"specversion": "1.0", "id": id, "source": "webhook", "type": "deploy-failed",
		"cluster": cluster, "data": map[string]any{"namespace": "shop", "resourceName": "cart"}})
	require.NoError(t, err)
	return b
}

// A raw event from a cluster keeps it and its cluster-scoped id through the mapper; one whose
// cluster is not a cluster's name, which no khook producer writes, is dead-lettered with the
// reason instead of failing the event's encoding forever.
func TestMapperKeepsTheClusterAndRefusesABadOne(t *testing.T) {
	ctx := context.Background()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	_, err := streams.Apply(ctx, js, topo)
	require.NoError(t, err)
	rules, err := mapping.Parse([]byte("mappings:\n  - eventSource: webhook\n    eventType: deploy-failed\n    severity: error\n"))
	require.NoError(t, err)
	raw := func(id, cluster string) []byte { return clusterEvent(t, id, cluster) }
	publishRaw(t, js, "khook.raw.webhook.deploy-failed", "webhook/@eu-1/a", raw("webhook/@eu-1/a", "eu-1"))
	publishRaw(t, js, "khook.raw.webhook.deploy-failed", "webhook/@Bad.One/b", raw("webhook/@Bad.One/b", "Bad.One"))
	mapAll(t, New(js, topo, rules, prometheus.NewRegistry(), zaptest.NewLogger(t)), js, topo, 2)

	events, err := js.Stream(ctx, topo.Events.Name)
	require.NoError(t, err)
	out, err := events.GetLastMsgForSubject(ctx, "khook.events.deploy-failed")
	require.NoError(t, err)
	ev, err := mapping.DecodeEvent(out.Data)
	require.NoError(t, err)
	require.Equal(t, "eu-1", ev.Cluster)
	require.Equal(t, "webhook/@eu-1/a", ev.ID)
	ce, err := cloudevent.Decode(out.Data)
	require.NoError(t, err)
	require.Equal(t, "eu-1", ce.Cluster)

	dlq, err := js.Stream(ctx, topo.DLQ.Name)
	require.NoError(t, err)
	dl, err := dlq.GetLastMsgForSubject(ctx, "khook.dlq.mapper")
	require.NoError(t, err)
	require.Equal(t, "invalid-envelope", dl.Header.Get(deadletter.HeaderReason))
	require.Contains(t, dl.Header.Get(deadletter.HeaderError), "cluster")
}

// At a hub, an event published there that claims one of its edges' clusters is dead-lettered:
// only what the hub sources from an edge speaks for that edge. The hub's own cluster, not an
// edge, is its producers' to stamp.
func TestHubRefusesALocalEventClaimingAnEdge(t *testing.T) {
	ctx := context.Background()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	_, err := streams.Apply(ctx, js, topo)
	require.NoError(t, err)
	topo.Edges = []string{"eu-1"}
	rules, err := mapping.Parse([]byte("mappings:\n  - eventSource: webhook\n    eventType: deploy-failed\n    severity: error\n"))
	require.NoError(t, err)
	raw := func(id, cluster string) []byte { return clusterEvent(t, id, cluster) }
	publishRaw(t, js, "khook.raw.webhook.deploy-failed", "webhook/@eu-1/forged", raw("webhook/@eu-1/forged", "eu-1"))
	publishRaw(t, js, "khook.raw.webhook.deploy-failed", "webhook/@hub-1/own", raw("webhook/@hub-1/own", "hub-1"))
	mapAll(t, New(js, topo, rules, prometheus.NewRegistry(), zaptest.NewLogger(t)), js, topo, 2)

	dlq, err := js.Stream(ctx, topo.DLQ.Name)
	require.NoError(t, err)
	dl, err := dlq.GetLastMsgForSubject(ctx, "khook.dlq.mapper")
	require.NoError(t, err)
	require.Equal(t, "cluster-not-sourced", dl.Header.Get(deadletter.HeaderReason))
	events, err := js.Stream(ctx, topo.Events.Name)
	require.NoError(t, err)
	out, err := events.GetLastMsgForSubject(ctx, "khook.events.deploy-failed")
	require.NoError(t, err)
	ev, err := mapping.DecodeEvent(out.Data)
	require.NoError(t, err)
	require.Equal(t, "hub-1", ev.Cluster)
	info, err := events.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Msgs, "the forged event is not mapped")
}
