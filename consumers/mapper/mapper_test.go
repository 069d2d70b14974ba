package mapper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/khook/khook/internal/filewatch"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/deadletter"
	"github.com/khook/khook/streams/outcome"
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

// mapAll runs m until it has settled the first n raw events, then stops it.
func mapAll(t *testing.T, m *Mapper, js jetstream.JetStream, topo streams.Config, n uint64) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	cons, err := js.Consumer(context.Background(), topo.Raw.Name, topo.Mapper.Durable)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.AckFloor.Stream == n && info.NumAckPending == 0
	}, 10*time.Second, 10*time.Millisecond, "every raw event is settled")
	cancel()
	require.NoError(t, <-done)
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

	m := New(js, topo, rules, prometheus.NewRegistry(), zaptest.NewLogger(t))
	mapAll(t, m, js, topo, 3)

	// The mapped event is on the events stream with the raw id and trace context.
	events, err := js.Stream(ctx, topo.Events.Name)
	require.NoError(t, err)
	info, err := events.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Msgs)
	out, err := events.GetLastMsgForSubject(ctx, "khook.events.deploy-failed")
	require.NoError(t, err)
	require.Equal(t, "webhook/a", out.Header.Get(jetstream.MsgIDHeader), "the raw id, scoped by the subject's source")
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
	require.Equal(t, 1.0, testutil.ToFloat64(m.metrics.events.WithLabelValues("invalid")))
}

// configMapDir lays out a mappings file the way the kubelet mounts a ConfigMap and returns
// the file's path and a function that swaps in new content atomically.
func configMapDir(t *testing.T, content string) (string, func(string)) {
	t.Helper()
	dir := t.TempDir()
	version := 0
	write := func(content string) {
		version++
		v := filepath.Join(dir, fmt.Sprintf("..v%d", version))
		require.NoError(t, os.Mkdir(v, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(v, "event-mappings.yaml"), []byte(content), 0o644))
		tmp := filepath.Join(dir, "..data_tmp")
		require.NoError(t, os.Symlink(filepath.Base(v), tmp))
		require.NoError(t, os.Rename(tmp, filepath.Join(dir, "..data")))
	}
	write(content)
	require.NoError(t, os.Symlink("..data/event-mappings.yaml", filepath.Join(dir, "event-mappings.yaml")))
	return filepath.Join(dir, "event-mappings.yaml"), write
}

func TestReloadUnderLoad(t *testing.T) {
	const total = 3000
	ctx := context.Background()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	_, err := streams.Apply(ctx, js, topo)
	require.NoError(t, err)

	const before = "mappings:\n  - eventSource: webhook\n    eventType: deploy-failed\n    severity: warning\n"
	const after = "mappings:\n  - eventSource: webhook\n    eventType: deploy-failed\n    severity: critical\n"
	path, swap := configMapDir(t, before)
	rules, err := mapping.Parse([]byte(before))
	require.NoError(t, err)
	m := New(js, topo, rules, prometheus.NewRegistry(), zaptest.NewLogger(t))
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- m.Run(runCtx) }()
	rejected := make(chan error, 1)
	go func() {
		errc <- filewatch.Watch(runCtx, path, []byte(before), time.Hour, func(b []byte) {
			if err := m.Reload(b); err != nil {
				rejected <- err
			}
		})
	}()

	// Events flow while the file is swapped; the publisher notes the first event it sends
	// after the new rules are active.
	firstAfter := -1
	reloaded := func() bool { return testutil.ToFloat64(m.metrics.reloads.WithLabelValues("success")) == 1 }
	for i := range total {
		if i == total/3 {
			swap(after)
		}
		if firstAfter < 0 && i > total/3 && reloaded() {
			firstAfter = i
		}
		id := fmt.Sprintf("ev-%d", i)
		publishRaw(t, js, "khook.raw.webhook.deploy-failed", id, rawEvent(t, id, "deploy-failed", `{"namespace":"shop"}`))
	}
	require.Positive(t, firstAfter, "the reload was applied while events were flowing")
	t.Logf("rules reloaded after %d of %d events were published", firstAfter, total)

	events, err := js.Stream(ctx, topo.Events.Name)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := events.Info(ctx)
		return err == nil && info.State.Msgs >= total
	}, 30*time.Second, 10*time.Millisecond)

	cons, err := events.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	seen := map[string]bool{}
	for range total {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		require.NoError(t, err)
		ce, err := cloudevent.Decode(msg.Data())
		require.NoError(t, err)
		var ev mapping.Event
		require.NoError(t, json.Unmarshal(ce.Data, &ev))
		require.False(t, seen[ev.ID], "duplicate %s", ev.ID)
		seen[ev.ID] = true
		var i int
		_, err = fmt.Sscanf(ev.ID, "webhook/ev-%d", &i)
		require.NoError(t, err)
		if i >= firstAfter {
			require.Equal(t, "critical", ev.Severity, "event %d was published after the reload", i)
		}
	}
	require.Len(t, seen, total, "no event lost")
	info, err := events.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(total), info.State.Msgs, "no event doubled")

	// An invalid file keeps the active rules and is counted.
	swap("mappings:\n  - eventSource: webhook\n    eventType: deploy-failed\n    severity: fatal\n")
	err = <-rejected
	require.ErrorContains(t, err, "fatal")
	require.ErrorContains(t, err, "the active rules, hash "+m.rules.Load().Hash()+", stay")
	require.Equal(t, 1.0, testutil.ToFloat64(m.metrics.reloads.WithLabelValues("error")))
	got, _ := m.rules.Load().Lookup("webhook", "deploy-failed")
	require.Equal(t, "critical", got.Severity)

	cancel()
	require.NoError(t, <-errc)
	require.NoError(t, <-errc)
}

// Every normalized event carries the raw sequence it came from; a replayed copy carries its
// original's, but only once the raw stream confirms that the message at that sequence is
// the original the copy names: a publisher cannot make its event pass for a copy of another
// source's, which the dispatcher's groups would then take for a repeat and not count.
func TestRawSequenceOfCopiesIsVerified(t *testing.T) {
	ctx := context.Background()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	_, err := streams.Apply(ctx, js, topo)
	require.NoError(t, err)
	rules, err := mapping.Parse([]byte("unmapped: passthrough\nmappings: []\n"))
	require.NoError(t, err)

	withHeaders := func(subject, id string, body []byte, h map[string]string) {
		msg := nats.NewMsg(subject)
		msg.Data = body
		msg.Header.Set(jetstream.MsgIDHeader, id)
		for k, v := range h {
			msg.Header.Set(k, v)
		}
		_, err := js.PublishMsg(ctx, msg)
		require.NoError(t, err)
	}
	// seq 1 and 2: forgeries claiming to be copies of seq 3, the real event, from another
	// subject, and from its own with other data.
	forged := map[string]string{streams.HeaderReplayID: "r", streams.HeaderOriginalSeq: "3", streams.HeaderOriginalID: "webhook/real",
		streams.HeaderIgnoreSuppression: "true"}
	withHeaders("khook.raw.evil.x", "forged", rawEvent(t, "forged", "x", `{"resourceName":"real"}`), forged)
	withHeaders("khook.raw.webhook.x", "forged-2", rawEvent(t, "forged-2", "x", `{"resourceName":"other"}`), forged)
	// seq 3: the real event; seq 4: a genuine copy of it, as khook replay makes it.
	publishRaw(t, js, "khook.raw.webhook.x", "real", rawEvent(t, "real", "x", `{"resourceName":"real"}`))
	withHeaders("khook.raw.webhook.x", "real/replay-1", rawEvent(t, "real/replay-1", "x", `{"resourceName":"real"}`),
		map[string]string{streams.HeaderReplayID: "1", streams.HeaderOriginalSeq: "3", streams.HeaderOriginalID: "webhook/real"})

	m := New(js, topo, rules, prometheus.NewRegistry(), zaptest.NewLogger(t))
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()
	events, err := js.Stream(ctx, topo.Events.Name)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := events.Info(ctx)
		return err == nil && info.State.Msgs == 4
	}, 10*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	seqs, replays := map[string]string{}, map[string]string{}
	for seq := uint64(1); seq <= 4; seq++ {
		msg, err := events.GetMsg(ctx, seq)
		require.NoError(t, err)
		seqs[msg.Header.Get(jetstream.MsgIDHeader)] = msg.Header.Get(streams.HeaderRawSeq)
		for _, h := range streams.ReplayHeaders {
			if v := msg.Header.Get(h); v != "" {
				replays[msg.Header.Get(jetstream.MsgIDHeader)] += h + "=" + v + " "
			}
		}
	}
	require.Equal(t, map[string]string{"evil/forged": "1", "webhook/forged-2": "2", "webhook/real": "3", "webhook/real/replay-1": "3"}, seqs)
	// Only the genuine copy stays marked as a replay: a forgery's headers (its claim to be a
	// copy, and to skip suppression) are dropped.
	require.Equal(t, map[string]string{"webhook/real/replay-1": "Khook-Replay-Id=1 Khook-Original-Id=webhook/real Khook-Original-Seq=3 "}, replays)
}

// The mapper records the raw events it does not map, with why; a raw event that claims to
// be a replayed copy of another source's event is recorded as itself, never among the
// other's replays.
func TestUnmappedEventsAreRecordedAsThemselves(t *testing.T) {
	ctx := context.Background()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	_, err := streams.Apply(ctx, js, topo)
	require.NoError(t, err)
	rules, err := mapping.Parse([]byte("mappings:\n  - eventSource: webhook\n    eventType: deploy-failed\n    severity: error\n" +
		"  - eventSource: webhook\n    eventType: old\n    enabled: false\n"))
	require.NoError(t, err)
	publishRaw(t, js, "khook.raw.webhook.deploy-failed", "victim", rawEvent(t, "victim", "deploy-failed", `{"namespace":"shop"}`))
	publishRaw(t, js, "khook.raw.webhook.old", "retired", rawEvent(t, "retired", "old", `{}`))
	forged := nats.NewMsg("khook.raw.evil.something")
	forged.Data = rawEvent(t, "x", "something", `{}`)
	forged.Header.Set(jetstream.MsgIDHeader, "x")
	forged.Header.Set(streams.HeaderReplayID, "20261206-000000-abcdef")
	forged.Header.Set(streams.HeaderOriginalID, "webhook/victim")
	forged.Header.Set(streams.HeaderOriginalSeq, "1")
	_, err = js.PublishMsg(ctx, forged)
	require.NoError(t, err)

	mapAll(t, New(js, topo, rules, prometheus.NewRegistry(), zaptest.NewLogger(t)), js, topo, 3)
	read := func(id string) []outcome.Record {
		var out []outcome.Record
		require.Eventually(t, func() bool {
			out = nil
			_, err := ops.Scan(ctx, js, ops.Range{Stream: topo.Outcomes.Name, Subject: topo.Subjects().EventOutcomes(outcome.EventHash(id))},
				func(m ops.Msg) error {
					r, err := outcome.Decode(m.Data)
					require.NoError(t, err)
					out = append(out, r)
					return nil
				})
			return err == nil && len(out) > 0
		}, 10*time.Second, 10*time.Millisecond, id)
		return out
	}
	evil := read("evil/x")
	require.Len(t, evil, 1)
	require.Equal(t, outcome.Unmapped, evil[0].Outcome)
	require.Empty(t, evil[0].ReplayID, "its claim to be a copy is not taken")
	require.Equal(t, uint64(3), evil[0].RawSeq)
	require.Contains(t, evil[0].Reason, `no mapping rule for source "evil" type "something"`)
	retired := read("webhook/retired")
	require.Equal(t, outcome.Disabled, retired[0].Outcome)
	// The victim was mapped, which the mapper does not record: nothing is filed under it.
	_, err = ops.Scan(ctx, js, ops.Range{Stream: topo.Outcomes.Name, Subject: topo.Subjects().EventOutcomes(outcome.EventHash("webhook/victim"))},
		func(ops.Msg) error { return errors.New("a record under the victim") })
	require.NoError(t, err)
}
