// Package streamstest starts real, in-process NATS servers with JetStream for tests.
package streamstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// RunServer starts a JetStream server on a random loopback port with file storage in a
// temporary directory, and shuts it down when the test ends.
func RunServer(t testing.TB) *server.Server {
	t.Helper()
	return RunServerAt(t, t.TempDir(), server.RANDOM_PORT)
}

// RunServerAt starts a JetStream server with file storage in dir on the given port, so that a
// test can stop it and start it again on the same port and data.
func RunServerAt(t testing.TB, dir string, port int) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      port,
		JetStream: true,
		StoreDir:  dir,
		NoSigs:    true,
		NoLog:     true,
	})
	require.NoError(t, err)
	ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second), "nats server not ready")
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// Connect returns a connection and JetStream context to ns, closed when the test ends.
func Connect(t testing.TB, ns *server.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(ns.ClientURL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return nc, js
}

// PublishAll stores msgs with asynchronous publishes, never more than a window of them
// unacknowledged at once, and fails the test if any is refused. The window is the
// back-pressure: a slow server (a busy CI machine) makes PublishAll wait rather than fail
// with nats.go's "stalled with too many outstanding async published messages".
func PublishAll(t testing.TB, js jetstream.JetStream, msgs []*nats.Msg) {
	t.Helper()
	const window = 512
	futures := make([]jetstream.PubAckFuture, 0, window)
	settle := func() {
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				require.NoError(t, err, "publish to %s", f.Msg().Subject)
			case <-time.After(time.Minute):
				t.Fatalf("publish to %s not acknowledged within a minute", f.Msg().Subject)
			}
		}
		futures = futures[:0]
	}
	for _, m := range msgs {
		f, err := js.PublishMsgAsync(m)
		require.NoError(t, err)
		if futures = append(futures, f); len(futures) == window {
			settle()
		}
	}
	settle()
}
