package webhook

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/khook/khook/producers"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/streamstest"
)

const benchBody = `{"type":"deploy-failed","namespace":"shop","resourceName":"cart-%d","message":"rollout of revision 42 is stuck: 2 of 3 replicas unavailable"}`

// BenchmarkIngest measures accepted events/s: single-event requests over keep-alive
// connections through the webhook into a file-storage stream, beside raw JetStream async
// publish of the same events to the same kind of stream, in the same run. The HTTP load
// generator runs in this process and shares its cores.
func BenchmarkIngest(b *testing.B) {
	for _, mode := range []string{"raw-jetstream-async-publish", "webhook-http"} {
		b.Run(mode, func(b *testing.B) {
			_, js := streamstest.Connect(b, streamstest.RunServer(b))
			if _, err := streams.Apply(context.Background(), js, streams.Default()); err != nil {
				b.Fatal(err)
			}
			var elapsed time.Duration
			if mode == "webhook-http" {
				elapsed = benchHTTP(b, js)
			} else {
				elapsed = benchRaw(b, js)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
		})
	}
}

func benchRaw(b *testing.B, js jetstream.JetStream) time.Duration {
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		body, _ := cloudevent.Encode(&cloudevent.Event{ID: fmt.Sprint("ev-", i), Source: "webhook", Type: "deploy-failed",
			Time: time.Now().UTC(), Data: []byte(fmt.Sprintf(benchBody, i))})
		m := nats.NewMsg("khook.raw.webhook.deploy-failed")
		m.Data = body
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprint("ev-", i))
		if _, err := js.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()
	d := time.Since(start)
	b.StopTimer()
	return d
}

func benchHTTP(b *testing.B, js jetstream.JetStream) time.Duration {
	cfg := DefaultConfig()
	cfg.Address, cfg.Port = "127.0.0.1", 0
	w, err := New(cfg, zap.NewNop(), nil)
	if err != nil {
		b.Fatal(err)
	}
	addr := make(chan net.Addr, 1)
	w.OnListen = func(a net.Addr) { addr <- a }
	pub := producers.NewPublisher(js, streams.Default().Subjects(), producers.NewMetrics(prometheus.NewRegistry()))
	go func() { _ = pub.Run(b.Context()) }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = w.Run(ctx, pub.Emitter(Name)) }()
	url := "http://" + (<-addr).String() + "/webhook"

	const conns = 64
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns}}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range conns {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				resp, err := client.Post(url, "application/json", strings.NewReader(fmt.Sprintf(benchBody, i)))
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					b.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		})
	}
	wg.Wait()
	d := time.Since(start)
	b.StopTimer()
	return d
}
