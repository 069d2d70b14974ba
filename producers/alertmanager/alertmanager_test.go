package alertmanager

import (
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/producers"
	"github.com/khook/khook/producers/producertest"
	"github.com/khook/khook/producers/webhook"
)

// Notification is a real Alertmanager v4 webhook payload: one firing and one resolved alert.
const Notification = `{
  "version": "4", "groupKey": "{}:{alertname=\"KubePodCrashLooping\"}", "status": "firing",
  "receiver": "khook", "groupLabels": {"alertname": "KubePodCrashLooping"},
  "commonLabels": {"alertname": "KubePodCrashLooping", "severity": "critical"},
  "externalURL": "http://alertmanager:9093",
  "alerts": [
    {"status": "firing", "fingerprint": "4ad6b5f0e7c1d2a3",
     "labels": {"alertname": "KubePodCrashLooping", "namespace": "payments", "pod": "ledger-0", "severity": "critical"},
     "annotations": {"summary": "Pod payments/ledger-0 is crash looping"},
     "startsAt": "2026-11-27T07:10:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph"},
    {"status": "resolved", "fingerprint": "9be1c0ffee000001",
     "labels": {"alertname": "NodeNotReady", "node": "worker-3"},
     "annotations": {"description": "worker-3 is ready again"},
     "startsAt": "2026-11-27T06:00:00Z", "endsAt": "2026-11-27T07:00:00Z"}
  ]
}`

func TestDecode(t *testing.T) {
	events, batch, err := Decode(webhook.Endpoint{}, Name, http.Header{"Content-Type": {"application/json"}}, url.Values{}, []byte(Notification))
	require.NoError(t, err)
	require.True(t, batch)
	require.Len(t, events, 2)
	require.Equal(t, "firing", events[0].Type)
	require.Equal(t, "4ad6b5f0e7c1d2a3-firing-1795763400", events[0].ID)
	require.JSONEq(t, `"payments"`, field(t, events[0], "namespace"))
	require.JSONEq(t, `"ledger-0"`, field(t, events[0], "resourceName"))
	require.JSONEq(t, `"KubePodCrashLooping"`, field(t, events[0], "reason"))
	require.JSONEq(t, `"Pod payments/ledger-0 is crash looping"`, field(t, events[0], "message"))
	require.Equal(t, "resolved", events[1].Type)
	require.JSONEq(t, `"Node"`, field(t, events[1], "resourceKind"))
	require.Equal(t, "2026-11-27T07:00:00Z", events[1].Time.Format("2006-01-02T15:04:05Z07:00"), "a resolved alert happened when it ended")

	for _, bad := range []string{`{}`, `[]`, `{"alerts":[{"status":"weird","fingerprint":"x"}]}`, `{"alerts":[{"status":"firing"}]}`} {
		_, _, err := Decode(webhook.Endpoint{}, Name, http.Header{}, url.Values{}, []byte(bad))
		require.Error(t, err, bad)
	}
}

func field(t *testing.T, ev producers.Event, key string) string {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(ev.Data, &m))
	b, err := json.Marshal(m[key])
	require.NoError(t, err)
	return string(b)
}

func TestConformance(t *testing.T) {
	addrs := map[producers.EventSource]chan net.Addr{}
	producertest.Run(t, producertest.Case{
		Name:   Name,
		Build:  FromSpec,
		Config: "address: 127.0.0.1\nport: 0\n",
		Prepare: func(t *testing.T, p producers.EventSource) {
			ch := make(chan net.Addr, 1)
			addrs[p] = ch
			p.(*webhook.Webhook).OnListen = func(a net.Addr) { ch <- a }
		},
		Trigger: func(t *testing.T, p producers.EventSource) {
			addr := <-addrs[p]
			resp, err := http.Post("http://"+addr.String()+"/alerts", "application/json", strings.NewReader(Notification))
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusAccepted, resp.StatusCode)
		},
		BadConfigs: map[string]string{"port": "port: -1\n", "receiver": "receiver: x\n"},
	})
}
