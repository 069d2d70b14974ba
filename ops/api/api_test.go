package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/hook/hooktest"
	"github.com/khook/khook/internal/secret"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/ops/api"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/streamstest"
)

const token = "api-token-for-tests"

var hooksYAML = hooktest.Fixture("hooks.yaml")

type fixture struct {
	js      jetstream.JetStream
	topo    streams.Config
	srv     *httptest.Server
	publish func(id, typ, ns, severity string)
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	_, err := streams.Apply(context.Background(), js, topo)
	require.NoError(t, err)
	idx := hooktest.Index(t, hooksYAML)
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(token+"\n"), 0o600))
	s := &api.Server{JS: js, Topo: topo, Token: secret.New("", tokenFile), Hooks: func() *hook.Index { return idx },
		Logger: zaptest.NewLogger(t), Heartbeat: 50 * time.Millisecond,
		Status: func(ctx context.Context, _ time.Duration) (*ops.Status, error) {
			return ops.GetStatus(ctx, js, topo, nil, nil)
		}}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	f := &fixture{js: js, topo: topo, srv: srv}
	f.publish = func(id, typ, ns, severity string) {
		ev := mapping.Event{ID: id, Source: "kubernetes", Type: typ, Namespace: ns, Severity: severity, Resource: mapping.Resource{Kind: "Pod", Name: "pod-" + id}}
		data, _ := json.Marshal(ev)
		body, _ := cloudevent.Encode(&cloudevent.Event{ID: id, Source: "kubernetes", Type: typ, DataContentType: "application/json", Data: data})
		_, err := js.Publish(context.Background(), "khook.events."+typ, body)
		require.NoError(t, err)
	}
	return f
}

func (f *fixture) get(t *testing.T, path, auth string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.srv.URL+path, nil)
	require.NoError(t, err)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

type page struct {
	Events []ops.EventRecord `json:"events"`
	Next   string            `json:"next"`
}

func (f *fixture) page(t *testing.T, path string) page {
	t.Helper()
	code, body := f.get(t, path, "Bearer "+token)
	require.Equal(t, http.StatusOK, code, string(body))
	var p page
	require.NoError(t, json.Unmarshal(body, &p))
	return p
}

func ids(p page) []string {
	out := []string{}
	for _, e := range p.Events {
		out = append(out, e.ID)
	}
	return out
}

func TestTokenIsRequired(t *testing.T) {
	f := newFixture(t)
	for _, auth := range []string{"", "Bearer wrong", "Basic " + token, token} {
		for _, path := range []string{"/api/v1/events", "/api/v1/status", "/api/v1/events/stream", "/api/v1/hooks/shop/restarts/events"} {
			code, body := f.get(t, path, auth)
			require.Equal(t, http.StatusUnauthorized, code, "%s with %q", path, auth)
			require.JSONEq(t, `{"error":"missing or invalid bearer token"}`, string(body))
			require.NotContains(t, string(body), token)
		}
	}
	code, _ := f.get(t, "/api/v1/status", "Bearer "+token)
	require.Equal(t, http.StatusOK, code)
}

func TestEventsFiltersAndPaging(t *testing.T) {
	f := newFixture(t)
	f.publish("a1", "pod-restart", "shop", "warning")
	f.publish("a2", "pod-restart", "shop", "error")
	f.publish("a3", "oom-kill", "shop", "critical")
	middle := time.Now().UTC()
	f.publish("b1", "pod-restart", "ops", "critical")
	f.publish("b2", "pod-restart", "shop", "info")

	require.Equal(t, []string{"a1", "a2", "a3", "b1", "b2"}, ids(f.page(t, "/api/v1/events")))
	require.Equal(t, []string{"a1", "a2", "b1", "b2"}, ids(f.page(t, "/api/v1/events?type=pod-restart")))
	require.Equal(t, []string{"b1"}, ids(f.page(t, "/api/v1/events?namespace=ops")))
	require.Equal(t, []string{"a2"}, ids(f.page(t, "/api/v1/events?resource=pod-a2")))
	require.Equal(t, []string{"a2", "a3", "b1"}, ids(f.page(t, "/api/v1/events?severity=error")))
	require.Equal(t, []string{"b1", "b2"}, ids(f.page(t, "/api/v1/events?since="+middle.Format(time.RFC3339Nano))))
	require.Equal(t, []string{"a1", "a2", "a3"}, ids(f.page(t, "/api/v1/events?until="+middle.Format(time.RFC3339Nano))))
	require.Equal(t, []string{"a1", "a2", "a3", "b1", "b2"}, ids(f.page(t, "/api/v1/events?since=1h")))

	// Pages of two, following next until it is absent.
	var all []string
	path := "/api/v1/events?limit=2"
	pages := 0
	for {
		p := f.page(t, path)
		pages++
		all = append(all, ids(p)...)
		if p.Next == "" {
			break
		}
		path = "/api/v1/events?limit=2&cursor=" + p.Next
	}
	require.Equal(t, []string{"a1", "a2", "a3", "b1", "b2"}, all)
	require.Equal(t, 3, pages)

	// The hook's own rule: its namespace, its type, its severity floor.
	require.Equal(t, []string{"a2"}, ids(f.page(t, "/api/v1/hooks/shop/restarts/events")))
	code, body := f.get(t, "/api/v1/hooks/shop/nothing/events", "Bearer "+token)
	require.Equal(t, http.StatusNotFound, code, string(body))

	for query, want := range map[string]string{
		"limit=0":          "limit: want 1 to 1000",
		"severity=loud":    "severity: want one of",
		"since=yesterday":  "since: want an RFC 3339 time or a duration",
		"type=Pod.Restart": "type: want lowercase",
		"cursor=x":         "cursor:",
	} {
		code, body := f.get(t, "/api/v1/events?"+query, "Bearer "+token)
		require.Equal(t, http.StatusBadRequest, code, query)
		require.Contains(t, string(body), want, query)
	}
}

func TestEventStreamReceivesNewEvents(t *testing.T) {
	f := newFixture(t)
	f.publish("old", "pod-restart", "shop", "error")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+"/api/v1/events/stream?namespace=shop", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req) //nolint:bodyclose // closed by the defer below; read by the goroutine
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))

	events := make(chan ops.EventRecord, 16)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var rec ops.EventRecord
				if json.Unmarshal([]byte(data), &rec) == nil {
					events <- rec
				}
			}
		}
		close(events)
	}()
	// The stream starts at new events; publish until one arrives (the subscription is set up
	// asynchronously), with events of another namespace in between that must not appear.
	n := 0
	var got ops.EventRecord
	require.Eventually(t, func() bool {
		n++
		f.publish(fmt.Sprintf("ops-%d", n), "pod-restart", "ops", "error")
		f.publish(fmt.Sprintf("new-%d", n), "pod-restart", "shop", "error")
		select {
		case got = <-events:
			return true
		default:
			return false
		}
	}, 10*time.Second, 50*time.Millisecond)
	require.True(t, strings.HasPrefix(got.ID, "new-"), "got %s", got.ID)
	require.Equal(t, "shop", got.Namespace)
	require.NotZero(t, got.Seq)
}

// The OpenAPI description lists exactly the routes the server serves.
func TestOpenAPIDescribesTheRoutes(t *testing.T) {
	b, err := os.ReadFile("../../docs/api/openapi.yaml")
	require.NoError(t, err)
	var doc struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	require.NoError(t, yaml.Unmarshal(b, &doc))
	require.Equal(t, "3.0.3", doc.OpenAPI)
	var paths []string
	for p, ops := range doc.Paths {
		require.Contains(t, ops, "get", p)
		paths = append(paths, p)
	}
	require.ElementsMatch(t, []string{"/api/v1/events", "/api/v1/events/stream", "/api/v1/events/{id}",
		"/api/v1/hooks/{namespace}/{name}/events", "/api/v1/status"}, paths)

	// And each is served: a request with the token is not a 404 from the router.
	f := newFixture(t)
	f.publish("e1", "pod-restart", "shop", "warning")
	for _, p := range paths {
		if strings.HasSuffix(p, "/stream") {
			continue
		}
		code, body := f.get(t, strings.NewReplacer("{namespace}", "shop", "{name}", "restarts", "{id}", "1").Replace(p), "Bearer "+token)
		require.Equal(t, http.StatusOK, code, "%s: %s", p, body)
	}
}

// An event is described by its sequence; an id khook knows nothing of is a 404 that says
// where it looked, and an id with a slash (every source-scoped id) reaches the handler.
func TestDescribeEvent(t *testing.T) {
	f := newFixture(t)
	f.publish("e1", "pod-restart", "shop", "warning")
	code, body := f.get(t, "/api/v1/events/1", "Bearer "+token)
	require.Equal(t, http.StatusOK, code, string(body))
	var d ops.Description
	require.NoError(t, json.Unmarshal(body, &d))
	require.Equal(t, "e1", d.ID)
	require.NotNil(t, d.Event)
	require.Equal(t, uint64(1), d.Event.Seq)
	require.Equal(t, "pending", d.Dispatch, "no dispatcher has handled it")
	require.Empty(t, d.Tasks)

	code, body = f.get(t, "/api/v1/events/webhook/no-such-event", "Bearer "+token)
	require.Equal(t, http.StatusNotFound, code, string(body))
	require.Contains(t, string(body), `webhook/no-such-event`)
	require.Contains(t, string(body), "outcomes are kept for")
	code, _ = f.get(t, "/api/v1/events/99", "Bearer "+token)
	require.Equal(t, http.StatusNotFound, code)
	code, _ = f.get(t, "/api/v1/events/1", "")
	require.Equal(t, http.StatusUnauthorized, code)
}

// An id is whatever its sender chose after its source, "." and ".." segments and empty ones
// included: each is described as sent, never redirected to another event's path.
func TestDescribeIDsWithDotSegments(t *testing.T) {
	f := newFixture(t)
	ids := []string{"webhook/0a1b/first", "webhook/0a1b/../../1", "webhook/0a1b/a//b", "webhook/0a1b/./c"}
	for _, id := range ids {
		ev := mapping.Event{ID: id, Source: "webhook", Type: "pod-restart", Namespace: "shop", Severity: "warning"}
		data, _ := json.Marshal(ev)
		body, _ := cloudevent.Encode(&cloudevent.Event{ID: id, Source: "webhook", Type: "pod-restart", DataContentType: "application/json", Data: data})
		m := nats.NewMsg("khook.events.pod-restart")
		m.Data = body
		m.Header.Set(jetstream.MsgIDHeader, id)
		_, err := f.js.PublishMsg(context.Background(), m)
		require.NoError(t, err)
	}
	for _, id := range ids {
		for _, path := range []string{"/api/v1/events/" + id, "/api/v1/events/" + url.PathEscape(id)} {
			code, body := f.get(t, path, "Bearer "+token)
			require.Equal(t, http.StatusOK, code, "%s: %s", path, body)
			var d ops.Description
			require.NoError(t, json.Unmarshal(body, &d))
			require.Equal(t, id, d.ID, path)
		}
	}
	code, _ := f.get(t, "/api/v1/events/", "Bearer "+token)
	require.Equal(t, http.StatusBadRequest, code)
	code, _ = f.get(t, "/api/v1/status?window=-1h", "Bearer "+token)
	require.Equal(t, http.StatusBadRequest, code)
}
