package mapper

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/zap"

	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/streamstest"
)

// BenchmarkStage compares the mapper stage with the plainest possible JetStream two-stage
// relay on the same server and the same messages: pull from the raw stream, republish to
// the events stream, ack the input when the publish is acknowledged. The ratio of the two
// events/s figures is the cost of decoding, mapping and encoding.
func BenchmarkStage(b *testing.B) {
	// mapper runs with tracing off (the default: the global no-op provider); mapper-traced
	// records a span per event with the SDK and a batching exporter that discards them, to
	// show what tracing costs on and that off costs nothing measurable.
	for _, stage := range []string{"raw-jetstream-relay", "mapper", "mapper-traced"} {
		b.Run(stage, func(b *testing.B) {
			ctx := context.Background()
			_, js := streamstest.Connect(b, streamstest.RunServer(b))
			topo := streams.Default()
			if _, err := streams.Apply(ctx, js, topo); err != nil {
				b.Fatal(err)
			}
			fill(b, js, b.N)
			rules, err := mapping.Parse([]byte("mappings:\n  - eventSource: webhook\n    eventType: deploy-failed\n    severity: error\n"))
			if err != nil {
				b.Fatal(err)
			}
			runCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			b.ResetTimer()
			start := time.Now()
			switch stage {
			case "mapper-traced":
				tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}))
				prev := otel.GetTracerProvider()
				otel.SetTracerProvider(tp)
				defer func() {
					otel.SetTracerProvider(prev)
					_ = tp.Shutdown(context.Background())
				}()
				go func() { _ = New(js, topo, rules, prometheus.NewRegistry(), zap.NewNop()).Run(runCtx) }()
			case "mapper":
				go func() { _ = New(js, topo, rules, prometheus.NewRegistry(), zap.NewNop()).Run(runCtx) }()
			default:
				go relay(runCtx, b, js, topo)
			}
			waitMsgs(b, js, topo.Events.Name, b.N)
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
		})
	}
}

// fill publishes n raw webhook events of about 400 bytes.
func fill(b *testing.B, js jetstream.JetStream, n int) {
	b.Helper()
	for i := range n {
		data := fmt.Sprintf(`{"type":"deploy-failed","namespace":"shop","resourceName":"svc-%d","message":"rollout of revision 42 is stuck: 2 of 3 replicas unavailable after 600s","reason":"ProgressDeadlineExceeded"}`, i)
		body, err := cloudevent.Encode(&cloudevent.Event{ID: fmt.Sprintf("ev-%d", i), Source: "webhook", Type: "deploy-failed",
			Time: time.Now().UTC(), DataContentType: "application/json", Data: json.RawMessage(data)})
		if err != nil {
			b.Fatal(err)
		}
		msg := nats.NewMsg("khook.raw.webhook.deploy-failed")
		msg.Data = body
		msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("ev-%d", i))
		if _, err := js.PublishMsgAsync(msg); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("fill did not complete")
	}
}

// relay is the baseline: the same pull, publish and ack pattern as the mapper, with no
// decoding, mapping or encoding.
func relay(ctx context.Context, b *testing.B, js jetstream.JetStream, topo streams.Config) {
	cons, err := js.Consumer(ctx, topo.Raw.Name, topo.Mapper.Durable)
	if err != nil {
		b.Error(err)
		return
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		b.Error(err)
		return
	}
	go func() { <-ctx.Done(); it.Stop() }()
	type pending struct {
		in  jetstream.Msg
		ack jetstream.PubAckFuture
	}
	inflight := make(chan pending, topo.Mapper.MaxAckPending)
	go func() {
		for p := range inflight {
			select {
			case <-p.ack.Ok():
				_ = p.in.Ack()
			case <-p.ack.Err():
				_ = p.in.Nak()
			}
		}
	}()
	defer close(inflight)
	for {
		msg, err := it.Next()
		if err != nil {
			return
		}
		out := nats.NewMsg("khook.events.deploy-failed")
		out.Data = msg.Data()
		out.Header.Set(jetstream.MsgIDHeader, msg.Headers().Get(jetstream.MsgIDHeader))
		fut, err := js.PublishMsgAsync(out)
		if err != nil {
			_ = msg.Nak()
			continue
		}
		inflight <- pending{msg, fut}
	}
}

func waitMsgs(b *testing.B, js jetstream.JetStream, stream string, n int) {
	b.Helper()
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		info, err := s.Info(context.Background())
		if err == nil && info.State.Msgs >= uint64(n) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	b.Fatalf("%s holds fewer than %d messages after 5 minutes", stream, n)
}

// discard is a span exporter that drops every span.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }
