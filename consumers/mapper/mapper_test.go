package mapper

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/deadletter"
	"github.com/khook/khook/streams/streamstest"
)

func publishRaw(t *testing.T, js jetstream.JetStream, subject, id string, body []byte) {
	t.Helper()
	msg := nats.NewMsg(subject)
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, id)
	msg.Header.Set("traceparent", "00-11111111111111111111111111111111-2222222222222222-01")
	_, err := js.PublishMsg(context.Background(), msg)
	require.NoError(t, err)
}

func rawEvent(t *testing.T, id, typ, data string) []byte {
	t.Helper()
	b, err := cloudevent.Encode(&cloudevent.Event{ID: id, Source: "webhook", Type: typ, Data: json.RawMessage(data),
		Time: time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)})
	require.NoError(t, err)
	return b
}

func TestMapperStage(t *testing.T) {
	ctx := context.Background()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	_, err := streams.Apply(ctx, js, topo)
	require.NoError(t, err)
	rules, err := mapping.Parse([]byte("mappings:\n  - eventSource: webhook\n    eventType: deploy-failed\n    severity: error\n"))
	require.NoError(t, err)

	publishRaw(t, js, "khook.raw.webhook.deploy-failed", "a", rawEvent(t, "a", "deploy-failed", `{"namespace":"shop","resourceName":"cart"}`))
	publishRaw(t, js, "khook.raw.webhook.other", "b", rawEvent(t, "b", "other", `{}`))
	publishRaw(t, js, "khook.raw.webhook.deploy-failed", "c", []byte(`this is not a cloudevent`))

	reg := prometheus.NewRegistry()
	m := New(js, topo, rules, reg, zaptest.NewLogger(t))
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()

	cons, err := js.Consumer(ctx, topo.Raw.Name, topo.Mapper.Durable)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.AckFloor.Stream == 3 && info.NumAckPending == 0
	}, 10*time.Second, 10*time.Millisecond, "every raw event is settled")
	cancel()
	require.NoError(t, <-done)

	// The mapped event is on the events stream with the raw id and trace context.
	events, err := js.Stream(ctx, topo.Events.Name)
	require.NoError(t, err)
	info, err := events.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Msgs)
	out, err := events.GetLastMsgForSubject(ctx, "khook.events.deploy-failed")
	require.NoError(t, err)
	require.Equal(t, "a", out.Header.Get(jetstream.MsgIDHeader))
	require.Equal(t, "00-11111111111111111111111111111111-2222222222222222-01", out.Header.Get("traceparent"))
	ce, err := cloudevent.Decode(out.Data)
	require.NoError(t, err)
	require.Equal(t, "shop//cart", ce.Subject, "namespace/kind/name, with no kind in the body")
	var ev mapping.Event
	require.NoError(t, json.Unmarshal(ce.Data, &ev))
	require.Equal(t, "error", ev.Severity)
	require.Equal(t, "cart", ev.Resource.Name)

	// The broken envelope is dead-lettered, unchanged, with its reason.
	dlq, err := js.Stream(ctx, topo.DLQ.Name)
	require.NoError(t, err)
	dl, err := dlq.GetLastMsgForSubject(ctx, "khook.dlq.mapper")
	require.NoError(t, err)
	require.Equal(t, []byte("this is not a cloudevent"), dl.Data)
	require.Equal(t, "invalid-envelope", dl.Header.Get(deadletter.HeaderReason))
	require.Equal(t, "khook.raw.webhook.deploy-failed", dl.Header.Get(deadletter.HeaderOriginalSubject))

	// Every outcome is counted.
	require.Equal(t, 1.0, testutil.ToFloat64(m.metrics.events.WithLabelValues("mapped")))
	require.Equal(t, 1.0, testutil.ToFloat64(m.metrics.events.WithLabelValues("unmapped")))
	require.Equal(t, 1.0, testutil.ToFloat64(m.metrics.events.WithLabelValues("deadletter")))
}
