package cloudevent

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestInClusterScopesKeysByCluster(t *testing.T) {
	require.Equal(t, "webhook/abc", InCluster("", "webhook/abc"), "a single cluster's ids do not change")
	require.Equal(t, "webhook/@eu-1/abc", InCluster("eu-1", "webhook/abc"))
	require.NotEqual(t, InCluster("eu-1", "webhook/abc"), InCluster("us-1", "webhook/abc"))

	long := Key("webhook", "", strings.Repeat("x", MaxKeyLength-10))
	k := InCluster("eu-1", long)
	require.LessOrEqual(t, len(k), MaxKeyLength)
	require.True(t, strings.HasPrefix(k, "webhook/@eu-1/sha256-"), k)
	require.NotEqual(t, k, InCluster("eu-1", long+"y"))
}

// A message's key is taken as its publisher gave it only inside its own source's and
// cluster's scope: no publisher can take another cluster's key, or a cluster's key for an
// event that names no cluster.
func TestKeyOfKeepsEachClusterInItsScope(t *testing.T) {
	for _, tc := range []struct{ source, cluster, msgID, want string }{
		{"webhook", "", "webhook/abc", "webhook/abc"},
		{"webhook", "eu-1", "webhook/@eu-1/abc", "webhook/@eu-1/abc"},
		// Another cluster's key, or a plain key, on an event from eu-1.
		{"webhook", "eu-1", "webhook/@us-1/abc", "webhook/@eu-1/webhook/@us-1/abc"},
		{"webhook", "eu-1", "webhook/abc", "webhook/@eu-1/webhook/abc"},
		// A cluster's key on an event that names none.
		{"webhook", "", "webhook/@eu-1/abc", "webhook/webhook/@eu-1/abc"},
		{"webhook", "", "abc", "webhook/abc"},
		{"webhook", "eu-1", "abc", "webhook/@eu-1/abc"},
	} {
		require.Equal(t, tc.want, KeyOf(tc.source, tc.cluster, tc.msgID, ""), "%+v", tc)
	}
	require.Equal(t, "eu-1", ClusterOf("webhook", "webhook/@eu-1/abc"))
	require.Equal(t, "", ClusterOf("webhook", "webhook/abc"))
	require.Equal(t, "", ClusterOf("webhook", "webhook/@EU 1/abc"), "not a cluster name")
	require.Equal(t, "", ClusterOf("alerts", "webhook/@eu-1/abc"), "another source's key")
}

func TestCheckCluster(t *testing.T) {
	for _, ok := range []string{"a", "eu-1", "prod-eu-west-1", strings.Repeat("a", 63)} {
		require.NoError(t, CheckCluster(ok), ok)
	}
	for _, bad := range []string{"", "-a", "a-", "EU", "eu.1", "eu/1", "eu 1", "eu_1", strings.Repeat("a", 64)} {
		require.Error(t, CheckCluster(bad), bad)
	}
}

// The cluster is an attribute of the envelope that the event holds itself: it is written
// and read back, a bad one is refused, and it is never also an extension.
func TestTheClusterAttribute(t *testing.T) {
	e := &Event{ID: "1", Source: "webhook", Type: "t", Cluster: "eu-1", Data: []byte(`{"a":1}`)}
	b, err := Encode(e)
	require.NoError(t, err)
	require.Contains(t, string(b), `"cluster":"eu-1"`)
	back, err := Decode(b)
	require.NoError(t, err)
	require.Equal(t, "eu-1", back.Cluster)
	require.NotContains(t, DecodeExtensions(b), "cluster")

	_, err = Encode(&Event{ID: "1", Source: "webhook", Type: "t", Cluster: "EU 1"})
	require.ErrorContains(t, err, "cluster:")
	// A sender's cluster is read as it is; only khook's own writes are held to the rule.
	bad, err := Decode([]byte(`{"specversion":"1.0","id":"1","source":"s","type":"t","cluster":"a.b"}`))
	require.NoError(t, err)
	require.Equal(t, "a.b", bad.Cluster)
	_, err = Encode(bad)
	require.ErrorContains(t, err, "cluster:")
	_, err = Encode(&Event{ID: "1", Source: "webhook", Type: "t", Extensions: map[string]string{"cluster": "x"}})
	require.Error(t, err, "cluster may not be set as an extension")
}

// An id of one cluster that begins with "@" never lands in a named cluster's scope: it is
// escaped, and the escaped key is taken back as it is.
func TestIDsBeginningWithAtStayInTheirScope(t *testing.T) {
	k := Key("cron", "", "@eu-1/daily")
	require.Equal(t, "cron/%40eu-1/daily", k)
	require.Empty(t, ClusterOf("cron", k))
	require.Equal(t, k, KeyOf("cron", "", k, ""))
	require.NotEqual(t, InCluster("eu-1", Key("cron", "", "daily")), k)
}
