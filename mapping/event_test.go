package mapping

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams/cloudevent"
)

// The normalized event's message body round-trips, and its envelope repeats what routing
// and tracing read without decoding the data.
func TestEventEncodesAsACloudEvent(t *testing.T) {
	ev := Event{ID: "webhook/1", Source: "webhook", SourceType: "deploy-failed", Type: "deploy-failed", Severity: "error",
		Namespace: "shop", Resource: Resource{Kind: "Deployment", Name: "cart"}, Message: "rollout stuck",
		Time: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC), Data: []byte(`{"a":1}`)}
	body, err := ev.Encode()
	require.NoError(t, err)
	ce, err := cloudevent.Decode(body)
	require.NoError(t, err)
	require.Equal(t, "webhook/1", ce.ID)
	require.Equal(t, "deploy-failed", ce.Type)
	require.Equal(t, "shop/Deployment/cart", ce.Subject)
	back, err := DecodeEvent(body)
	require.NoError(t, err)
	require.Equal(t, ev, back)

	_, err = DecodeEvent([]byte(`{"specversion":"1.0","id":"x","source":"s","type":"t","data":"not an event"}`))
	require.ErrorContains(t, err, "normalized event")
	_, err = DecodeEvent([]byte(`not json`))
	require.Error(t, err)
}
