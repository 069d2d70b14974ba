package webhook

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// A sender's own "cluster" attribute is not khook's cluster: whatever its value, the event
// is accepted, the raw event has no cluster (the producer's cluster: setting decides it),
// and the sender's value is kept beside it as "sendercluster", in both CloudEvents modes.
func TestSenderClusterAttributeIsKeptAsSenderCluster(t *testing.T) {
	f := start(t, DefaultConfig())
	for i, v := range []string{`"prod-eu"`, `"Prod_EU"`, `"prod.eu-west-1"`} {
		typ := []string{"sync-a", "sync-b", "sync-c"}[i]
		r := f.post(t, f.url, "application/cloudevents+json",
			`{"specversion":"1.0","id":"`+typ+`","source":"argo","type":"`+typ+`","cluster":`+v+`,"data":{}}`)
		require.Equal(t, http.StatusAccepted, r.code, "cluster %s: %v", v, r.body)
		ce, _ := f.last(t, "khook.raw.webhook."+typ)
		require.Empty(t, ce.Cluster)
		require.Equal(t, v[1:len(v)-1], ce.Extensions[SenderClusterExtension])
	}
	r := f.post(t, f.url, "application/cloudevents+json", `{"specversion":"1.0","id":"ce-2","source":"argo","type":"sync-n","cluster":7,"data":{}}`)
	require.Equal(t, http.StatusAccepted, r.code, r.body)

	r = f.post(t, f.url, "application/json", `{}`, "ce-specversion", "1.0", "ce-id", "b-1", "ce-source", "argo", "ce-type", "sync-bin", "ce-cluster", "Prod_EU")
	require.Equal(t, http.StatusAccepted, r.code, r.body)
	ce, _ := f.last(t, "khook.raw.webhook.sync-bin")
	require.Empty(t, ce.Cluster)
	require.Equal(t, "Prod_EU", ce.Extensions[SenderClusterExtension])
}
