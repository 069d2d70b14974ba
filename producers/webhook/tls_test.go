package webhook

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/streamstest"
)

// writeCert writes a fresh self-signed certificate for 127.0.0.1 and returns its serial.
func writeCert(t *testing.T, certFile, keyFile string, serial int64) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "khook-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  nil,
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
}

func serialSeen(t *testing.T, f *fixture) int64 {
	t.Helper()
	// A new connection each time, so each sees the certificate of its own handshake.
	f.client.Transport.(*http.Transport).CloseIdleConnections()
	req, err := http.NewRequest(http.MethodPost, f.url, strings.NewReader(`{"type":"tls-check"}`))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	return resp.TLS.PeerCertificates[0].SerialNumber.Int64()
}

func TestTLSWithCertificateReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeCert(t, certFile, keyFile, 1)
	cfg := DefaultConfig()
	cfg.EnableTLS, cfg.CertFile, cfg.KeyFile = true, certFile, keyFile
	f := start(t, cfg)
	require.True(t, strings.HasPrefix(f.url, "https://"))
	require.Equal(t, int64(1), serialSeen(t, f))

	// Plain HTTP is not served on the TLS port.
	resp, err := http.Post(strings.Replace(f.url, "https://", "http://", 1), "application/json", strings.NewReader(`{"type":"a"}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)

	// A renewed certificate is served from the next handshake on, without a restart. A real
	// renewal is seconds apart at least; the modification time is set so here too.
	writeCert(t, certFile, keyFile, 2)
	later := time.Now().Add(time.Minute)
	require.NoError(t, os.Chtimes(certFile, later, later))
	require.NoError(t, os.Chtimes(keyFile, later, later))
	require.Equal(t, int64(2), serialSeen(t, f))
}

func TestTLSConfigErrors(t *testing.T) {
	cfg := DefaultConfig()
	cfg.EnableTLS, cfg.CertFile, cfg.KeyFile = true, "/nonexistent/tls.crt", "/nonexistent/tls.key"
	_, err := New(cfg, nil, nil)
	require.ErrorContains(t, err, "webhook TLS")
}

// TestJetStreamStoppedMidTest stops the JetStream server under a running webhook: requests
// get 503 (never 202) and the producer turns unready; once the server is back, requests
// succeed again and every event that got 202 is in the stream.
func TestJetStreamStoppedMidTest(t *testing.T) {
	dir, port := t.TempDir(), freeTCPPort(t)
	ns := streamstest.RunServerAt(t, dir, port)
	_, js := streamstest.Connect(t, ns)
	_, err := streams.Apply(context.Background(), js, streams.Default())
	require.NoError(t, err)
	cfg := DefaultConfig()
	cfg.Timeout = 500 * time.Millisecond
	f := startWith(t, cfg, js)

	accepted := map[string]bool{}
	send := func(i int) int {
		r := f.post(t, f.url, "application/json", `{"type":"deploy-failed","n":`+itoa(i)+`}`)
		if r.code == http.StatusAccepted {
			accepted[r.body["id"].(string)] = true
		}
		return r.code
	}
	for i := range 5 {
		require.Equal(t, http.StatusAccepted, send(i))
	}
	require.NoError(t, f.pub.Ready(context.Background()))

	ns.Shutdown()
	ns.WaitForShutdown()
	for i := 5; i < 8; i++ {
		require.Equal(t, http.StatusServiceUnavailable, send(i))
	}
	require.Error(t, f.pub.Ready(context.Background()), "the producer is unready while events cannot be stored")

	streamstest.RunServerAt(t, dir, port)
	require.Eventually(t, func() bool { return send(100) == http.StatusAccepted }, 30*time.Second, 50*time.Millisecond)
	require.NoError(t, f.pub.Ready(context.Background()))
	for id := range accepted {
		s, err := js.Stream(context.Background(), "KHOOK_RAW")
		require.NoError(t, err)
		_, err = s.GetMsg(context.Background(), seqOf(t, js, id))
		require.NoError(t, err, "event %s got 202 and must be stored", id)
	}
}
