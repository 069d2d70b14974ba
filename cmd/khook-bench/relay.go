package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/consumers/dispatch"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/mapping"
)

// The raw baselines, written as plainly as JetStream allows, each run as its own process
// like khook's stages:
//
//	relay:   pull from BENCH_S1, republish to bench.s2.e, ack once the republish is stored
//	consume: pull from BENCH_S2, ack, and tell the harness (core NATS bench.done)
//	call:    pull from BENCH_S2, make the same A2A call the dispatcher makes, ack; with
//	         WORKERS, that many calls at once, as the dispatcher's workers make them
//	ingress: an HTTP server on PORT whose handler publishes the body to bench.s1.e and
//	         waits for the store's acknowledgement before answering 202, as a webhook must
const (
	streamS1, streamS2 = "BENCH_S1", "BENCH_S2"
	subjectS1          = "bench.s1.e"
	subjectS2          = "bench.s2.e"
	subjectDone        = "bench.done"
)

// runRelay is `khook-bench relay MODE NATS_URL [AGENT_URL [WORKERS] | PORT]`.
func runRelay(args []string) error {
	if len(args) < 2 {
		return errors.New("usage: khook-bench relay relay|consume|call|ingress NATS_URL [AGENT_URL [WORKERS] | PORT]")
	}
	mode, url := args[0], args[1]
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1024))
	if err != nil {
		return err
	}
	if mode == "ingress" {
		if len(args) < 3 {
			return errors.New("ingress needs PORT")
		}
		return runIngress(ctx, js, args[2])
	}
	if mode == "call" {
		if len(args) < 3 {
			return errors.New("call needs AGENT_URL")
		}
		// One call at a time pulls as deeply as the relay; with workers, as many as they take.
		workers, prefetch := 1, 1024
		if len(args) > 3 {
			if workers, err = strconv.Atoi(args[3]); err != nil || workers < 1 {
				return fmt.Errorf("WORKERS: %q is not a positive number", args[3])
			}
			prefetch = workers
		}
		return runCalls(ctx, js, args[2], workers, prefetch)
	}
	stream, durable := streamS2, "s2"
	if mode == "relay" {
		stream, durable = streamS1, "s1"
	}
	cons, err := js.Consumer(ctx, stream, durable)
	if err != nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, it.Stop)

	type pending struct {
		msg jetstream.Msg
		ack jetstream.PubAckFuture
	}
	settle := make(chan pending, 1024)
	go func() {
		for p := range settle {
			select {
			case <-p.ack.Ok():
				_ = p.msg.Ack()
			case <-p.ack.Err():
				_ = p.msg.Nak()
			}
		}
	}()
	for {
		m, err := it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		if err != nil {
			// A missed heartbeat or a reconnect: the iterator goes on pulling, as khook's
			// stages let it. Returning here once made a baseline exit mid-run.
			continue
		}
		switch mode {
		case "relay":
			out := nats.NewMsg(subjectS2)
			out.Data, out.Header = m.Data(), m.Headers()
			f, err := js.PublishMsgAsync(out)
			if err != nil {
				_ = m.Nak()
				continue
			}
			settle <- pending{m, f}
		case "consume":
			_ = m.Ack()
			_ = nc.Publish(subjectDone, []byte(m.Headers().Get(jetstream.MsgIDHeader)))
		default:
			return fmt.Errorf("unknown relay mode %q", mode)
		}
	}
}

// runCalls pulls from BENCH_S2, prefetch messages at most, and makes the A2A call with
// workers calls in flight: one puller hands messages to the workers, and each acks once its
// call returned.
func runCalls(ctx context.Context, js jetstream.JetStream, agentURL string, workers, prefetch int) error {
	cons, err := js.Consumer(ctx, streamS2, "s2")
	if err != nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(prefetch))
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, it.Stop)
	agent := dispatch.NewKagent(dispatch.KagentConfig{URL: agentURL, UserID: "bench", Timeout: 30 * time.Second})
	work := make(chan jetstream.Msg, workers)
	for range workers {
		go func() {
			for m := range work {
				id := m.Headers().Get(jetstream.MsgIDHeader)
				_, err := agent.Deliver(ctx, hook.Task{Agent: hook.AgentRef{Namespace: "bench", Name: "agent"},
					Text: id, MessageID: uuidOf(id), ContextID: uuidOf("ctx"), Event: &mapping.Event{ID: id, Type: "deploy-failed"}})
				if err != nil {
					_ = m.Nak()
					continue
				}
				_ = m.Ack()
			}
		}()
	}
	defer close(work)
	for {
		m, err := it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		if err != nil {
			continue // transient, as above
		}
		work <- m
	}
}

// runIngress serves POST on PORT: the body is published, with the request's X-Id as the
// message id, and the answer is 202 once JetStream stored it (503 if it did not). It is the
// least an HTTP ingress that acknowledges only stored events can do.
func runIngress(ctx context.Context, js jetstream.JetStream, port string) error {
	srv := &http.Server{Addr: "127.0.0.1:" + port, ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			msg := nats.NewMsg(subjectS1)
			msg.Data = body
			msg.Header.Set(jetstream.MsgIDHeader, r.Header.Get("X-Id"))
			if _, err := js.PublishMsg(r.Context(), msg); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			w.WriteHeader(http.StatusAccepted)
		})}
	context.AfterFunc(ctx, func() { _ = srv.Close() })
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// uuidOf is a stable UUID-shaped id, as A2A message ids are.
func uuidOf(s string) string {
	var h [16]byte
	for i := 0; i < len(s); i++ {
		h[i%16] = h[i%16]*31 + s[i]
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}
