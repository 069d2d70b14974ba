package webhook

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/khook/khook/producers"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/streamstest"
)

type fixture struct {
	base   string // scheme://host:port
	url    string // the top-level endpoint
	js     jetstream.JetStream
	w      *Webhook
	pub    *producers.Publisher
	logs   *observer.ObservedLogs
	client *http.Client
}

// start runs the webhook plugin on a random port against a real JetStream server.
func start(t *testing.T, cfg Config) *fixture {
	t.Helper()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	_, err := streams.Apply(context.Background(), js, streams.Default())
	require.NoError(t, err)
	return startWith(t, cfg, js)
}

func startWith(t *testing.T, cfg Config, js jetstream.JetStream) *fixture {
	t.Helper()
	cfg.Address, cfg.Port = "127.0.0.1", 0
	core, logs := observer.New(zap.DebugLevel)
	w, err := New(cfg, zap.New(core), prometheus.NewRegistry())
	require.NoError(t, err)
	addr := make(chan net.Addr, 1)
	w.OnListen = func(a net.Addr) { addr <- a }
	pub := producers.NewPublisher(js, streams.Default().Subjects(), producers.NewMetrics(prometheus.NewRegistry()))
	go func() { _ = pub.Run(t.Context()) }()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, pub.Emitter(Name)) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	scheme := "http"
	client := &http.Client{Timeout: 10 * time.Second}
	if cfg.EnableTLS {
		scheme = "https"
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // test certificate
	}
	base := scheme + "://" + (<-addr).String()
	return &fixture{base: base, url: base + cfg.Path, js: js, w: w, pub: pub, logs: logs, client: client}
}

type response struct {
	code   int
	header http.Header
	body   map[string]any
}

func (f *fixture) post(t *testing.T, url, contentType, body string, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	require.NoError(t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := f.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return response{code: resp.StatusCode, header: resp.Header, body: out}
}

func (f *fixture) stored(t *testing.T) uint64 {
	t.Helper()
	s, err := f.js.Stream(context.Background(), "KHOOK_RAW")
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	return info.State.Msgs
}

func (f *fixture) last(t *testing.T, subject string) (*cloudevent.Event, *jetstream.RawStreamMsg) {
	t.Helper()
	s, err := f.js.Stream(context.Background(), "KHOOK_RAW")
	require.NoError(t, err)
	msg, err := s.GetLastMsgForSubject(context.Background(), subject)
	require.NoError(t, err)
	ce, err := cloudevent.Decode(msg.Data)
	if err == nil {
		ce.Extensions = cloudevent.DecodeExtensions(msg.Data)
	}
	require.NoError(t, err)
	return ce, msg
}

func TestAcceptedEventIsStoredAsCloudEvent(t *testing.T) {
	f := start(t, DefaultConfig())
	body := `{"type":"deploy-failed","namespace":"shop","resourceName":"cart","message":"rollout stuck"}`
	r := f.post(t, f.url, "application/json", body, "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	require.Equal(t, http.StatusAccepted, r.code)
	require.Equal(t, false, r.body["duplicate"])
	id := r.body["id"].(string)

	// The 202 came after the ack, so the event is in the stream now, not eventually.
	ce, msg := f.last(t, "khook.raw.webhook.deploy-failed")
	require.Equal(t, id, msg.Header.Get(jetstream.MsgIDHeader))
	require.Equal(t, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", msg.Header.Get("traceparent"))
	require.Equal(t, id, ce.ID)
	require.Equal(t, "webhook", ce.Source)
	require.JSONEq(t, body, string(ce.Data))
}

func TestIDsAreDeterministic(t *testing.T) {
	f := start(t, DefaultConfig())
	body := `{"type":"deploy-failed","resourceName":"cart"}`
	first := f.post(t, f.url, "application/json", body)
	again := f.post(t, f.url, "application/json", body)
	require.Equal(t, http.StatusAccepted, again.code)
	require.Equal(t, first.body["id"], again.body["id"], "same body, same id")
	require.Equal(t, true, again.body["duplicate"], "JetStream's duplicate window recognised the repeat")

	keyed := f.post(t, f.url, "application/json", body, "Idempotency-Key", "deploy-42")
	require.Equal(t, cloudevent.Key("webhook", "endpoint:/webhook", "deploy-42"), keyed.body["id"],
		"an Idempotency-Key is scoped by its endpoint")
	keyedAgain := f.post(t, f.url, "application/json", `{"type":"deploy-failed","resourceName":"other"}`, "Idempotency-Key", "deploy-42")
	require.Equal(t, true, keyedAgain.body["duplicate"], "the idempotency key wins over the body")
	require.Equal(t, uint64(2), f.stored(t))
}

func TestCloudEventsModes(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Endpoints = []Endpoint{{Path: "/batch", Batch: true}}
	f := start(t, cfg)

	// Structured mode: id, type, subject and time come from the envelope.
	r := f.post(t, f.url, "application/cloudevents+json",
		`{"specversion":"1.0","id":"ce-1","source":"ci/main","type":"build-failed","subject":"ci/Pipeline/main","time":"2026-11-27T10:00:00Z","data":{"step":"test"}}`)
	require.Equal(t, http.StatusAccepted, r.code, r.body)
	require.Equal(t, cloudevent.Key("webhook", "ci/main", "ce-1"), r.body["id"], "a CloudEvents id is scoped by its source")
	ce, _ := f.last(t, "khook.raw.webhook.build-failed")
	require.Equal(t, map[string]string{"senderid": "ce-1", "sendersource": "ci/main"}, ce.Extensions)
	require.Equal(t, "ci/Pipeline/main", ce.Subject)
	require.Equal(t, "2026-11-27T10:00:00Z", ce.Time.Format(time.RFC3339))
	require.JSONEq(t, `{"step":"test"}`, string(ce.Data))

	// Binary mode: attributes in headers, data in the body.
	r = f.post(t, f.url, "application/json", `{"step":"lint"}`,
		"ce-specversion", "1.0", "ce-id", "ce-2", "ce-source", "ci", "ce-type", "lint-failed", "ce-subject", "ci/Pipeline/pr-7")
	require.Equal(t, http.StatusAccepted, r.code, r.body)
	require.Equal(t, cloudevent.Key("webhook", "ci", "ce-2"), r.body["id"])
	ce, _ = f.last(t, "khook.raw.webhook.lint-failed")
	require.Equal(t, "ci/Pipeline/pr-7", ce.Subject)

	// The Idempotency-Key wins over the CloudEvents id.
	r = f.post(t, f.url, "application/json", `{}`, "Idempotency-Key", "k-1",
		"ce-specversion", "1.0", "ce-id", "ce-3", "ce-source", "ci", "ce-type", "lint-failed")
	require.Equal(t, cloudevent.Key("webhook", "endpoint:/webhook", "k-1"), r.body["id"])

	// Batches: a JSON array and a CloudEvents batch, each answered with every id.
	r = f.post(t, f.base+"/batch", "application/json", `[{"type":"a","n":1},{"type":"b","n":2}]`)
	require.Equal(t, http.StatusAccepted, r.code, r.body)
	require.Len(t, r.body["events"], 2)
	r = f.post(t, f.base+"/batch", "application/cloudevents-batch+json",
		`[{"specversion":"1.0","id":"b-1","source":"s","type":"a"},{"specversion":"1.0","id":"b-2","source":"s","type":"a"}]`)
	require.Equal(t, http.StatusAccepted, r.code, r.body)
	ids := []string{}
	for _, e := range r.body["events"].([]any) {
		ids = append(ids, e.(map[string]any)["id"].(string))
	}
	require.Equal(t, []string{cloudevent.Key("webhook", "s", "b-1"), cloudevent.Key("webhook", "s", "b-2")}, ids)
	require.Equal(t, uint64(7), f.stored(t))
}

func TestEndpointsWithFixedSourceAndType(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Endpoints = []Endpoint{{Path: "/github", Source: "github", EventType: "workflow-failed"}}
	f := start(t, cfg)
	r := f.post(t, f.base+"/github", "application/json", `{"type":"ignored-because-fixed","workflow":"release"}`)
	require.Equal(t, http.StatusAccepted, r.code, r.body)
	ce, _ := f.last(t, "khook.raw.github.workflow-failed")
	require.Equal(t, "github", ce.Source)
	require.Equal(t, "workflow-failed", ce.Type)
}

func TestRejectionsStoreNothing(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxBodyBytes = 64
	cfg.MaxBatchSize = 2
	cfg.Endpoints = []Endpoint{{Path: "/batch", Batch: true}}
	f := start(t, cfg)
	tests := []struct {
		name, path, contentType, body string
		headers                       []string
		code                          int
		reason                        string
	}{
		{"not json", "", "application/json", `nope`, nil, 400, "JSON object"},
		{"array on a single-event endpoint", "", "application/json", `[{"type":"a"}]`, nil, 400, "batches are not enabled"},
		{"broken json", "", "application/json", `{"type":`, nil, 400, "not valid JSON"},
		{"no type", "", "application/json", `{"namespace":"shop"}`, nil, 400, "no event type"},
		{"type not a string", "", "application/json", `{"type":7}`, nil, 400, `"type" must be a string`},
		{"type not a token", "", "application/json", `{"type":"Deploy Failed"}`, nil, 400, "[a-z0-9-_]"},
		{"dotted CloudEvents type", "", "application/json", `{}`, []string{"ce-specversion", "1.0", "ce-id", "1", "ce-source", "s", "ce-type", "com.github.push"}, 400, "set eventType on the endpoint"},
		{"binary without id", "", "application/json", `{}`, []string{"ce-specversion", "1.0", "ce-source", "s", "ce-type", "t"}, 400, "ce-id"},
		{"structured without specversion", "", "application/cloudevents+json", `{"id":"1","source":"s","type":"t"}`, nil, 400, "specversion"},
		{"too large", "", "application/json", `{"type":"a","pad":"` + strings.Repeat("x", 100) + `"}`, nil, 413, "larger than 64 bytes"},
		{"batch too large", "/batch", "application/json", `[{"type":"a"},{"type":"a"},{"type":"a"}]`, nil, 413, "maxBatchSize 2"},
		{"wrong content type", "", "text/plain", `{"type":"a"}`, nil, 415, "text/plain"},
		{"binary data not json", "", "text/plain", `hi`, []string{"ce-specversion", "1.0", "ce-id", "1", "ce-source", "s", "ce-type", "t"}, 415, "must be JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := f.url
			if tt.path != "" {
				url = f.base + tt.path
			}
			r := f.post(t, url, tt.contentType, tt.body, tt.headers...)
			require.Equal(t, tt.code, r.code)
			require.Contains(t, r.body["error"], tt.reason)
		})
	}
	require.Equal(t, uint64(0), f.stored(t))
	require.Equal(t, 9.0, testutil.ToFloat64(f.w.metrics.requests.WithLabelValues("/webhook", "400")))
}

func TestMethodNotAllowedAndHealth(t *testing.T) {
	f := start(t, DefaultConfig())
	resp, err := http.Get(f.url)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	require.Equal(t, "POST", resp.Header.Get("Allow"))
	resp, err = http.Get(f.base + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

func TestBearerToken(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("s3cret-one\n"), 0o600))
	cfg := DefaultConfig()
	cfg.TokenFile = tokenFile
	cfg.Endpoints = []Endpoint{{Path: "/static", Token: "st4tic-token"}}
	f := start(t, cfg)
	body := `{"type":"deploy-failed"}`

	for name, headers := range map[string][]string{
		"missing":    nil,
		"wrong":      {"Authorization", "Bearer nope"},
		"not bearer": {"Authorization", "Basic czNjcmV0LW9uZQ=="},
	} {
		r := f.post(t, f.url, "application/json", body, headers...)
		require.Equal(t, http.StatusUnauthorized, r.code, name)
		require.Equal(t, "missing or invalid credentials", r.body["error"])
	}
	require.Equal(t, http.StatusAccepted, f.post(t, f.url, "application/json", body, "Authorization", "Bearer s3cret-one").code)
	require.Equal(t, http.StatusAccepted, f.post(t, f.base+"/static", "application/json", `{"type":"x"}`, "Authorization", "Bearer st4tic-token").code)

	// Rotation: rewrite the file; the old token stops working, the new one works, no restart.
	require.NoError(t, os.WriteFile(tokenFile, []byte("s3cret-two-longer"), 0o600))
	require.Equal(t, http.StatusUnauthorized, f.post(t, f.url, "application/json", `{"type":"y"}`, "Authorization", "Bearer s3cret-one").code)
	require.Equal(t, http.StatusAccepted, f.post(t, f.url, "application/json", `{"type":"y"}`, "Authorization", "Bearer s3cret-two-longer").code)

	require.Equal(t, uint64(3), f.stored(t), "only authenticated requests were stored")
	requireNoSecretLogged(t, f.logs, "s3cret-one", "s3cret-two-longer", "st4tic-token")
}

func TestHMACSignatures(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HMACSecret = "hmac-k3y"
	f := start(t, cfg)
	body := `{"type":"push","ref":"main"}`
	mac := hmac.New(sha256.New, []byte("hmac-k3y"))
	mac.Write([]byte(body))
	good := "sha256=" + hex.EncodeToString(mac.Sum(nil))

	require.Equal(t, http.StatusAccepted, f.post(t, f.url, "application/json", body, "X-Hub-Signature-256", good).code)
	require.Equal(t, http.StatusAccepted, f.post(t, f.url, "application/json", body, "X-Hub-Signature-256", strings.TrimPrefix(good, "sha256=")).code,
		"plain hex works too")
	require.Equal(t, http.StatusUnauthorized, f.post(t, f.url, "application/json", body).code, "missing")
	require.Equal(t, http.StatusUnauthorized, f.post(t, f.url, "application/json", body, "X-Hub-Signature-256", "sha256=00ff").code, "wrong")
	require.Equal(t, http.StatusUnauthorized, f.post(t, f.url, "application/json", `{"type":"push","ref":"evil"}`, "X-Hub-Signature-256", good).code,
		"signature of another body")
	require.Equal(t, uint64(1), f.stored(t), "the two accepted requests were one event")
	requireNoSecretLogged(t, f.logs, "hmac-k3y")
}

// A secret file emptied while khook runs (a Secret rotated to nothing) leaves no key:
// every signature is refused, above all one made with the empty key, until it is set again.
func TestHMACSecretEmptiedAtRunTimeRefusesAll(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "hmac")
	require.NoError(t, os.WriteFile(secretFile, []byte("hmac-k3y"), 0o600))
	cfg := DefaultConfig()
	cfg.HMACSecretFile = secretFile
	f := start(t, cfg)
	sign := func(key, body string) string {
		mac := hmac.New(sha256.New, []byte(key))
		mac.Write([]byte(body))
		return "sha256=" + hex.EncodeToString(mac.Sum(nil))
	}
	require.Equal(t, http.StatusAccepted, f.post(t, f.url, "application/json", `{"type":"a"}`, "X-Hub-Signature-256", sign("hmac-k3y", `{"type":"a"}`)).code)
	require.NoError(t, os.WriteFile(secretFile, nil, 0o600))
	require.Equal(t, http.StatusUnauthorized, f.post(t, f.url, "application/json", `{"type":"b"}`, "X-Hub-Signature-256", sign("", `{"type":"b"}`)).code,
		"a signature with the empty key")
	require.Equal(t, http.StatusUnauthorized, f.post(t, f.url, "application/json", `{"type":"c"}`, "X-Hub-Signature-256", sign("hmac-k3y", `{"type":"c"}`)).code)
	require.NoError(t, os.WriteFile(secretFile, []byte("n3w-k3y"), 0o600))
	require.Equal(t, http.StatusAccepted, f.post(t, f.url, "application/json", `{"type":"d"}`, "X-Hub-Signature-256", sign("n3w-k3y", `{"type":"d"}`)).code)
	require.Equal(t, uint64(2), f.stored(t))
}

func requireNoSecretLogged(t *testing.T, logs *observer.ObservedLogs, secrets ...string) {
	t.Helper()
	require.NotZero(t, logs.Len(), "the refusals were logged")
	for _, e := range logs.All() {
		line := e.Message
		for _, f := range e.Context {
			line += fmt.Sprint(" ", f.Key, "=", f.String, f.Interface)
		}
		for _, s := range secrets {
			require.NotContains(t, line, s)
		}
	}
}

func TestRateLimit(t *testing.T) {
	cfg := DefaultConfig()
	cfg.RateLimitRPS = 2
	f := start(t, cfg)
	codes := map[int]int{}
	var retryAfter string
	for i := range 5 {
		r := f.post(t, f.url, "application/json", fmt.Sprintf(`{"type":"a","n":%d}`, i))
		codes[r.code]++
		if r.code == http.StatusTooManyRequests {
			retryAfter = r.header.Get("Retry-After")
		}
	}
	require.Equal(t, 2, codes[http.StatusAccepted], "the bucket holds one second's worth")
	require.Equal(t, 3, codes[http.StatusTooManyRequests])
	require.Equal(t, "1", retryAfter)
	require.Equal(t, uint64(2), f.stored(t))
}

// TestMaxConcurrentRequests holds one request open (its body half sent) and checks that the
// next one is turned away with 503 and Retry-After, while the held one is served normally.
func TestMaxConcurrentRequests(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxConcurrentRequests = 1
	f := start(t, cfg)
	conn, err := net.Dial("tcp", strings.TrimPrefix(f.base, "http://"))
	require.NoError(t, err)
	defer conn.Close()
	_, err = fmt.Fprintf(conn, "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\":")
	require.NoError(t, err)
	// The held request takes the only slot once the server has read its headers. Probing
	// before that could take the slot from it, so the probe waits for the in-flight gauge.
	require.Eventually(t, func() bool { return testutil.ToFloat64(f.w.metrics.inflight) == 1 },
		10*time.Second, 5*time.Millisecond, "the held request never took the slot")
	r := f.post(t, f.url, "application/json", `{"type":"b"}`)
	require.Equal(t, http.StatusServiceUnavailable, r.code)
	require.Equal(t, "1", r.header.Get("Retry-After"))
	require.Contains(t, r.body["error"], "too many concurrent requests")

	// Finish the held request: it is served normally, and gives its slot back.
	_, err = fmt.Fprintf(conn, "%s", `"a"}`+strings.Repeat(" ", 100-12))
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	require.Equal(t, uint64(1), f.stored(t), "the refused request stored nothing")
	require.Zero(t, testutil.ToFloat64(f.w.metrics.inflight))
	require.Equal(t, http.StatusAccepted, f.post(t, f.url, "application/json", `{"type":"c"}`).code)
}

func TestConfigValidation(t *testing.T) {
	cfg := Config{Port: 70000, Endpoint: Endpoint{Path: "webhook", Token: "a", TokenFile: "b"},
		Endpoints: []Endpoint{{Path: "/x", Source: "Git Hub", MaxBodyBytes: 1, MaxBatchSize: 1}}, EnableTLS: true}
	_, err := New(cfg, zap.NewNop(), nil)
	require.Error(t, err)
	for _, want := range []string{"port", "path", "timeout", "maxBodyBytes", "at most one of token and tokenFile",
		"endpoints[0].source", "enableTLS: certFile and keyFile", "maxConcurrentRequests"} {
		require.Contains(t, err.Error(), want)
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func itoa(i int) string { return fmt.Sprint(i) }

// seqOf finds the stream sequence of the raw event with id, by reading the stream in order.
func seqOf(t *testing.T, js jetstream.JetStream, id string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), "KHOOK_RAW")
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(context.Background(), seq)
		if err == nil && m.Header.Get(jetstream.MsgIDHeader) == id {
			return seq
		}
	}
	t.Fatalf("event %s not in the stream", id)
	return 0
}

// Ids are unique only where they were made: a CloudEvents id per sender source, an
// Idempotency-Key per endpoint. Equal ids from different places are different events, and
// each is stored; the same id from the same place is still a duplicate.
func TestIDsFromDifferentPlacesDoNotCollide(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Endpoints = []Endpoint{{Path: "/a"}, {Path: "/b"}}
	f := start(t, cfg)
	ce := func(source, data string) string {
		return `{"specversion":"1.0","id":"1","source":"` + source + `","type":"deploy-failed","data":` + data + `}`
	}
	a := f.post(t, f.base+"/a", "application/cloudevents+json", ce("ci-a", `{"n":1}`))
	b := f.post(t, f.base+"/a", "application/cloudevents+json", ce("ci-b", `{"n":2}`))
	require.Equal(t, http.StatusAccepted, b.code, b.body)
	require.Equal(t, false, b.body["duplicate"], "id 1 from ci-b is not id 1 from ci-a")
	require.NotEqual(t, a.body["id"], b.body["id"])
	again := f.post(t, f.base+"/a", "application/cloudevents+json", ce("ci-b", `{"n":2}`))
	require.Equal(t, true, again.body["duplicate"], "the same source's repeat is a duplicate")

	k1 := f.post(t, f.base+"/a", "application/json", `{"type":"deploy-failed","n":3}`, "Idempotency-Key", "k")
	k2 := f.post(t, f.base+"/b", "application/json", `{"type":"deploy-failed","n":4}`, "Idempotency-Key", "k")
	require.Equal(t, false, k2.body["duplicate"], "an Idempotency-Key is scoped by its endpoint")
	require.NotEqual(t, k1.body["id"], k2.body["id"])
	require.Equal(t, uint64(4), f.stored(t))
}

// A process that may publish only on its own source's subjects cannot suppress another
// source's event by publishing its predictable id first: the producer sees that the stored
// "original" sits on another source's subject and stores its event under a fresh key.
func TestForgedIDFromAnotherSourceDoesNotSuppress(t *testing.T) {
	f := start(t, DefaultConfig())
	key := cloudevent.Key("webhook", "endpoint:/webhook", "deploy-7")
	forged := nats.NewMsg("khook.raw.evil.deploy-failed")
	forged.Data = []byte(`{"specversion":"1.0","id":"x","source":"evil","type":"deploy-failed"}`)
	forged.Header.Set(jetstream.MsgIDHeader, key)
	_, err := f.js.PublishMsg(context.Background(), forged)
	require.NoError(t, err)

	r := f.post(t, f.url, "application/json", `{"type":"deploy-failed","resourceName":"cart"}`, "Idempotency-Key", "deploy-7")
	require.Equal(t, http.StatusAccepted, r.code, r.body)
	require.Equal(t, false, r.body["duplicate"], "the real event is stored")
	id := r.body["id"].(string)
	require.True(t, strings.HasPrefix(id, key+"/collision-"), id)
	ce, msg := f.last(t, "khook.raw.webhook.deploy-failed")
	require.Equal(t, id, ce.ID)
	require.Equal(t, id, msg.Header.Get(jetstream.MsgIDHeader))
	require.JSONEq(t, `{"type":"deploy-failed","resourceName":"cart"}`, string(ce.Data))
	require.Equal(t, uint64(2), f.stored(t))
}

// Slow uploads without a valid token are refused from their headers, before any body is
// read, so they never hold the request slots that authenticated senders need.
func TestUnauthenticatedUploadsDoNotTakeSlots(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxConcurrentRequests = 2
	cfg.Token = "s3cret"
	f := start(t, cfg)
	for range 4 {
		conn, err := net.Dial("tcp", strings.TrimPrefix(f.base, "http://"))
		require.NoError(t, err)
		defer conn.Close()
		// Headers with a wrong token and a body that never finishes.
		_, err = fmt.Fprintf(conn, "POST /webhook HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"type\":")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err, "answered without waiting for the body")
		resp.Body.Close()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	}
	r := f.post(t, f.url, "application/json", `{"type":"deploy-failed"}`, "Authorization", "Bearer s3cret")
	require.Equal(t, http.StatusAccepted, r.code, r.body)
}

// An event larger than the NATS server takes is answered 413 with the limit: it is the
// sender's to fix, not a store outage to retry (before: 503 with Retry-After, forever, and
// the producer marked unready).
func TestEventOverMaxPayloadIs413(t *testing.T) {
	f := start(t, DefaultConfig())
	// Under the 1 MiB body limit, over what fits NATS's 1 MiB max_payload with the envelope.
	body := `{"type":"deploy-failed","pad":"` + strings.Repeat("x", (1<<20)-100) + `"}`
	r := f.post(t, f.url, "application/json", body)
	require.Equal(t, http.StatusRequestEntityTooLarge, r.code, r.body)
	require.Contains(t, r.body["error"], "max_payload")
	require.Empty(t, r.header.Get("Retry-After"))
	require.Zero(t, f.stored(t))
	ok := f.post(t, f.url, "application/json", `{"type":"deploy-failed","pad":"`+strings.Repeat("x", 1<<19)+`"}`)
	require.Equal(t, http.StatusAccepted, ok.code, "an event that fits is stored")
}
