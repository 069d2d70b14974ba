package ops_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/mapping"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/deadletter"
	"github.com/khook/khook/streams/streamstest"
)

func setup(t *testing.T) (jetstream.JetStream, streams.Config) {
	t.Helper()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	_, err := streams.Apply(context.Background(), js, topo)
	require.NoError(t, err)
	return js, topo
}

// publishRaw stores n raw webhook events, the i-th in namespace ns-(i%3).
func publishRaw(t *testing.T, js jetstream.JetStream, n int) {
	t.Helper()
	msgs := make([]*nats.Msg, 0, n)
	for i := range n {
		body, err := cloudevent.Encode(&cloudevent.Event{ID: fmt.Sprintf("ev-%d", i), Source: "webhook", Type: "deploy-failed",
			Time: time.Now().UTC(), DataContentType: "application/json",
			Data: json.RawMessage(fmt.Sprintf(`{"namespace":"ns-%d","resourceName":"svc-%d"}`, i%3, i))})
		require.NoError(t, err)
		msg := nats.NewMsg("khook.raw.webhook.deploy-failed")
		msg.Data = body
		msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("ev-%d", i))
		msgs = append(msgs, msg)
	}
	streamstest.PublishAll(t, js, msgs)
}

// copiesOf counts, per original sequence, the replay copies of one replay in stream.
func copiesOf(t *testing.T, js jetstream.JetStream, stream, replayID string) map[string]int {
	t.Helper()
	seen := map[string]int{}
	_, err := ops.Scan(context.Background(), js, ops.Range{Stream: stream}, func(m ops.Msg) error {
		if m.Header.Get(streams.HeaderReplayID) == replayID {
			seen[m.Header.Get(streams.HeaderOriginalSeq)]++
		}
		return nil
	})
	require.NoError(t, err)
	return seen
}

// TestReplayInterruptedAndResumedSendsEachOnce interrupts a replay of 10,000 events half
// way, resumes it, then resumes again from progress set back 300 events (as after a crash
// between two progress records): every event is replayed exactly once.
func TestReplayInterruptedAndResumedSendsEachOnce(t *testing.T) {
	const total = 10000
	js, topo := setup(t)
	publishRaw(t, js, total)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	rp := &ops.Replayer{JS: js, Topo: topo, SaveEvery: 100, Progress: func(r *ops.Replay, _ bool) {
		if r.Sent >= total/2 {
			cancel() // the operator's Ctrl-C
		}
	}}
	r, err := rp.Plan(ctx, ops.Selection{Through: ops.ThroughMapper})
	require.NoError(t, err)
	require.Equal(t, total, r.Total)
	require.NoError(t, rp.Run(ctx, r))
	require.False(t, r.Done)
	require.GreaterOrEqual(t, r.Sent, total/2)
	require.Less(t, r.Sent, total)
	t.Logf("interrupted after %d of %d", r.Sent, total)

	resumed := &ops.Replayer{JS: js, Topo: topo}
	r2, err := resumed.Load(context.Background(), r.ID)
	require.NoError(t, err)
	require.Equal(t, r.Sent, r2.Sent, "the interrupt stored exact progress")
	require.Equal(t, r.NextSeq, r2.NextSeq)
	require.NoError(t, resumed.Run(context.Background(), r2))
	require.True(t, r2.Done)
	require.Equal(t, total, r2.Sent)

	copies := copiesOf(t, js, topo.Raw.Name, r.ID)
	require.Len(t, copies, total, "every original replayed")
	for seq, n := range copies {
		require.Equal(t, 1, n, "original seq %s replayed %d times", seq, n)
	}

	// A crash loses up to SaveEvery sends of progress; resuming sends them again with the
	// same message ids, and JetStream drops them as duplicates.
	kv, err := js.KeyValue(context.Background(), ops.ReplayBucket)
	require.NoError(t, err)
	r2.NextSeq -= 300
	r2.Sent -= 300
	r2.Done = false
	b, _ := json.Marshal(r2)
	_, err = kv.Put(context.Background(), r2.ID, b)
	require.NoError(t, err)
	r3, err := resumed.Load(context.Background(), r.ID)
	require.NoError(t, err)
	require.NoError(t, resumed.Run(context.Background(), r3))
	copies = copiesOf(t, js, topo.Raw.Name, r.ID)
	require.Len(t, copies, total)
	for seq, n := range copies {
		require.Equal(t, 1, n, "original seq %s replayed %d times after the simulated crash", seq, n)
	}
}

// Replayed events get new ids (so neither the duplicate window nor the dispatcher's
// delivery records swallow them), keep the original's, and are never replayed again.
func TestReplayMarksCopiesAndFilters(t *testing.T) {
	js, topo := setup(t)
	ctx := context.Background()
	publishRaw(t, js, 9)
	rules, err := mapping.Parse([]byte("mappings:\n  - eventSource: webhook\n    eventType: deploy-failed\n"))
	require.NoError(t, err)
	var predicted []ops.Prediction
	rp := &ops.Replayer{JS: js, Topo: topo,
		Namespace: func(m ops.Msg) string {
			ce, err := cloudevent.Decode(m.Data)
			require.NoError(t, err)
			ev, _ := mapping.Map(rules, mapping.Raw{ID: ce.ID, Source: ce.Source, Type: ce.Type, Data: ce.Data})
			return ev.Namespace
		}}
	r, err := rp.Plan(ctx, ops.Selection{Through: ops.ThroughMapper, Namespace: "ns-1", IgnoreSuppression: true})
	require.NoError(t, err)
	require.NoError(t, rp.Run(ctx, r))
	require.Equal(t, 3, r.Sent)
	require.Equal(t, 6, r.Skipped)

	var copies []ops.Msg
	_, err = ops.Scan(ctx, js, ops.Range{Stream: topo.Raw.Name, FromSeq: 10}, func(m ops.Msg) error {
		copies = append(copies, m)
		return nil
	})
	require.NoError(t, err)
	require.Len(t, copies, 3)
	for _, m := range copies {
		ce, err := cloudevent.Decode(m.Data)
		require.NoError(t, err)
		orig := m.Header.Get(streams.HeaderOriginalID)
		require.Equal(t, orig+"/replay-"+r.ID, ce.ID)
		require.Equal(t, ce.ID, m.Header.Get(jetstream.MsgIDHeader))
		require.Equal(t, "true", m.Header.Get(streams.HeaderIgnoreSuppression))
		seq, _ := strconv.Atoi(m.Header.Get(streams.HeaderOriginalSeq))
		require.Equal(t, 1, (seq-1)%3, "only ns-1 events")
	}

	// A second replay of everything replays the 9 originals, not the 3 copies.
	dry := &ops.Replayer{JS: js, Topo: topo, DryRun: true,
		Predict:   func(context.Context, ops.Msg) ops.Prediction { return ops.Prediction{Outcome: ops.PredictUnmatched} },
		OnPredict: func(p ops.Prediction) { predicted = append(predicted, p) }}
	r2, err := dry.Plan(ctx, ops.Selection{Through: ops.ThroughMapper})
	require.NoError(t, err)
	require.NoError(t, dry.Run(ctx, r2))
	require.Equal(t, 9, r2.Checked)
	require.Zero(t, r2.Sent, "a dry run sends nothing")
	require.Len(t, predicted, 9)
	require.Equal(t, ops.Prediction{Seq: 1, Subject: "khook.raw.webhook.deploy-failed", Outcome: ops.PredictUnmatched}, predicted[0])
	_, err = dry.Load(ctx, r2.ID)
	require.ErrorContains(t, err, "no replay", "a dry run stores nothing")

	// Through the dispatcher, the normalized event's own id changes too.
	ev := mapping.Event{ID: "n-1", Source: "webhook", Type: "deploy-failed", Namespace: "shop", Severity: "error"}
	data, _ := json.Marshal(ev)
	body, _ := cloudevent.Encode(&cloudevent.Event{ID: "n-1", Source: "webhook", Type: "deploy-failed", DataContentType: "application/json", Data: data})
	_, err = js.Publish(ctx, "khook.events.deploy-failed", body)
	require.NoError(t, err)
	rd := &ops.Replayer{JS: js, Topo: topo}
	r3, err := rd.Plan(ctx, ops.Selection{Through: ops.ThroughDispatcher, Source: "webhook", Namespace: "shop"})
	require.NoError(t, err)
	require.NoError(t, rd.Run(ctx, r3))
	require.Equal(t, 1, r3.Sent)
	recs, _, err := ops.QueryEvents(ctx, js, topo, ops.EventFilter{}, 0, 10)
	require.NoError(t, err)
	require.Len(t, recs, 2)
	require.Equal(t, "n-1/replay-"+r3.ID, recs[1].ID)
	require.Equal(t, r3.ID, recs[1].ReplayID)

	_, err = rd.Plan(ctx, ops.Selection{Through: "sideways"})
	require.ErrorContains(t, err, "want mapper or dispatcher")
}

func TestDeadLettersListRetryPurgeAndStatus(t *testing.T) {
	js, topo := setup(t)
	ctx := context.Background()
	// Two dead letters from the dispatcher (one per reason) and one from the mapper, made
	// the way the stages make them.
	store := func(subject, stage, reason, hook string, id string) {
		body, _ := cloudevent.Encode(&cloudevent.Event{ID: id, Source: "webhook", Type: "deploy-failed", DataContentType: "application/json", Data: json.RawMessage(`{}`)})
		msg := nats.NewMsg(subject)
		msg.Data = body
		_, err := js.PublishMsg(ctx, msg)
		require.NoError(t, err)
		stream := topo.Events.Name
		if stage == "mapper" {
			stream = topo.Raw.Name
		}
		cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}, DeliverPolicy: jetstream.DeliverLastPolicy})
		require.NoError(t, err)
		m, err := cons.Next()
		require.NoError(t, err)
		_, err = deadletter.Publish(ctx, js, topo.Subjects(), deadletter.Letter{Stage: stage, Reason: reason, Err: fmt.Errorf("%s happened", reason), Msg: m, Hook: hook})
		require.NoError(t, err)
	}
	store("khook.events.deploy-failed", "dispatcher", "permanent", "shop/deploys", "e1")
	store("khook.events.deploy-failed", "dispatcher", "max-attempts", "shop/deploys", "e2")
	store("khook.raw.webhook.unknown", "mapper", "unmapped", "", "r1")

	all, err := ops.ListDeadLetters(ctx, js, topo, ops.DLQFilter{}, 0)
	require.NoError(t, err)
	require.Len(t, all, 3)
	require.Equal(t, "permanent happened", all[0].Error)
	require.Equal(t, "khook.events.deploy-failed", all[0].OriginalSubject)
	require.Equal(t, "e1", all[0].EventID)
	disp, err := ops.ListDeadLetters(ctx, js, topo, ops.DLQFilter{Stage: "dispatcher", Reason: "max-attempts"}, 0)
	require.NoError(t, err)
	require.Len(t, disp, 1)
	require.Equal(t, "e2", disp[0].EventID)

	st, err := ops.GetStatus(ctx, js, topo, []ops.Plugin{{Name: "webhook", Enabled: true}, {Name: "kubernetes"}}, nil)
	require.NoError(t, err)
	require.Equal(t, []ops.DeadLetterCount{{Stage: "dispatcher", Reason: "max-attempts", Count: 1},
		{Stage: "dispatcher", Reason: "permanent", Count: 1}, {Stage: "mapper", Reason: "unmapped", Count: 1}}, st.DeadLetters)
	require.Equal(t, uint64(3), st.Streams[2].Messages)
	require.Equal(t, "kubernetes", st.Plugins[0].Name)
	require.Equal(t, uint64(0), st.Plugins[0].Events)
	require.Equal(t, ops.PluginStatus{Name: "webhook", Configured: true, Enabled: true, Events: 1, LastEvent: st.Plugins[1].LastEvent}, st.Plugins[1])

	// Retry republishes to the original subject with a fresh message id, then removes the
	// dead letter.
	require.NoError(t, ops.RetryDeadLetter(ctx, js, topo, disp[0]))
	left, err := ops.ListDeadLetters(ctx, js, topo, ops.DLQFilter{}, 0)
	require.NoError(t, err)
	require.Len(t, left, 2)
	events, err := js.Stream(ctx, topo.Events.Name)
	require.NoError(t, err)
	last, err := events.GetLastMsgForSubject(ctx, "khook.events.deploy-failed")
	require.NoError(t, err)
	require.Equal(t, fmt.Sprintf("e2/dlq-retry-%d", disp[0].Seq), last.Header.Get(jetstream.MsgIDHeader))
	require.Empty(t, last.Header.Get(deadletter.HeaderReason), "dead-letter headers are not carried back")
	require.Equal(t, strconv.FormatUint(disp[0].Seq, 10), last.Header.Get(ops.HeaderRetryOf))

	require.NoError(t, ops.PurgeDeadLetter(ctx, js, topo, left[0].Seq))
	left, err = ops.ListDeadLetters(ctx, js, topo, ops.DLQFilter{}, 0)
	require.NoError(t, err)
	require.Len(t, left, 1)
	require.Equal(t, "mapper", left[0].Stage)
	_, err = ops.GetDeadLetter(ctx, js, topo, disp[0].Seq)
	require.ErrorContains(t, err, "no dead letter")
}

func TestQueryEventsFiltersAndPages(t *testing.T) {
	js, topo := setup(t)
	ctx := context.Background()
	publish := func(id, typ, ns, severity string) {
		ev := mapping.Event{ID: id, Source: "webhook", Type: typ, Namespace: ns, Severity: severity, Resource: mapping.Resource{Name: "r-" + id}}
		data, _ := json.Marshal(ev)
		body, _ := cloudevent.Encode(&cloudevent.Event{ID: id, Source: "webhook", Type: typ, DataContentType: "application/json", Data: data})
		_, err := js.Publish(ctx, "khook.events."+typ, body)
		require.NoError(t, err)
	}
	for i := range 5 {
		publish(fmt.Sprintf("a%d", i), "pod-restart", "shop", "warning")
	}
	middle := time.Now()
	for i := range 5 {
		publish(fmt.Sprintf("b%d", i), "oom-kill", "ops", "critical")
	}
	ids := func(recs []ops.EventRecord) (out []string) {
		for _, r := range recs {
			out = append(out, r.ID)
		}
		return out
	}
	recs, next, err := ops.QueryEvents(ctx, js, topo, ops.EventFilter{Type: "oom-kill"}, 0, 3)
	require.NoError(t, err)
	require.Equal(t, []string{"b0", "b1", "b2"}, ids(recs))
	require.Equal(t, recs[2].Seq, next)
	recs, next, err = ops.QueryEvents(ctx, js, topo, ops.EventFilter{Type: "oom-kill"}, next, 3)
	require.NoError(t, err)
	require.Equal(t, []string{"b3", "b4"}, ids(recs))
	require.Zero(t, next, "the last page has no next")

	recs, _, err = ops.QueryEvents(ctx, js, topo, ops.EventFilter{Namespace: "shop", Resource: "r-a3"}, 0, 10)
	require.NoError(t, err)
	require.Equal(t, []string{"a3"}, ids(recs))
	recs, _, err = ops.QueryEvents(ctx, js, topo, ops.EventFilter{MinSeverity: "error"}, 0, 100)
	require.NoError(t, err)
	require.Len(t, recs, 5)
	recs, _, err = ops.QueryEvents(ctx, js, topo, ops.EventFilter{Since: middle}, 0, 100)
	require.NoError(t, err)
	require.Equal(t, []string{"b0", "b1", "b2", "b3", "b4"}, ids(recs))
	recs, _, err = ops.QueryEvents(ctx, js, topo, ops.EventFilter{Until: middle}, 0, 100)
	require.NoError(t, err)
	require.Len(t, recs, 5)
	require.Error(t, ops.EventFilter{MinSeverity: "loud"}.Validate())

	// Tail sees only events stored after it starts.
	tctx, cancel := context.WithCancel(ctx)
	got := make(chan ops.EventRecord, 1)
	done := make(chan error, 1)
	go func() {
		done <- ops.TailEvents(tctx, js, topo, ops.EventFilter{Namespace: "ops"}, func(r ops.EventRecord) error {
			got <- r
			return nil
		})
	}()
	// The consumer starts asynchronously; publish until the tail has seen one, ignoring
	// the other namespace.
	require.Eventually(t, func() bool {
		publish("c-shop", "pod-restart", "shop", "info")
		publish("c-ops", "pod-restart", "ops", "info")
		select {
		case r := <-got:
			require.Equal(t, "c-ops", r.ID)
			return true
		default:
			return false
		}
	}, 10*time.Second, 50*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
}

// An event whose id is as long as the webhook accepts is replayed like any other: the copy's
// key is shortened to a hash, never skipped (before, id plus suffix passed the id limit and
// the event was skipped without a word).
func TestReplayOfLongIDs(t *testing.T) {
	js, topo := setup(t)
	id := strings.Repeat("k", 256)
	body, err := cloudevent.Encode(&cloudevent.Event{ID: id, Source: "webhook", Type: "deploy-failed", Data: json.RawMessage(`{}`)})
	require.NoError(t, err)
	msg := nats.NewMsg("khook.raw.webhook.deploy-failed")
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, id)
	streamstest.PublishAll(t, js, []*nats.Msg{msg})

	rp := &ops.Replayer{JS: js, Topo: topo}
	r, err := rp.Plan(context.Background(), ops.Selection{Through: ops.ThroughMapper})
	require.NoError(t, err)
	require.NoError(t, rp.Run(context.Background(), r))
	require.Equal(t, 1, r.Sent)
	require.Zero(t, r.Skipped)
	copies := copiesOf(t, js, topo.Raw.Name, r.ID)
	require.Len(t, copies, 1)
	st, err := js.Stream(context.Background(), topo.Raw.Name)
	require.NoError(t, err)
	last, err := st.GetMsg(context.Background(), 2)
	require.NoError(t, err)
	key := last.Header.Get(jetstream.MsgIDHeader)
	require.LessOrEqual(t, len(key), cloudevent.MaxKeyLength)
	require.True(t, strings.HasPrefix(key, "webhook/sha256-"), key)
	require.True(t, strings.HasSuffix(key, "/replay-"+r.ID), key)
}

// TestParseTime reads the bounds operators type: durations back from now, days included (the
// dead-letter stream keeps 14 days), and RFC 3339 times; anything else is refused.
func TestParseTime(t *testing.T) {
	before := time.Now()
	for v, back := range map[string]time.Duration{"2h": 2 * time.Hour, "2d": 48 * time.Hour, "1d12h": 36 * time.Hour, "90m": 90 * time.Minute} {
		got, err := ops.ParseTime(v, true)
		require.NoError(t, err, v)
		require.WithinRange(t, got, before.Add(-back), time.Now().Add(-back), v)
	}
	at, err := ops.ParseTime("2026-11-28T10:00:00Z", false)
	require.NoError(t, err)
	require.Equal(t, time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC), at.UTC())
	none, err := ops.ParseTime("", true)
	require.NoError(t, err)
	require.True(t, none.IsZero())
	for _, bad := range []string{"2x", "-2h", "0s", "yesterday"} {
		_, err := ops.ParseTime(bad, true)
		require.ErrorContains(t, err, "want an RFC 3339 time or a duration such as 2h or 2d", bad)
	}
	_, err = ops.ParseTime("2h", false)
	require.ErrorContains(t, err, "want an RFC 3339 time")
}
