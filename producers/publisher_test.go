package producers

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/streamstest"
)

// A publish waiting for JetStream's acknowledgement when the connection drops fails at once
// with ErrUnavailable, while Run watches the connection, rather than waiting out its caller's
// timeout (a webhook sender would see its request hang).
func TestPublishFailsFastWhenTheConnectionDrops(t *testing.T) {
	ns := streamstest.RunServer(t)
	nc, js := streamstest.Connect(t, ns)
	// No stream holds the raw subjects; a subscriber that never answers takes them, so the
	// publish below waits for an acknowledgement that cannot come.
	received := make(chan struct{}, 1)
	sub, err := nc.Subscribe(streams.Default().Subjects().Prefix+".raw.>", func(*nats.Msg) { received <- struct{}{} })
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	require.NoError(t, nc.Flush())

	pub := NewPublisher(js, streams.Default().Subjects(), NewMetrics(prometheus.NewRegistry()))
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	running := make(chan error, 1)
	go func() { running <- pub.Run(ctx) }()
	// Run has subscribed to the connection's status once the link is no longer the
	// never-cancelled background context.
	require.Eventually(t, func() bool { return (*pub.link.Load()).Done() != nil }, 10*time.Second, 5*time.Millisecond)

	// A deadline far beyond any fast failure: reaching it means the drop was not noticed.
	emitCtx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	result := make(chan error, 1)
	go func() {
		_, err := pub.Emitter("stall")(emitCtx, Event{ID: "1", Type: "x", Data: []byte(`{}`)})
		result <- err
	}()
	<-received
	ns.Shutdown()
	err = <-result
	require.ErrorIs(t, err, ErrUnavailable)
	require.False(t, errors.Is(err, context.DeadlineExceeded), "failed at the drop, not at the caller's deadline: %v", err)

	stop()
	require.NoError(t, <-running)
}
