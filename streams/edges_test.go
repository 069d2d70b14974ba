package streams_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/streamstest"
)

// The raw stream sources one stream per listed edge, by domain; apply is idempotent, removes
// an edge's source when it leaves the list (keeping what it stored), and never touches a
// source an operator added.
func TestApplyManagesEdgeSources(t *testing.T) {
	ctx := context.Background()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	cfg := streams.Default()
	cfg.Edges = []string{"eu-1", "us-1"}
	_, err := streams.Apply(ctx, js, cfg)
	require.NoError(t, err)
	raw := func() jetstream.StreamConfig {
		s, err := js.Stream(ctx, cfg.Raw.Name)
		require.NoError(t, err)
		return s.CachedInfo().Config
	}
	var prefixes []string
	for _, src := range raw().Sources {
		require.Equal(t, cfg.Raw.Name, src.Name)
		prefixes = append(prefixes, src.External.APIPrefix)
	}
	require.ElementsMatch(t, []string{"$JS.eu-1.API", "$JS.us-1.API"}, prefixes)
	again, err := streams.Apply(ctx, js, cfg)
	require.NoError(t, err)
	require.Equal(t, streams.Unchanged, again[0].Action, again[0].String())

	// An operator's own source on the raw stream.
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "LEGACY", Subjects: []string{"legacy.>"}})
	require.NoError(t, err)
	withLegacy := raw()
	withLegacy.Sources = append(withLegacy.Sources, &jetstream.StreamSource{Name: "LEGACY"})
	_, err = js.UpdateStream(ctx, withLegacy)
	require.NoError(t, err)
	again, err = streams.Apply(ctx, js, cfg)
	require.NoError(t, err)
	require.Equal(t, streams.Unchanged, again[0].Action, "an operator's source is not khook's to compare")

	// A source from another domain an operator added by hand, on the stream's own name, is
	// not khook's either: apply neither reports nor removes it.
	withLegacy = raw()
	withLegacy.Sources = append(withLegacy.Sources, &jetstream.StreamSource{Name: cfg.Raw.Name,
		External: &jetstream.ExternalStream{APIPrefix: "$JS.legacy.API"}})
	_, err = js.UpdateStream(ctx, withLegacy)
	require.NoError(t, err)
	again, err = streams.Apply(ctx, js, cfg)
	require.NoError(t, err)
	require.Equal(t, streams.Unchanged, again[0].Action, again[0].String())

	cfg.Edges = []string{"eu-1"}
	plan, err := streams.Plan(ctx, js, cfg)
	require.NoError(t, err)
	require.Equal(t, streams.Updated, plan[0].Action)
	require.Contains(t, strings.Join(plan[0].Diff, "\n"), "edge sources: [eu-1 us-1] -> [eu-1] (a removed edge's events stay stored)")
	_, err = streams.Apply(ctx, js, cfg)
	require.NoError(t, err)
	var names []string
	for _, src := range raw().Sources {
		names = append(names, src.Name+"@"+streams.EdgeOf(src))
	}
	require.ElementsMatch(t, []string{"KHOOK_RAW@eu-1", "LEGACY@", "KHOOK_RAW@legacy"}, names)

	// Without clusters (a single-cluster install, or the last edge removed), only khook's
	// sources go.
	cfg.Edges = nil
	_, err = streams.Apply(ctx, js, cfg)
	require.NoError(t, err)
	names = nil
	for _, src := range raw().Sources {
		names = append(names, src.Name+"@"+streams.EdgeOf(src))
	}
	require.ElementsMatch(t, []string{"LEGACY@", "KHOOK_RAW@legacy"}, names)
	again, err = streams.Apply(ctx, js, cfg)
	require.NoError(t, err)
	require.Equal(t, streams.Unchanged, again[0].Action, again[0].String())
}

// startLeafPair starts a hub with a leaf port and an edge in domain eu-1 that dials it, as
// khook's embedded servers are set up, waits for the leaf connection, and returns a
// JetStream client of each.
func startLeafPair(t *testing.T, topo streams.Config) (hub, edge jetstream.JetStream) {
	t.Helper()
	ctx := context.Background()
	leaf := freeAddr(t)
	hs, hubOpts, err := streams.StartEmbedded(ctx, streams.EmbeddedConfig{StoreDir: t.TempDir(),
		Leafnodes: streams.Leafnodes{Listen: leaf, Username: "edge", PasswordFile: secretFile(t, "pw\n")}}, topo.Subjects())
	require.NoError(t, err)
	t.Cleanup(hs.Shutdown)
	u, err := url.Parse("nats-leaf://edge:pw@" + leaf)
	require.NoError(t, err)
	es, edgeOpts, err := streams.StartEmbedded(ctx, streams.EmbeddedConfig{StoreDir: t.TempDir(), Domain: "eu-1",
		Remote: &streams.LeafRemote{URLs: []*url.URL{u}, Deny: topo.LeafDeny()}}, topo.Subjects())
	require.NoError(t, err)
	t.Cleanup(es.Shutdown)
	require.Eventually(t, func() bool { return hs.NumLeafNodes() == 1 }, 10*time.Second, 20*time.Millisecond)
	connect := func(srv interface{ ClientURL() string }, opts []nats.Option) jetstream.JetStream {
		nc, err := nats.Connect(srv.ClientURL(), opts...)
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		return js
	}
	return connect(hs, append(hubOpts, nats.InProcessServer(hs))), connect(es, append(edgeOpts, nats.InProcessServer(es)))
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

func secretFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

// An edge stores its events in its own domain, and the hub's raw stream takes each once,
// through its source: the leaf connection, which denies khook's subjects both ways, never
// carries a publish to the hub's stream as well.
func TestEdgeForwardsEachEventOnceThroughItsLeaf(t *testing.T) {
	ctx := context.Background()
	topo := streams.Default()
	hjs, ejs := startLeafPair(t, topo)
	_, err := streams.ApplyEdge(ctx, ejs, topo, streams.DefaultEdgeBuffer())
	require.NoError(t, err)
	topo.Edges = []string{"eu-1"}
	_, err = streams.Apply(ctx, hjs, topo)
	require.NoError(t, err)

	const n = 50
	for i := range n {
		m := nats.NewMsg(fmt.Sprintf("khook.raw.webhook.t%d", i))
		m.Data = []byte(`{}`)
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("webhook/@eu-1/%d", i))
		_, err := ejs.PublishMsg(ctx, m)
		require.NoError(t, err)
	}
	msgs := func(js jetstream.JetStream) uint64 {
		s, err := js.Stream(ctx, topo.Raw.Name)
		require.NoError(t, err)
		info, err := s.Info(ctx)
		require.NoError(t, err)
		return info.State.Msgs
	}
	require.Eventually(t, func() bool {
		states, err := streams.Edges(ctx, hjs, topo)
		return err == nil && len(states) == 1 && states[0].Forwarded == n && states[0].Lag == 0 && states[0].Connected
	}, time.Minute, 50*time.Millisecond)
	require.Equal(t, uint64(n), msgs(hjs), "the hub stores each event once")
	require.Equal(t, uint64(n), msgs(ejs))

	// A publish at the hub on the raw subjects stays at the hub.
	_, err = hjs.Publish(ctx, "khook.raw.webhook.local", []byte(`{}`))
	require.NoError(t, err)
	require.Equal(t, uint64(n), msgs(ejs), "the edge imports none of khook's subjects")

	// What the hub has is trimmed from the edge, once its stream is older than the margin
	// that tells the source's position is about this stream.
	hubConn := hjs.Conn()
	removed, err := streams.TrimEdges(ctx, hubConn, topo, streams.TrimAfter)
	require.NoError(t, err)
	require.Empty(t, removed, "a stream younger than the margin is not trimmed")
	removed, err = streams.TrimEdges(ctx, hubConn, topo, 0)
	require.NoError(t, err)
	require.Equal(t, map[string]uint64{"eu-1": n}, removed)
	require.Zero(t, msgs(ejs))
	require.Equal(t, uint64(n+1), msgs(hjs), "the hub keeps every event")

	// The edge's stream re-created: its sequences start again below what the hub's source
	// last took, and nothing is trimmed until the hub has the new stream's events.
	require.NoError(t, ejs.DeleteStream(ctx, topo.Raw.Name))
	_, err = streams.ApplyEdge(ctx, ejs, topo, streams.DefaultEdgeBuffer())
	require.NoError(t, err)
	for i := range 5 {
		m := nats.NewMsg("khook.raw.webhook.again")
		m.Data = []byte(`{}`)
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("webhook/@eu-1/again-%d", i))
		_, err := ejs.PublishMsg(ctx, m)
		require.NoError(t, err)
	}
	removed, err = streams.TrimEdges(ctx, hubConn, topo, 0)
	require.NoError(t, err)
	require.Empty(t, removed, "the source's old position is not the new stream's")
	require.Equal(t, uint64(5), msgs(ejs))
	require.Eventually(t, func() bool { return msgs(hjs) == n+1+5 }, 2*time.Minute, 100*time.Millisecond,
		"the hub takes the re-created stream's events")
}

// A connected edge whose hub keeps up never fills its buffer: the hub trims what it stored,
// so a 1 MiB buffer carries 8 MiB of events.
func TestTrimmedEdgeNeverFillsUp(t *testing.T) {
	ctx := context.Background()
	topo := streams.Default()
	hjs, ejs := startLeafPair(t, topo)
	hnc := hjs.Conn()
	_, err := streams.ApplyEdge(ctx, ejs, topo, streams.EdgeBuffer{MaxAge: time.Hour, MaxBytes: 1 << 20})
	require.NoError(t, err)
	topo.Edges = []string{"eu-1"}
	_, err = streams.Apply(ctx, hjs, topo)
	require.NoError(t, err)
	payload := []byte(strings.Repeat("x", 4096))
	for i := range 2000 {
		m := nats.NewMsg("khook.raw.webhook.t")
		m.Data = payload
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("webhook/@eu-1/%d", i))
		_, err := ejs.PublishMsg(ctx, m)
		require.NoError(t, err, "event %d refused although the hub had every earlier one", i)
		if (i+1)%100 == 0 {
			require.Eventually(t, func() bool {
				st, err := streams.Edges(ctx, hjs, topo)
				return err == nil && st[0].Forwarded == uint64(i+1)
			}, time.Minute, 10*time.Millisecond)
			_, err := streams.TrimEdges(ctx, hnc, topo, 0)
			require.NoError(t, err)
		}
	}
}

// A hub's leaf port is never open without a password: a missing or empty secret is an
// error that names the key.
func TestHubLeafPortFailsClosed(t *testing.T) {
	ctx := context.Background()
	for name, l := range map[string]streams.Leafnodes{
		"no username":         {Listen: freeAddr(t), PasswordFile: secretFile(t, "pw")},
		"no password file":    {Listen: freeAddr(t), Username: "edge"},
		"empty password file": {Listen: freeAddr(t), Username: "edge", PasswordFile: secretFile(t, " \n")},
		"missing file":        {Listen: freeAddr(t), Username: "edge", PasswordFile: "/nonexistent/pw"},
		"key without cert":    {Listen: freeAddr(t), Username: "edge", PasswordFile: secretFile(t, "pw"), TLS: streams.ServerTLS{KeyFile: "k"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := streams.StartEmbedded(ctx, streams.EmbeddedConfig{StoreDir: t.TempDir(), Leafnodes: l}, streams.Default().Subjects())
			require.ErrorContains(t, err, "nats.embedded.leafnodes.")
		})
	}
}

// A full edge refuses new events, as a retryable error, and keeps every event it stored:
// its buffer is discard new, so the oldest unforwarded events are never dropped for room.
func TestFullEdgeRefusesAndKeepsWhatItStored(t *testing.T) {
	ctx := context.Background()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	_, err := streams.ApplyEdge(ctx, js, topo, streams.EdgeBuffer{MaxAge: time.Hour, MaxBytes: 1 << 20})
	require.NoError(t, err)
	payload := []byte(strings.Repeat("x", 4096))
	var stored int
	var refusal error
	for i := range 1000 {
		m := nats.NewMsg("khook.raw.webhook.t")
		m.Data = payload
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprint(i))
		if _, err := js.PublishMsg(ctx, m); err != nil {
			refusal = err
			break
		}
		stored++
	}
	require.Error(t, refusal, "a 1 MiB buffer takes no 4 MiB")
	require.False(t, streams.Unstorable(refusal), "a full buffer is temporary (503), not a bad event (413): %v", refusal)
	s, err := js.Stream(ctx, topo.Raw.Name)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.FirstSeq, "nothing stored was dropped for room")
	require.Equal(t, uint64(stored), info.State.Msgs)
	require.Error(t, (streams.EdgeBuffer{MaxAge: time.Hour, MaxBytes: 1000}).Validate("edge.buffer"))
}

// writeCert writes a self-signed certificate for localhost and its key into dir.
func writeCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	return certFile, keyFile
}

// A hub's leaf port with TLS: an edge that trusts the hub's certificate connects, and its
// events reach the hub's raw stream.
func TestEdgeReachesTheHubOverTLS(t *testing.T) {
	ctx := context.Background()
	topo := streams.Default()
	certFile, keyFile := writeCert(t, t.TempDir())
	_, port, err := net.SplitHostPort(freeAddr(t))
	require.NoError(t, err)
	hub, hubOpts, err := streams.StartEmbedded(ctx, streams.EmbeddedConfig{StoreDir: t.TempDir(),
		Leafnodes: streams.Leafnodes{Listen: "127.0.0.1:" + port, Username: "edge", PasswordFile: secretFile(t, "pw"),
			TLS: streams.ServerTLS{CertFile: certFile, KeyFile: keyFile}}}, topo.Subjects())
	require.NoError(t, err)
	t.Cleanup(hub.Shutdown)
	pemBytes, err := os.ReadFile(certFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(pemBytes))
	u, err := url.Parse("tls://edge:pw@localhost:" + port)
	require.NoError(t, err)
	edge, edgeOpts, err := streams.StartEmbedded(ctx, streams.EmbeddedConfig{StoreDir: t.TempDir(), Domain: "eu-1",
		Remote: &streams.LeafRemote{URLs: []*url.URL{u}, Deny: topo.LeafDeny(),
			TLS: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}}}, topo.Subjects())
	require.NoError(t, err)
	t.Cleanup(edge.Shutdown)
	require.Eventually(t, func() bool { return hub.NumLeafNodes() == 1 }, 10*time.Second, 20*time.Millisecond, "the edge connects over TLS")

	hnc, err := nats.Connect(hub.ClientURL(), append(hubOpts, nats.InProcessServer(hub))...)
	require.NoError(t, err)
	t.Cleanup(hnc.Close)
	enc, err := nats.Connect(edge.ClientURL(), append(edgeOpts, nats.InProcessServer(edge))...)
	require.NoError(t, err)
	t.Cleanup(enc.Close)
	hjs, _ := jetstream.New(hnc)
	ejs, _ := jetstream.New(enc)
	_, err = streams.ApplyEdge(ctx, ejs, topo, streams.DefaultEdgeBuffer())
	require.NoError(t, err)
	topo.Edges = []string{"eu-1"}
	_, err = streams.Apply(ctx, hjs, topo)
	require.NoError(t, err)
	m := nats.NewMsg("khook.raw.webhook.t")
	m.Data = []byte(`{}`)
	_, err = ejs.PublishMsg(ctx, m)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		st, err := streams.Edges(ctx, hjs, topo)
		return err == nil && st[0].Forwarded == 1
	}, time.Minute, 50*time.Millisecond, "the event reaches the hub")
}

// An edge added to a hub whose raw stream has moved on (its first events expired or were
// purged) is sourced from the edge's first event: what the edge buffered before the hub's
// latest message is not skipped (and then trimmed as if forwarded).
func TestNewEdgeIsSourcedFromItsFirstEvent(t *testing.T) {
	ctx := context.Background()
	topo := streams.Default()
	hjs, ejs := startLeafPair(t, topo)

	// The edge buffers five events; then the hub, still without the edge, stores and loses
	// three of its own, so its stream's first sequence is past 1 and its last message is
	// newer than the edge's events.
	_, err := streams.ApplyEdge(ctx, ejs, topo, streams.DefaultEdgeBuffer())
	require.NoError(t, err)
	for i := range 5 {
		_, err := ejs.Publish(ctx, "khook.raw.webhook.t", []byte(fmt.Sprint(i)))
		require.NoError(t, err)
	}
	_, err = streams.Apply(ctx, hjs, topo)
	require.NoError(t, err)
	hubRaw, err := hjs.Stream(ctx, topo.Raw.Name)
	require.NoError(t, err)
	for range 3 {
		_, err := hjs.Publish(ctx, "khook.raw.webhook.local", []byte(`{}`))
		require.NoError(t, err)
	}
	require.NoError(t, hubRaw.Purge(ctx))

	topo.Edges = []string{"eu-1"}
	_, err = streams.Apply(ctx, hjs, topo)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := hubRaw.Info(ctx)
		return err == nil && info.State.Msgs == 5
	}, time.Minute, 20*time.Millisecond, "the hub stores the five events the edge buffered")
}
