package alertmanager

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

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

// A notification with more alerts than maxBatchSize (default 1000) is refused whole with
// 413 and the reason, and none of its alerts is stored: one megabyte of alerts would
// otherwise become tens of thousands of events.
func TestTooManyAlertsAreRefusedWhole(t *testing.T) {
	specs, err := producers.ParseSpecs([]byte("plugins:\n  - name: alertmanager\n    config: {address: 127.0.0.1, port: 0}\n"), nil)
	require.NoError(t, err)
	src, err := FromSpec(specs[0], zap.NewNop(), prometheus.NewRegistry())
	require.NoError(t, err)
	addr := make(chan net.Addr, 1)
	src.(*webhook.Webhook).OnListen = func(a net.Addr) { addr <- a }
	var emitted atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- src.Run(ctx, func(context.Context, producers.Event) (producers.Result, error) {
			emitted.Add(1)
			return producers.Result{}, nil
		})
	}()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	url := "http://" + (<-addr).String() + "/alerts"

	notification := func(alerts int) string {
		var b strings.Builder
		b.WriteString(`{"version":"4","status":"firing","receiver":"khook","alerts":[`)
		for i := range alerts {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, `{"status":"firing","fingerprint":"f%d","labels":{"alertname":"A","pod":"p%d"},"startsAt":"2026-11-27T07:10:00Z"}`, i, i)
		}
		b.WriteString("]}")
		return b.String()
	}
	resp, err := http.Post(url, "application/json", strings.NewReader(notification(DefaultMaxAlerts+1)))
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	require.Contains(t, string(body), "notification of 1001 alerts exceeds maxBatchSize 1000")
	require.Zero(t, emitted.Load(), "nothing of it was stored")

	resp, err = http.Post(url, "application/json", strings.NewReader(notification(DefaultMaxAlerts)))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	require.Equal(t, int64(DefaultMaxAlerts), emitted.Load())
}
