package mapping

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams/cloudevent"
)

// A raw event from a cluster keeps its cluster through mapping, and its key is scoped by it:
// the same sender id from two clusters makes two events.
func TestTheClusterTravelsWithTheEvent(t *testing.T) {
	ce := &cloudevent.Event{SpecVersion: "1.0", ID: "abc", Source: "webhook", Type: "deploy-failed", Cluster: "eu-1",
		Subject: "prod/Deployment/web", Data: json.RawMessage(`{"x":1}`)}
	raw := RawOf("webhook", "webhook/@eu-1/abc", ce)
	require.Equal(t, "eu-1", raw.Cluster)
	require.Equal(t, "webhook/@eu-1/abc", raw.ID)
	other := *ce
	other.Cluster = "us-1"
	require.Equal(t, "webhook/@us-1/webhook/@eu-1/abc", RawOf("webhook", "webhook/@eu-1/abc", &other).ID,
		"a message may not take another cluster's key")

	ev := Event{ID: raw.ID, Source: "webhook", Cluster: raw.Cluster, SourceType: "deploy-failed", Type: "deploy-failed",
		Severity: "error", Namespace: "prod", Resource: Resource{Kind: "Deployment", Name: "web"}, Time: time.Unix(1, 0).UTC(),
		Data: json.RawMessage(`{"x":1}`)}
	b, err := ev.Encode()
	require.NoError(t, err)
	back, err := DecodeEvent(b)
	require.NoError(t, err)
	require.Equal(t, ev, back)
	env, err := cloudevent.Decode(b)
	require.NoError(t, err)
	require.Equal(t, "eu-1", env.Cluster, "the normalized event's envelope names its cluster too")
	var viaJSON Event
	require.NoError(t, json.Unmarshal(env.Data, &viaJSON))
	require.Equal(t, ev, viaJSON, "the hand-written encoding is the struct's JSON")
}
