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
	require.NoError(t, deadletter.Publish(ctx, js, topo.Subjects(), deadletter.Letter{Stage: "mapper", Reason: "too-large", Err: cause, Msg: msg}))
	dlq, err := js.Stream(ctx, topo.DLQ.Name)
	require.NoError(t, err)
	letter, err := dlq.GetLastMsgForSubject(ctx, "khook.dlq.mapper")
	require.NoError(t, err)
	require.Equal(t, strconv.Itoa(len(in.Data)), letter.Header.Get(deadletter.HeaderTruncated))
	require.Less(t, len(letter.Data), len(in.Data))
	require.Equal(t, cause.Error(), letter.Header.Get(deadletter.HeaderError))
}
