package dispatch

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/khook/khook/consumers/dispatch/state"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/hook/hooktest"
	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/streamstest"
)

var benchHooks = hooktest.Fixture("bench-hooks.yaml")

type benchEnv struct {
	js    jetstream.JetStream
	topo  streams.Config
	agent *demoagent.Server
	url   string
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	_, js := streamstest.Connect(b, streamstest.RunServer(b))
	topo := streams.Default()
	if _, err := streams.Apply(context.Background(), js, topo); err != nil {
		b.Fatal(err)
	}
	agent := demoagent.New()
	srv := httptest.NewServer(agent.Handler())
	b.Cleanup(srv.Close)
	return &benchEnv{js: js, topo: topo, agent: agent, url: srv.URL}
}

func (e *benchEnv) msg(i int) *nats.Msg {
	id := fmt.Sprintf("ev-%d", i)
	data, _ := json.Marshal(mapping.Event{ID: id, Source: "webhook", SourceType: "deploy-failed", Type: "deploy-failed",
		Severity: "error", Namespace: "shop", Resource: mapping.Resource{Kind: "Deployment", Name: fmt.Sprintf("svc-%d", i)},
		Message: "rollout of revision 42 is stuck: 2 of 3 replicas unavailable", Time: time.Now().UTC()})
	body, _ := cloudevent.Encode(&cloudevent.Event{ID: id, Source: "webhook", Type: "deploy-failed", Data: data})
	m := nats.NewMsg("khook.events.deploy-failed")
	m.Data = body
	m.Header.Set(jetstream.MsgIDHeader, id)
	return m
}

func (e *benchEnv) fill(b *testing.B, n int) {
	b.Helper()
	for i := range n {
		if _, err := e.js.PublishMsgAsync(e.msg(i)); err != nil {
			b.Fatal(err)
		}
	}
	<-e.js.PublishAsyncComplete()
}

func (e *benchEnv) startDispatcher(b *testing.B, ctx context.Context) {
	b.Helper()
	idx := hooktest.Index(b, benchHooks)
	cfg := DefaultConfig()
	cfg.Workers = 64
	cfg.Guard.Concurrency = 64
	st, err := state.Open(ctx, e.js, e.topo)
	if err != nil {
		b.Fatal(err)
	}
	d := New(e.js, e.topo, cfg, st, idx, NewRouter(NewKagent(KagentConfig{URL: e.url, UserID: "bench", Timeout: 10 * time.Second})),
		prometheus.NewRegistry(), zap.NewNop())
	go func() { _ = d.Run(ctx) }()
}

// rawConsume is the baseline: pull the same events from the same stream and ack them,
// delivering nothing.
func (e *benchEnv) rawConsume(b *testing.B, ctx context.Context, onMsg func(jetstream.Msg)) {
	b.Helper()
	cons, err := e.js.Consumer(ctx, e.topo.Events.Name, e.topo.Dispatcher.Durable)
	if err != nil {
		b.Fatal(err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(128))
	if err != nil {
		b.Fatal(err)
	}
	go func() { <-ctx.Done(); it.Stop() }()
	go func() {
		for {
			m, err := it.Next()
			if err != nil {
				return
			}
			onMsg(m)
			_ = m.Ack()
		}
	}()
}

// rawA2A is the fair ceiling for the dispatcher: pull each event, make one plain A2A call
// with the same client library to the same agent (64 at a time, as the dispatcher), and
// ack; no matching, suppression, delivery records or retries.
func (e *benchEnv) rawA2A(b *testing.B, ctx context.Context) {
	b.Helper()
	target := NewKagent(KagentConfig{URL: e.url, UserID: "bench", Timeout: 10 * time.Second})
	work := make(chan jetstream.Msg, 128)
	for range 64 {
		go func() {
			for m := range work {
				var i int
				fmt.Sscanf(m.Headers().Get(jetstream.MsgIDHeader), "ev-%d", &i)
				ev := &mapping.Event{ID: fmt.Sprintf("ev-%d", i), Type: "deploy-failed"}
				_, err := target.Deliver(ctx, hook.Task{Agent: hook.AgentRef{Namespace: "kagent", Name: "sre"}, Text: ev.ID,
					MessageID: hook.UUID(ev.ID), ContextID: hook.UUID("c", ev.ID), Event: ev})
				if err == nil {
					_ = m.Ack()
				}
			}
		}()
	}
	cons, err := e.js.Consumer(ctx, e.topo.Events.Name, e.topo.Dispatcher.Durable)
	if err != nil {
		b.Fatal(err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(128))
	if err != nil {
		b.Fatal(err)
	}
	go func() { <-ctx.Done(); it.Stop() }()
	go func() {
		defer close(work)
		for {
			m, err := it.Next()
			if err != nil {
				return
			}
			work <- m
		}
	}()
}

// BenchmarkDispatch measures saturated throughput from the events stream to a local A2A
// agent with a no-op executor, beside two baselines on the same server and events: pulling
// and acking with no delivery, and pulling with one plain A2A call per event.
func BenchmarkDispatch(b *testing.B) {
	for _, stage := range []string{"raw-jetstream-pull-ack", "raw-jetstream-plus-a2a-call", "dispatcher-a2a"} {
		b.Run(stage, func(b *testing.B) {
			e := newBenchEnv(b)
			e.fill(b, b.N)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var mu sync.Mutex
			consumed := 0
			b.ResetTimer()
			start := time.Now()
			switch stage {
			case "dispatcher-a2a":
				e.startDispatcher(b, ctx)
			case "raw-jetstream-plus-a2a-call":
				e.rawA2A(b, ctx)
			default:
				e.rawConsume(b, ctx, func(jetstream.Msg) { mu.Lock(); consumed++; mu.Unlock() })
			}
			for {
				mu.Lock()
				n := consumed
				mu.Unlock()
				if stage != "raw-jetstream-pull-ack" {
					n = len(e.agent.Received())
				}
				if n >= b.N {
					break
				}
				time.Sleep(time.Millisecond)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
		})
	}
}

// BenchmarkDispatchLatency offers 1,000 events/s for two seconds and reports the latency
// from publishing a normalized event to the agent receiving its task, beside the latency
// from publishing to a raw JetStream consumer receiving the same event.
func BenchmarkDispatchLatency(b *testing.B) {
	const rate, total = 1000, 2000
	for _, stage := range []string{"raw-jetstream", "dispatcher-a2a"} {
		b.Run(stage, func(b *testing.B) {
			for b.Loop() {
				e := newBenchEnv(b)
				ctx, cancel := context.WithCancel(context.Background())
				sent := make([]time.Time, total)
				got := make([]time.Time, total)
				var mu sync.Mutex
				if stage == "dispatcher-a2a" {
					e.startDispatcher(b, ctx)
				} else {
					e.rawConsume(b, ctx, func(m jetstream.Msg) {
						var i int
						fmt.Sscanf(m.Headers().Get(jetstream.MsgIDHeader), "ev-%d", &i)
						mu.Lock()
						got[i] = time.Now()
						mu.Unlock()
					})
				}
				tick := time.NewTicker(time.Second / rate)
				for i := range total {
					<-tick.C
					mu.Lock()
					sent[i] = time.Now()
					mu.Unlock()
					if _, err := e.js.PublishMsgAsync(e.msg(i)); err != nil {
						b.Fatal(err)
					}
				}
				tick.Stop()
				deadline := time.Now().Add(time.Minute)
				for time.Now().Before(deadline) {
					if stage == "dispatcher-a2a" {
						rs := e.agent.Received()
						if len(rs) < total {
							time.Sleep(5 * time.Millisecond)
							continue
						}
						for _, r := range rs {
							var i int
							fmt.Sscanf(strings.Fields(r.Text)[0], "ev-%d", &i)
							got[i] = r.At
						}
						break
					}
					mu.Lock()
					done := !slices.ContainsFunc(got, time.Time.IsZero)
					mu.Unlock()
					if done {
						break
					}
					time.Sleep(5 * time.Millisecond)
				}
				cancel()
				lat := make([]float64, 0, total)
				for i := range total {
					if !got[i].IsZero() {
						lat = append(lat, float64(got[i].Sub(sent[i]).Microseconds())/1000)
					}
				}
				if len(lat) < total {
					b.Fatalf("%d of %d events arrived", len(lat), total)
				}
				slices.Sort(lat)
				b.ReportMetric(lat[len(lat)/2], "p50-ms")
				b.ReportMetric(lat[len(lat)*99/100], "p99-ms")
			}
		})
	}
}
