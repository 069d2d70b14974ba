package streams

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams/streamstest"
)

func TestCollectorReportsFillAndLag(t *testing.T) {
	ctx := context.Background()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := Default()
	topo.Raw.MaxMsgs = 200
	topo.Raw.MaxBytes = 1 << 20
	topo.Raw.MaxAge = 2 * time.Hour
	_, err := Apply(ctx, js, topo)
	require.NoError(t, err)

	subj, err := topo.Subjects().Raw("webhook", "deploy-failed")
	require.NoError(t, err)
	for i := range 50 {
		_, err := js.Publish(ctx, subj, []byte(fmt.Sprintf(`{"n":%d}`, i)))
		require.NoError(t, err)
	}
	// The mapper's consumer takes 10 messages: it acknowledges the first 6 and holds 4.
	cons, err := js.Consumer(ctx, topo.Raw.Name, topo.Mapper.Durable)
	require.NoError(t, err)
	batch, err := cons.FetchNoWait(10)
	require.NoError(t, err)
	n := 0
	for m := range batch.Messages() {
		if n < 6 {
			require.NoError(t, m.DoubleAck(ctx))
		}
		n++
	}
	require.Equal(t, 10, n)

	c := NewCollector(js, topo, StageMapper)
	later := time.Now().Add(time.Hour)
	c.now = func() time.Time { return later }
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)

	get := func(name string, labels ...string) float64 { return gauge(t, reg, name, labels...) }
	require.Equal(t, 1.0, get("khook_stream_up", "KHOOK_DLQ"))
	require.Equal(t, 50.0, get("khook_stream_messages", "KHOOK_RAW"))
	require.Equal(t, 0.0, get("khook_stream_messages", "KHOOK_DLQ"))
	require.Equal(t, 0.25, get("khook_stream_limit_usage_ratio", "KHOOK_RAW", "msgs"))
	require.InDelta(t, 0.5, get("khook_stream_limit_usage_ratio", "KHOOK_RAW", "age"), 0.05)
	require.Greater(t, get("khook_stream_limit_usage_ratio", "KHOOK_RAW", "bytes"), 0.0)
	require.InDelta(t, 3600, get("khook_stream_oldest_message_age_seconds", "KHOOK_RAW"), 60)

	require.Equal(t, 40.0, get("khook_consumer_pending_messages", "KHOOK_RAW", "khook-mapper"))
	require.Equal(t, 4.0, get("khook_consumer_ack_pending_messages", "KHOOK_RAW", "khook-mapper"))
	require.InDelta(t, 3600, get("khook_consumer_oldest_unprocessed_age_seconds", "KHOOK_RAW", "khook-mapper"), 60)
	require.InDelta(t, 3600, get("khook_consumer_last_delivery_age_seconds", "KHOOK_RAW", "khook-mapper"), 60)
	// The mapper reports the stream it reads, the ones it writes (events, DLQ, outcomes), and
	// its consumer.
	require.Equal(t, 5, testutil.CollectAndCount(c, "khook_stream_up", "khook_consumer_up"))

	// A stream that disappears reports up 0 and nothing else, and its consumer up 0.
	require.NoError(t, js.DeleteStream(ctx, topo.Raw.Name))
	require.Equal(t, 0.0, get("khook_stream_up", "KHOOK_RAW"))
	require.Equal(t, 0.0, get("khook_consumer_up", "KHOOK_RAW", "khook-mapper"))
	require.Equal(t, 3, testutil.CollectAndCount(c, "khook_stream_messages"))
}

func TestCollectorCaughtUpConsumerIsNotLate(t *testing.T) {
	ctx := context.Background()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := Default()
	_, err := Apply(ctx, js, topo)
	require.NoError(t, err)
	subj, err := topo.Subjects().Events("pod-restart")
	require.NoError(t, err)
	_, err = js.Publish(ctx, subj, []byte(`{}`))
	require.NoError(t, err)
	cons, err := js.Consumer(ctx, topo.Events.Name, topo.Dispatcher.Durable)
	require.NoError(t, err)
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	require.NoError(t, err)
	require.NoError(t, msg.DoubleAck(ctx))

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(js, topo, StageDispatcher))
	require.Equal(t, 0.0, gauge(t, reg, "khook_consumer_oldest_unprocessed_age_seconds", "KHOOK_EVENTS", "khook-dispatcher"))
	require.Equal(t, 0.0, gauge(t, reg, "khook_consumer_pending_messages", "KHOOK_EVENTS", "khook-dispatcher"))
	require.Equal(t, 1.0, gauge(t, reg, "khook_stream_messages", "KHOOK_EVENTS"))
}

// gauge returns the value of the gauge name that has every one of the label values.
func gauge(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			have := map[string]bool{}
			for _, l := range m.GetLabel() {
				have[l.GetValue()] = true
			}
			if len(have) == len(labels) && all(labels, have) {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return 0
}

func all(values []string, in map[string]bool) bool {
	for _, v := range values {
		if !in[v] {
			return false
		}
	}
	return true
}
