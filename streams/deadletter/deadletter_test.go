package deadletter_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/deadletter"
	"github.com/khook/khook/streams/streamstest"
)

// A message that fit its stream can be too large to dead-letter, once the letter's headers
// are added. Its body is cut to fit, the cut is recorded, and the letter is stored: a
// dead letter is never lost to its own size.
func TestOversizedDeadLetterIsTruncated(t *testing.T) {
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	ctx := context.Background()
	_, err := streams.Apply(ctx, js, topo)
	require.NoError(t, err)

	limit := streams.MaxPayload(js)
	in := nats.NewMsg("khook.raw.webhook.deploy-failed")
	in.Data = []byte(strings.Repeat("x", limit-200))
	in.Header.Set(jetstream.MsgIDHeader, "webhook/big")
	_, err = js.PublishMsg(ctx, in)
	require.NoError(t, err, "the message itself fits")
	cons, err := js.Consumer(ctx, topo.Raw.Name, topo.Mapper.Durable)
	require.NoError(t, err)
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	require.NoError(t, err)

	cause := errors.New(strings.Repeat("a long reason, ", 50) + "the end")
	seq, err := deadletter.Publish(ctx, js, topo.Subjects(), deadletter.Letter{Stage: "mapper", Reason: "too-large", Err: cause, Msg: msg})
	require.NoError(t, err)
	require.Positive(t, seq)
	dlq, err := js.Stream(ctx, topo.DLQ.Name)
	require.NoError(t, err)
	letter, err := dlq.GetLastMsgForSubject(ctx, "khook.dlq.mapper")
	require.NoError(t, err)
	require.Equal(t, letter.Sequence, seq, "Publish returns where the letter is")
	require.Equal(t, strconv.Itoa(len(in.Data)), letter.Header.Get(deadletter.HeaderTruncated))
	require.Less(t, len(letter.Data), len(in.Data))
	require.Equal(t, cause.Error(), letter.Header.Get(deadletter.HeaderError))
}

// Settle terminates a message only after its dead letter is stored. When the dead-letter
// stream is gone, the message is nak'd and comes back, so nothing is lost with it.
func TestSettleTerminatesOnlyWhatItStored(t *testing.T) {
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	ctx := context.Background()
	_, err := streams.Apply(ctx, js, topo)
	require.NoError(t, err)
	for _, id := range []string{"webhook/a", "webhook/b"} {
		in := nats.NewMsg("khook.raw.webhook.deploy-failed")
		in.Data = []byte(`{}`)
		in.Header.Set(jetstream.MsgIDHeader, id)
		_, err = js.PublishMsg(ctx, in)
		require.NoError(t, err)
	}
	cons, err := js.Consumer(ctx, topo.Raw.Name, topo.Mapper.Durable)
	require.NoError(t, err)
	next := func() jetstream.Msg {
		t.Helper()
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		require.NoError(t, err)
		return msg
	}
	logger := zap.NewNop()

	first := next()
	require.Positive(t, deadletter.Settle(ctx, js, topo.Subjects(), deadletter.Letter{Stage: "mapper", Reason: "unmapped", Msg: first}, time.Millisecond, logger))
	dlq, err := js.Stream(ctx, topo.DLQ.Name)
	require.NoError(t, err)
	info, err := dlq.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Msgs)

	// Without a dead-letter stream the letter cannot be stored: the message is nak'd.
	require.NoError(t, js.DeleteStream(ctx, topo.DLQ.Name))
	second := next()
	require.Zero(t, deadletter.Settle(ctx, js, topo.Subjects(), deadletter.Letter{Stage: "mapper", Reason: "unmapped", Msg: second}, time.Millisecond, logger))
	again := next()
	require.Equal(t, second.Headers().Get(jetstream.MsgIDHeader), again.Headers().Get(jetstream.MsgIDHeader), "redelivered")
	meta, err := again.Metadata()
	require.NoError(t, err)
	require.Equal(t, uint64(2), meta.NumDelivered)
	require.NoError(t, again.DoubleAck(ctx))

	// The first was terminated, not left pending: nothing is waiting for an ack to come
	// back for.
	ci, err := cons.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, 0, ci.NumAckPending)
}
