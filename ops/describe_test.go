package ops_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/khook/khook/mapping"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/outcome"
)

// record stores records as the stages do, and waits until the server has them.
func record(t *testing.T, js jetstream.JetStream, topo streams.Config, records map[string][]outcome.Record, groups map[string][]outcome.Record) {
	t.Helper()
	rec := outcome.NewRecorder(js, topo.Subjects(), prometheus.NewCounter(prometheus.CounterOpts{Name: "failed"}), zaptest.NewLogger(t))
	n := 0
	for id, rs := range records {
		for _, r := range rs {
			rec.Event(id, r)
			n++
			if r.OriginalID != "" {
				n++
			}
		}
	}
	for key, rs := range groups {
		for _, r := range rs {
			rec.Group(key, r)
			n++
		}
	}
	st, err := js.Stream(context.Background(), topo.Outcomes.Name)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := st.Info(context.Background())
		return err == nil && info.State.Msgs >= uint64(n)
	}, 10*time.Second, 10*time.Millisecond)
}

// storeEvent stores a normalized event with id, as the mapper does.
func storeEvent(t *testing.T, js jetstream.JetStream, id string, h map[string]string) uint64 {
	t.Helper()
	ev := mapping.Event{ID: id, Source: "webhook", Type: "deploy-failed", Namespace: "shop", Severity: "error",
		Resource: mapping.Resource{Kind: "Deployment", Name: "cart"}}
	body, err := ev.Encode()
	require.NoError(t, err)
	msg := nats.NewMsg("khook.events.deploy-failed")
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, id)
	for k, v := range h {
		msg.Header.Set(k, v)
	}
	ack, err := js.PublishMsg(context.Background(), msg)
	require.NoError(t, err)
	return ack.Sequence
}

// A replayed copy of an event with a long id (its copy's id is a hash of the original's,
// with no way back) is described by its own id; two tasks of one Hook and agent (two
// entries) stay two tasks; and a grouped event that arrived while its group's task was
// being sent goes in the next task, unless that send was given back and tried again after it
// arrived, when the retry covers it.
func TestDescribeCopiesTasksAndGroupTasks(t *testing.T) {
	js, topo := setup(t)
	ctx := context.Background()
	original := "webhook/" + strings.Repeat("k", cloudevent.MaxKeyLength-12)
	copyID := cloudevent.DeriveKey(original, "/replay-r1")
	require.True(t, strings.HasPrefix(copyID, "webhook/sha256-"), "a hashed copy id: %s", copyID)
	seq := storeEvent(t, js, original, nil)
	copySeq := storeEvent(t, js, copyID, map[string]string{streams.HeaderReplayID: "r1", streams.HeaderOriginalID: original})

	now := time.Now().UTC()
	record(t, js, topo, map[string][]outcome.Record{
		original: {
			{Outcome: outcome.Delivered, Stage: outcome.StageDispatcher, EventSeq: seq, Hook: "shop/h", Agent: "kagent/a", MessageID: "m-entry-1", Time: now},
			{Outcome: outcome.Suppressed, Stage: outcome.StageDispatcher, EventSeq: seq, Hook: "shop/h", Agent: "kagent/a", MessageID: "m-entry-2",
				SuppressedBy: "m-other", Time: now},
			// The same event joined group g while its task m-g0 was being sent.
			{Outcome: outcome.Grouped, Stage: outcome.StageDispatcher, EventSeq: seq, Hook: "shop/g", Agent: "kagent/a", Group: "g",
				GroupTask: "m-g1", GroupSending: "m-g0", Time: now},
		},
		copyID: {{Outcome: outcome.Delivered, Stage: outcome.StageDispatcher, EventSeq: copySeq, Hook: "shop/h", Agent: "kagent/a",
			MessageID: "m-copy", ReplayID: "r1", OriginalID: original, Time: now}},
	}, map[string][]outcome.Record{
		"g": {{Outcome: outcome.Delivered, Hook: "shop/g", Agent: "kagent/a", Group: "g", MessageID: "m-g0", Events: 3, Time: now.Add(time.Second)}},
	})

	d, err := ops.Describe(ctx, js, topo, original)
	require.NoError(t, err)
	got := map[string]outcome.Kind{}
	for _, task := range d.Tasks {
		got[task.MessageID+" "+task.ReplayID] = task.Outcome
	}
	require.Equal(t, map[string]outcome.Kind{"m-entry-1 ": outcome.Delivered, "m-entry-2 ": outcome.Suppressed,
		"m-g1 ": outcome.Grouped, "m-copy r1": outcome.Delivered}, got)
	grouped := d.Tasks[2]
	require.Equal(t, "m-g1", grouped.Group.MessageID, "the send in progress covered only what came before")
	require.Equal(t, outcome.Waiting, grouped.Group.Outcome)
	require.Equal(t, outcome.Delivered, d.Tasks[3].Outcome, "the copy's task comes last")

	c, err := ops.Describe(ctx, js, topo, copyID)
	require.NoError(t, err)
	require.Equal(t, copyID, c.ID)
	require.Len(t, c.Tasks, 1)
	require.Equal(t, "m-copy", c.Tasks[0].MessageID)
	byCopySeq, err := ops.Describe(ctx, js, topo, fmt.Sprint(copySeq))
	require.NoError(t, err)
	require.Equal(t, c.Tasks, byCopySeq.Tasks)

	// The send in progress is given back (a retry) after the event arrived: the retry
	// covers it.
	record(t, js, topo, nil, map[string][]outcome.Record{
		"g": {{Outcome: outcome.Retrying, Hook: "shop/g", Agent: "kagent/a", Group: "g", MessageID: "m-g0", Time: now.Add(2 * time.Second)}},
	})
	d, err = ops.Describe(ctx, js, topo, original)
	require.NoError(t, err)
	require.Equal(t, "m-g0", d.Tasks[2].Group.MessageID)
	require.Equal(t, outcome.Retrying, d.Tasks[2].Group.Outcome)
}

// Bad and unknown ids cost a bounded read and say why; status works on streams applied
// before outcomes were recorded.
func TestDescribeBoundsAndErrors(t *testing.T) {
	js, topo := setup(t)
	ctx := context.Background()
	for _, id := range []string{"", "0", "99"} {
		_, err := ops.Describe(ctx, js, topo, id)
		require.ErrorIs(t, err, ops.ErrEventNotFound, "%q", id)
	}
	// An event still waiting for the mapper is found, by its message id, among the
	// unhandled raw events.
	publishRaw(t, js, 10)
	d, err := ops.Describe(ctx, js, topo, "webhook/ev-7")
	require.NoError(t, err)
	require.Equal(t, "pending", d.Mapping)
	require.Equal(t, uint64(8), d.Raw.Seq)
	_, err = ops.Describe(ctx, js, topo, "webhook/never-sent")
	require.ErrorIs(t, err, ops.ErrEventNotFound)
	require.ErrorContains(t, err, "not among the unhandled events")

	require.NoError(t, js.DeleteStream(ctx, topo.Outcomes.Name))
	st, err := ops.GetStatus(ctx, js, topo, nil, nil)
	require.NoError(t, err, "an install whose stages have not created the outcomes stream yet")
	require.Len(t, st.Streams, 3)
	c, err := ops.CountOutcomes(ctx, js, topo, time.Hour)
	require.NoError(t, err)
	require.Empty(t, c.Hooks)
}

// Status counts each decision once: an event redelivered because another of its tasks was
// retried records its earlier decisions again, a replayed copy's records are mirrored under
// its original, and a group's task is one delivered task however many events it covered.
func TestCountOutcomesCountsEachDecisionOnce(t *testing.T) {
	js, topo := setup(t)
	ctx := context.Background()
	grouped := outcome.Record{Outcome: outcome.Grouped, Hook: "shop/g", Agent: "kagent/a", Group: "g", GroupTask: "m-g0"}
	again := grouped
	again.Repeat, again.GroupTask = true, ""
	suppressed := outcome.Record{Outcome: outcome.Suppressed, Hook: "shop/h", Agent: "kagent/a", MessageID: "m-2", SuppressedBy: "m-1"}
	retry := func(attempt int) outcome.Record {
		return outcome.Record{Outcome: outcome.Retrying, Hook: "shop/r", Agent: "kagent/b", MessageID: "m-3", Attempt: attempt}
	}
	delivered := outcome.Record{Outcome: outcome.Delivered, Hook: "shop/r", Agent: "kagent/b", MessageID: "m-3"}
	copyDelivered := outcome.Record{Outcome: outcome.Delivered, Hook: "shop/h", Agent: "kagent/a", MessageID: "m-4",
		ReplayID: "r1", OriginalID: "webhook/e1"}
	record(t, js, topo, map[string][]outcome.Record{
		// e1 matched three Hooks; its shop/r task failed twice, so e1 came back twice and
		// its grouped and suppressed tasks were decided again each time.
		"webhook/e1":           {grouped, suppressed, retry(1), again, suppressed, retry(2), again, suppressed, delivered},
		"webhook/e2":           {grouped},
		"webhook/e1/replay-r1": {copyDelivered},
		"webhook/e3":           {{Outcome: outcome.Unmatched}},
	}, map[string][]outcome.Record{
		"g": {{Outcome: outcome.Delivered, Hook: "shop/g", Agent: "kagent/a", Group: "g", MessageID: "m-g0", Events: 2}},
	})
	c, err := ops.CountOutcomes(ctx, js, topo, time.Hour)
	require.NoError(t, err)
	require.Equal(t, []ops.HookCounts{
		{Hook: "shop/g", Matched: 2, Delivered: 1, Grouped: 2},
		{Hook: "shop/h", Matched: 2, Delivered: 1, Suppressed: 1},
		{Hook: "shop/r", Matched: 1, Delivered: 1, Retried: 2},
	}, c.Hooks)
	require.Equal(t, 1, c.Unmatched)
}
