package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/khook/khook/producers"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/streamstest"
)

type fixture struct {
	url string
	js  jetstream.JetStream
}

// start runs the webhook plugin on a random port against a real JetStream server.
func start(t *testing.T, cfg Config) fixture {
	t.Helper()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	_, err := streams.Apply(context.Background(), js, topo)
	require.NoError(t, err)
	return startWith(t, cfg, js, topo)
}

func startWith(t *testing.T, cfg Config, js jetstream.JetStream, topo streams.Config) fixture {
	t.Helper()
	cfg.Address, cfg.Port = "127.0.0.1", 0
	w, err := New(cfg, zaptest.NewLogger(t))
	require.NoError(t, err)
	addr := make(chan net.Addr, 1)
	w.OnListen = func(a net.Addr) { addr <- a }
	pub := producers.NewPublisher(js, topo.Subjects(), producers.NewMetrics(prometheus.NewRegistry()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, pub.Emitter(Name)) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return fixture{url: "http://" + (<-addr).String() + cfg.Path, js: js}
}

func post(t *testing.T, url, contentType, body string, headers ...string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	require.NoError(t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return resp.StatusCode, out
}

func rawMessages(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), "KHOOK_RAW")
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	return info.State.Msgs
}

func TestAcceptedEventIsStoredAsCloudEvent(t *testing.T) {
	f := start(t, DefaultConfig())
	body := `{"type":"deploy-failed","namespace":"shop","resourceName":"cart","message":"rollout stuck"}`
	code, out := post(t, f.url, "application/json", body, "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	require.Equal(t, http.StatusAccepted, code)
	require.Equal(t, false, out["duplicate"])
	id := out["id"].(string)
	require.NotEmpty(t, id)

	// The 202 came after the ack, so the event is in the stream now, not eventually.
	s, err := f.js.Stream(context.Background(), "KHOOK_RAW")
	require.NoError(t, err)
	msg, err := s.GetLastMsgForSubject(context.Background(), "khook.raw.webhook.deploy-failed")
	require.NoError(t, err)
	require.Equal(t, id, msg.Header.Get(jetstream.MsgIDHeader))
	require.Equal(t, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", msg.Header.Get("traceparent"))
	ce, err := cloudevent.Decode(msg.Data)
	require.NoError(t, err)
	require.Equal(t, id, ce.ID)
	require.Equal(t, "webhook", ce.Source)
	require.Equal(t, "deploy-failed", ce.Type)
	require.JSONEq(t, body, string(ce.Data))
}

func TestIDsAreDeterministic(t *testing.T) {
	f := start(t, DefaultConfig())
	body := `{"type":"deploy-failed","resourceName":"cart"}`

	_, first := post(t, f.url, "application/json", body)
	code, again := post(t, f.url, "application/json", body)
	require.Equal(t, http.StatusAccepted, code)
	require.Equal(t, first["id"], again["id"], "same body, same id")
	require.Equal(t, true, again["duplicate"], "JetStream's duplicate window recognised the repeat")

	_, keyed := post(t, f.url, "application/json", body, "Idempotency-Key", "deploy-42")
	require.Equal(t, "deploy-42", keyed["id"])
	_, keyedAgain := post(t, f.url, "application/json", `{"type":"deploy-failed","resourceName":"other"}`, "Idempotency-Key", "deploy-42")
	require.Equal(t, true, keyedAgain["duplicate"], "the idempotency key wins over the body")

	require.Equal(t, uint64(2), rawMessages(t, f.js))
}

func TestTypeFromQuery(t *testing.T) {
	f := start(t, DefaultConfig())
	code, _ := post(t, f.url+"?type=test-failed", "application/json", `{"name":"unit"}`)
	require.Equal(t, http.StatusAccepted, code)
	s, err := f.js.Stream(context.Background(), "KHOOK_RAW")
	require.NoError(t, err)
	_, err = s.GetLastMsgForSubject(context.Background(), "khook.raw.webhook.test-failed")
	require.NoError(t, err)
}

func TestRejectionsStoreNothing(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxBodyBytes = 64
	f := start(t, cfg)
	tests := []struct {
		name, contentType, body string
		code                    int
		reason                  string
	}{
		{"not json", "application/json", `nope`, 400, "JSON object"},
		{"array", "application/json", `[{"type":"a"}]`, 400, "JSON object"},
		{"broken json", "application/json", `{"type":`, 400, "not valid JSON"},
		{"no type", "application/json", `{"namespace":"shop"}`, 400, "no event type"},
		{"type not a string", "application/json", `{"type":7}`, 400, `"type" must be a string`},
		{"type not a token", "application/json", `{"type":"Deploy Failed"}`, 400, "[a-z0-9-_]"},
		{"too large", "application/json", `{"type":"a","pad":"` + strings.Repeat("x", 100) + `"}`, 413, "larger than 64 bytes"},
		{"wrong content type", "text/plain", `{"type":"a"}`, 415, "text/plain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := post(t, f.url, tt.contentType, tt.body)
			require.Equal(t, tt.code, code)
			require.Contains(t, out["error"], tt.reason)
		})
	}
	require.Equal(t, uint64(0), rawMessages(t, f.js))
}

func TestMethodNotAllowedAndHealth(t *testing.T) {
	f := start(t, DefaultConfig())
	resp, err := http.Get(f.url)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	require.Equal(t, "POST", resp.Header.Get("Allow"))

	resp, err = http.Get(strings.TrimSuffix(f.url, "/webhook") + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// TestUnstoredEventIsNever2xx removes the raw stream so JetStream cannot take the write: the
// webhook must answer 503 with Retry-After, never 202.
func TestUnstoredEventIsNever2xx(t *testing.T) {
	f := start(t, DefaultConfig())
	require.NoError(t, f.js.DeleteStream(context.Background(), "KHOOK_RAW"))
	req, err := http.NewRequest(http.MethodPost, f.url, bytes.NewBufferString(`{"type":"deploy-failed"}`))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
}

func TestConfigValidation(t *testing.T) {
	_, err := New(Config{Port: 70000, Path: "webhook"}, zaptest.NewLogger(t))
	require.Error(t, err)
	for _, want := range []string{"port", "path", "timeout", "maxBodyBytes"} {
		require.Contains(t, err.Error(), want)
	}
}
