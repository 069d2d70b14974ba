package outcome_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/outcome"
	"github.com/khook/khook/streams/streamstest"
)

func setup(t *testing.T) (*nats.Conn, jetstream.JetStream, streams.Config) {
	t.Helper()
	nc, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	_, err := streams.Apply(context.Background(), js, topo)
	require.NoError(t, err)
	return nc, js, topo
}

// stored returns the records on subject.
func stored(t *testing.T, js jetstream.JetStream, topo streams.Config, subject string) []outcome.Record {
	t.Helper()
	st, err := js.Stream(context.Background(), topo.Outcomes.Name)
	require.NoError(t, err)
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	require.NoError(t, err)
	var out []outcome.Record
	for subj := range info.State.Subjects {
		m, err := st.GetLastMsgForSubject(context.Background(), subj)
		require.NoError(t, err)
		r, err := outcome.Decode(m.Data)
		require.NoError(t, err)
		out = append(out, r)
	}
	return out
}

// A replayed copy's record is kept under its own id, and mirrored under its original's, so
// that describing either finds it; whoever counts skips the mirror.
func TestCopyRecordsAreKeptUnderBothIDs(t *testing.T) {
	_, js, topo := setup(t)
	failed := prometheus.NewCounter(prometheus.CounterOpts{Name: "failed"})
	rec := outcome.NewRecorder(js, topo.Subjects(), failed, zaptest.NewLogger(t))
	go rec.Run(t.Context())
	rec.Event("webhook/e1/replay-r1", outcome.Record{Outcome: outcome.Delivered, Hook: "shop/h", Agent: "kagent/a",
		MessageID: "m1", ReplayID: "r1", OriginalID: "webhook/e1"})
	subjects := topo.Subjects()
	own, mirror := subjects.EventOutcomes(outcome.EventHash("webhook/e1/replay-r1")), subjects.EventOutcomes(outcome.EventHash("webhook/e1"))
	require.Eventually(t, func() bool {
		return len(stored(t, js, topo, own)) == 1 && len(stored(t, js, topo, mirror)) == 1
	}, 10*time.Second, 10*time.Millisecond)
	r := stored(t, js, topo, own)[0]
	require.Equal(t, "webhook/e1/replay-r1", r.EventID)
	require.False(t, r.Mirrored(own))
	require.True(t, stored(t, js, topo, mirror)[0].Mirrored(mirror))
	require.Zero(t, testutil.ToFloat64(failed))

	// Two tasks of one Hook and agent (two entries) are two tasks; a grouped event's task is
	// its group's, whichever record names it.
	a := outcome.Record{Hook: "shop/h", Agent: "kagent/a", MessageID: "m1"}
	b := outcome.Record{Hook: "shop/h", Agent: "kagent/a", MessageID: "m2"}
	require.NotEqual(t, a.TaskKey(), b.TaskKey())
	joined := outcome.Record{Hook: "shop/h", Agent: "kagent/a", Group: "g1", GroupTask: "m3"}
	failedInGroup := outcome.Record{Hook: "shop/h", Agent: "kagent/a", Group: "g1", MessageID: "m3"}
	require.Equal(t, joined.TaskKey(), failedInGroup.TaskKey())
}

// An outcomes stream that stops answering costs the stage nothing: past the recorder's own
// window of unacknowledged records, records are dropped and counted at once, and the
// stage's own publishes on the same connection are untouched.
func TestStalledOutcomesNeverHoldTheStageUp(t *testing.T) {
	nc, js, topo := setup(t)
	ctx := context.Background()
	// Records go to a subscriber that never answers, as a stream without a leader would.
	require.NoError(t, js.DeleteStream(ctx, topo.Outcomes.Name))
	sink, err := nc.Subscribe(topo.Subjects().AllOutcomes(), func(*nats.Msg) {})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sink.Unsubscribe() })

	failed := prometheus.NewCounter(prometheus.CounterOpts{Name: "failed"})
	rec := outcome.NewRecorder(js, topo.Subjects(), failed, zaptest.NewLogger(t))
	const over = 100
	for range 4096 + over {
		rec.Event("webhook/e", outcome.Record{Outcome: outcome.Unmatched})
	}
	require.Equal(t, float64(over), testutil.ToFloat64(failed), "the records past the window are dropped, and counted")

	// The stage's own asynchronous publishes have their whole window.
	for i := range 1000 {
		m := nats.NewMsg("khook.events.deploy-failed")
		m.Data = []byte(`{}`)
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprint("webhook/x-", i))
		_, err := js.PublishMsgAsync(m)
		require.NoError(t, err, "publish %d", i)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("the stage's publishes were not acknowledged")
	}
}
