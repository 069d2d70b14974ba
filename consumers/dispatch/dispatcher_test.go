package dispatch

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/khook/khook/consumers/dispatch/state"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/hook/hooktest"
	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/deadletter"
	"github.com/khook/khook/streams/streamstest"
)

// harness runs one dispatcher against a real JetStream server and a real A2A agent server,
// with an HTTP fault injector in front of the agent.
type harness struct {
	js     jetstream.JetStream
	topo   streams.Config
	agent  *demoagent.Server
	url    string
	faults *faults
	d      *Dispatcher
}

// faults decides, per HTTP request to the agent, whether to fail it before it reaches the
// A2A server.
type faults struct {
	requests atomic.Int64
	fail     atomic.Pointer[func(n int64) (status int, retryAfter string)]
	// byPath decides per agent: it gets the request path and that path's request count.
	byPath atomic.Pointer[func(path string, n int64) (status int, retryAfter string)]

	mu    sync.Mutex
	paths map[string]int64
}

func (f *faults) set(fn func(n int64) (int, string)) { f.fail.Store(&fn) }

func (f *faults) setByPath(fn func(path string, n int64) (int, string)) { f.byPath.Store(&fn) }

// calls returns how many requests reached path, failed or not.
func (f *faults) calls(path string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.paths[path]
}

func (f *faults) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := f.requests.Add(1)
		f.mu.Lock()
		if f.paths == nil {
			f.paths = map[string]int64{}
		}
		f.paths[r.URL.Path]++
		pn := f.paths[r.URL.Path]
		f.mu.Unlock()
		if fn := f.byPath.Load(); fn != nil {
			if status, retryAfter := (*fn)(r.URL.Path, pn); status != 0 {
				if retryAfter != "" {
					w.Header().Set("Retry-After", retryAfter)
				}
				http.Error(w, "injected", status)
				return
			}
		}
		if fn := f.fail.Load(); fn != nil {
			if status, retryAfter := (*fn)(n); status != 0 {
				if retryAfter != "" {
					w.Header().Set("Retry-After", retryAfter)
				}
				http.Error(w, "injected", status)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

var testHooks = hooktest.Fixture("hooks.yaml")

func newHarness(t *testing.T, cfg Config, protocol string) *harness {
	t.Helper()
	return newHarnessAckWait(t, cfg, protocol, 30*time.Second)
}

// newHarnessAckWait is newHarness with the dispatcher consumer's ack wait set.
func newHarnessAckWait(t *testing.T, cfg Config, protocol string, ackWait time.Duration) *harness {
	t.Helper()
	return newHarnessHooks(t, cfg, protocol, ackWait, testHooks)
}

// newHarnessHooks is newHarnessAckWait with the hooks of hooksYAML.
func newHarnessHooks(t *testing.T, cfg Config, protocol string, ackWait time.Duration, hooksYAML string) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	_, js := streamstest.Connect(t, streamstest.RunServer(t))
	topo := streams.Default()
	topo.Dispatcher.AckWait = ackWait
	_, err := streams.Apply(ctx, js, topo)
	require.NoError(t, err)

	agent := demoagent.New()
	agent.LegacyAgents = map[string]bool{"kagent/legacy-sre": true}
	agent.TaskAgents = map[string]bool{"kagent/tasks": true}
	agent.TaskDelay = 300 * time.Millisecond
	if protocol == "0.3" {
		agent.LegacyAgents["kagent/sre"] = true
	}
	f := &faults{}
	srv := httptest.NewServer(f.wrap(agent.Handler()))
	t.Cleanup(srv.Close)

	idx := hooktest.Index(t, hooksYAML)
	target := NewKagent(KagentConfig{URL: srv.URL, Protocol: protocol, UserID: "tester", Timeout: 5 * time.Second, PollInterval: 50 * time.Millisecond})
	legacy := NewKagent(KagentConfig{URL: srv.URL, Protocol: "0.3", UserID: "tester", Timeout: 5 * time.Second})
	router := NewRouter(target, Route{Agent: "kagent/legacy-sre", Target: legacy})
	st, err := state.Open(context.Background(), js, topo)
	require.NoError(t, err)
	d := New(js, topo, cfg, st, idx, router, prometheus.NewRegistry(), zaptest.NewLogger(t))
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return &harness{js: js, topo: topo, agent: agent, url: srv.URL, faults: f, d: d}
}

func testConfig() Config {
	c := DefaultConfig()
	c.Workers = 4
	c.RetryBase = 20 * time.Millisecond
	c.RetryMax = 200 * time.Millisecond
	c.MaxAttempts = 5
	c.Guard = GuardConfig{Concurrency: 4, Breaker: BreakerConfig{Failures: 100, Cooldown: time.Second}}
	return c
}

func (h *harness) publish(t *testing.T, ev mapping.Event) {
	t.Helper()
	h.publishWith(t, ev, nil)
}

// publishWith publishes ev with extra message headers.
func (h *harness) publishWith(t *testing.T, ev mapping.Event, headers map[string]string) {
	t.Helper()
	if ev.Namespace == "" {
		ev.Namespace = "shop"
	}
	if ev.Severity == "" {
		ev.Severity = "error"
	}
	data, err := json.Marshal(ev)
	require.NoError(t, err)
	body, err := cloudevent.Encode(&cloudevent.Event{ID: ev.ID, Source: "webhook", Type: ev.Type, Data: data})
	require.NoError(t, err)
	msg := nats.NewMsg("khook.events." + ev.Type)
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, ev.ID)
	for k, v := range headers {
		msg.Header.Set(k, v)
	}
	_, err = h.js.PublishMsg(context.Background(), msg)
	require.NoError(t, err)
}

// settled waits until the dispatcher has acknowledged or terminated n events and holds
// none in flight.
func (h *harness) settled(t *testing.T, n uint64) {
	t.Helper()
	cons, err := h.js.Consumer(context.Background(), h.topo.Events.Name, h.topo.Dispatcher.Durable)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.AckFloor.Stream >= n && info.NumAckPending == 0 && info.NumPending == 0
	}, 30*time.Second, 5*time.Millisecond)
}

func (h *harness) deadLetters(t *testing.T) []*jetstream.RawStreamMsg {
	t.Helper()
	s, err := h.js.Stream(context.Background(), h.topo.DLQ.Name)
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(context.Background(), seq)
		require.NoError(t, err)
		out = append(out, m)
	}
	return out
}

func (h *harness) count(result string) float64 {
	return testutil.ToFloat64(h.d.metrics.deliveries.WithLabelValues("kagent", result))
}

var protocols = []string{"1.0", "0.3"}

func TestRetryThenSuccess(t *testing.T) {
	for _, protocol := range protocols {
		t.Run("a2a "+protocol, func(t *testing.T) {
			h := newHarness(t, testConfig(), protocol)
			h.faults.set(func(n int64) (int, string) {
				if n <= 2 {
					return http.StatusServiceUnavailable, "0"
				}
				return 0, ""
			})
			h.publish(t, mapping.Event{ID: "e1", Type: "deploy-failed", Resource: mapping.Resource{Name: "cart"},
				Tags: map[string]string{"team": "payments"}})
			h.settled(t, 1)

			got := h.agent.Received()
			require.Len(t, got, 1, "exactly one successful call")
			require.Equal(t, "kagent/sre", got[0].Agent)
			require.Contains(t, got[0].Text, "Deployment cart failed (error, team payments)")
			require.Equal(t, "tester", got[0].UserID)
			require.Equal(t, 2.0, h.count("retry"))
			require.Equal(t, 1.0, h.count("success"))
			require.Empty(t, h.deadLetters(t))
		})
	}
}

func TestPermanentFailuresAreDeadLetteredAtOnce(t *testing.T) {
	for _, protocol := range protocols {
		t.Run("a2a "+protocol+" HTTP 400", func(t *testing.T) {
			h := newHarness(t, testConfig(), protocol)
			h.faults.set(func(int64) (int, string) { return http.StatusBadRequest, "" })
			h.publish(t, mapping.Event{ID: "e1", Type: "deploy-failed", Resource: mapping.Resource{Name: "cart"}})
			h.settled(t, 1)
			requirePermanent(t, h, "HTTP 400")
		})
		t.Run("a2a "+protocol+" JSON-RPC error", func(t *testing.T) {
			h := newHarness(t, testConfig(), protocol)
			h.agent.OnMessage = func(demoagent.Received) error { return fmt.Errorf("agent kagent/sre not found") }
			h.publish(t, mapping.Event{ID: "e1", Type: "deploy-failed", Resource: mapping.Resource{Name: "cart"}})
			h.settled(t, 1)
			requirePermanent(t, h, "")
		})
	}
}

func requirePermanent(t *testing.T, h *harness, errText string) {
	t.Helper()
	require.Equal(t, int64(1), h.faults.requests.Load(), "no retries")
	require.Equal(t, 0.0, h.count("retry"))
	dl := h.deadLetters(t)
	require.Len(t, dl, 1)
	require.Equal(t, "permanent", dl[0].Header.Get(deadletter.HeaderReason))
	require.Equal(t, "shop/deploys", dl[0].Header.Get(deadletter.HeaderHook))
	require.Equal(t, "khook.events.deploy-failed", dl[0].Header.Get(deadletter.HeaderOriginalSubject))
	require.Contains(t, dl[0].Header.Get(deadletter.HeaderTarget), "/api/a2a/kagent/sre/")
	require.Contains(t, dl[0].Header.Get(deadletter.HeaderError), errText)
	ce, err := cloudevent.Decode(dl[0].Data)
	require.NoError(t, err, "the dead letter keeps the original event")
	require.Equal(t, "e1", ce.ID)
}

func TestExhaustedAttemptsAreDeadLettered(t *testing.T) {
	cfg := testConfig()
	cfg.MaxAttempts = 3
	h := newHarness(t, cfg, "1.0")
	h.faults.set(func(int64) (int, string) { return http.StatusBadGateway, "" })
	h.publish(t, mapping.Event{ID: "e1", Type: "deploy-failed", Resource: mapping.Resource{Name: "cart"}})
	h.settled(t, 1)
	require.Equal(t, int64(3), h.faults.requests.Load())
	dl := h.deadLetters(t)
	require.Len(t, dl, 1)
	require.Equal(t, "max-attempts", dl[0].Header.Get(deadletter.HeaderReason))
	require.Equal(t, "3", dl[0].Header.Get(deadletter.HeaderAttempts))
	require.Equal(t, 2.0, h.count("retry"))
}

func TestRetryAfterIsHonoured(t *testing.T) {
	cfg := testConfig()
	cfg.RetryMax = 5 * time.Second // Retry-After is honoured up to retry_max
	h := newHarness(t, cfg, "1.0")
	var first, second time.Time
	var mu sync.Mutex
	h.faults.set(func(n int64) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		if n == 1 {
			first = time.Now()
			return http.StatusTooManyRequests, "1"
		}
		if second.IsZero() {
			second = time.Now()
		}
		return 0, ""
	})
	h.publish(t, mapping.Event{ID: "e1", Type: "deploy-failed", Resource: mapping.Resource{Name: "cart"}})
	h.settled(t, 1)
	mu.Lock()
	defer mu.Unlock()
	// The retry base is 20ms; the agent asked for a second and got at least that.
	require.GreaterOrEqual(t, second.Sub(first), 900*time.Millisecond)
	require.Len(t, h.agent.Received(), 1)
}

// TestBreakerDelaysInsteadOfDeadLettering takes the agent down long enough to open the
// breaker: events wait behind it rather than using up their attempts, and all of them are
// delivered when the agent returns.
func TestBreakerDelaysInsteadOfDeadLettering(t *testing.T) {
	cfg := testConfig()
	cfg.MaxAttempts = 4
	cfg.Guard = GuardConfig{Concurrency: 4, Breaker: BreakerConfig{Failures: 2, Cooldown: 100 * time.Millisecond}}
	h := newHarness(t, cfg, "1.0")
	var down atomic.Bool
	down.Store(true)
	h.faults.set(func(int64) (int, string) {
		if down.Load() {
			return http.StatusServiceUnavailable, ""
		}
		return 0, ""
	})
	for i := range 8 {
		h.publish(t, mapping.Event{ID: fmt.Sprint("e", i), Type: "deploy-failed", Resource: mapping.Resource{Name: fmt.Sprint("svc-", i)}})
	}
	require.Eventually(t, func() bool { return h.count("delayed") >= 8 }, 10*time.Second, 5*time.Millisecond,
		"events wait behind the open breaker")
	calls := h.faults.requests.Load()
	down.Store(false)
	h.settled(t, 8)

	require.Len(t, h.agent.Received(), 8, "every event delivered once the agent is back")
	require.Empty(t, h.deadLetters(t), "waiting behind the breaker is not an attempt")
	require.Less(t, calls, int64(8*cfg.MaxAttempts), "the open breaker held calls back")
	require.Positive(t, testutil.ToFloat64(h.d.metrics.breakerTransitions.WithLabelValues("open")))
	require.Positive(t, testutil.ToFloat64(h.d.metrics.breakerTransitions.WithLabelValues("closed")))
}

// TestSlowAgentDoesNotDelayFastAgent blocks every call to one agent: calls to another agent
// must all be delivered while the slow ones are still blocked.
func TestSlowAgentDoesNotDelayFastAgent(t *testing.T) {
	cfg := testConfig()
	cfg.Workers = 4
	cfg.Guard.Concurrency = 2
	h := newHarness(t, cfg, "1.0")
	release := make(chan struct{})
	var slowStarted atomic.Int64
	h.agent.OnMessage = func(r demoagent.Received) error {
		if r.Agent == "kagent/slow" {
			slowStarted.Add(1)
			<-release
		}
		return nil
	}
	for i := range 10 {
		h.publish(t, mapping.Event{ID: fmt.Sprint("slow-", i), Type: "slow-thing", Resource: mapping.Resource{Name: fmt.Sprint("s", i)}})
	}
	for i := range 10 {
		h.publish(t, mapping.Event{ID: fmt.Sprint("fast-", i), Type: "fast-thing", Resource: mapping.Resource{Name: fmt.Sprint("f", i)}})
	}
	require.Eventually(t, func() bool { return countAgent(h.agent.Received(), "kagent/fast") == 10 }, 20*time.Second, 5*time.Millisecond)
	require.Equal(t, 0, countAgent(h.agent.Received(), "kagent/slow"), "every fast call landed while every slow call was still blocked")
	require.LessOrEqual(t, slowStarted.Load(), int64(cfg.Guard.Concurrency), "the slow agent never had more calls than its limit")
	close(release)
	h.settled(t, 20)
	require.Equal(t, 10, countAgent(h.agent.Received(), "kagent/slow"))
}

func countAgent(rs []demoagent.Received, agent string) int {
	n := 0
	for _, r := range rs {
		if r.Agent == agent {
			n++
		}
	}
	return n
}

func TestSuppressionWindow(t *testing.T) {
	h := newHarness(t, testConfig(), "1.0")
	for i := range 5 {
		h.publish(t, mapping.Event{ID: fmt.Sprint("e", i), Type: "deploy-failed", Resource: mapping.Resource{Name: "cart"}})
	}
	h.publish(t, mapping.Event{ID: "other", Type: "deploy-failed", Resource: mapping.Resource{Name: "checkout"}})
	h.settled(t, 6)
	require.Len(t, h.agent.Received(), 2, "one call per resource per window")
	require.Equal(t, 4.0, testutil.ToFloat64(h.d.metrics.suppressed))

	active, err := h.d.State().ActiveEvents(context.Background(), "shop/deploys")
	require.NoError(t, err)
	require.Len(t, active, 2)
	for _, a := range active {
		require.Equal(t, "firing", a.Status(time.Now()))
		require.Equal(t, "resolved", a.Status(a.LastSeen.Add(a.Window)), "resolved after a window without recurrence")
	}
}

// Without a reader of active events (hooks from a file), none are written, and suppression
// works the same.
func TestActiveEventsOff(t *testing.T) {
	cfg := testConfig()
	cfg.ActiveEvents = false
	h := newHarness(t, cfg, "1.0")
	for i := range 3 {
		h.publish(t, mapping.Event{ID: fmt.Sprint("e", i), Type: "deploy-failed", Resource: mapping.Resource{Name: "cart"}})
	}
	h.settled(t, 3)
	require.Len(t, h.agent.Received(), 1)
	active, err := h.d.State().ActiveEvents(context.Background(), "shop/deploys")
	require.NoError(t, err)
	require.Empty(t, active)
}

func TestSeverityFloorAndLegacyRoute(t *testing.T) {
	h := newHarness(t, testConfig(), "1.0")
	h.publish(t, mapping.Event{ID: "e1", Type: "deploy-failed", Severity: "error", Resource: mapping.Resource{Name: "a"}})
	h.publish(t, mapping.Event{ID: "e2", Type: "deploy-failed", Severity: "critical", Resource: mapping.Resource{Name: "b"}})
	h.settled(t, 2)
	require.Equal(t, 2, countAgent(h.agent.Received(), "kagent/sre"))
	require.Equal(t, 1, countAgent(h.agent.Received(), "kagent/legacy-sre"), "minSeverity: critical lets only e2 through, over A2A 0.3")
}

func TestTaskIsPolledUntilFinal(t *testing.T) {
	h := newHarness(t, testConfig(), "1.0")
	h.publish(t, mapping.Event{ID: "e1", Type: "long-task", Resource: mapping.Resource{Name: "job"}})
	h.settled(t, 1)
	require.Equal(t, 1.0, testutil.ToFloat64(h.d.metrics.taskStates.WithLabelValues("TASK_STATE_COMPLETED")))
}

func TestHTTPTargetSendsBinaryCloudEvent(t *testing.T) {
	var got *http.Request
	var body map[string]any
	received := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r
		require.NoError(t, json.NewDecoder(r.Body).Decode(&body))
		w.WriteHeader(http.StatusAccepted)
		close(received)
	}))
	defer srv.Close()
	target := NewHTTP(HTTPConfig{URL: srv.URL, Timeout: 5 * time.Second})
	idx := hooktest.Index(t, testHooks)
	ev := &mapping.Event{ID: "e1", Type: "deploy-failed", Namespace: "shop", Severity: "error",
		Resource: mapping.Resource{Kind: "Deployment", Name: "cart"}, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	task, err := hook.NewTask(idx.Match(ev)[0], ev)
	require.NoError(t, err)
	res, err := target.Deliver(context.Background(), task)
	require.NoError(t, err)
	<-received
	require.Equal(t, "accepted", res.State)
	require.Equal(t, "1.0", got.Header.Get("ce-specversion"))
	require.Equal(t, task.MessageID, got.Header.Get("ce-id"))
	require.Equal(t, "khook/shop/deploys", got.Header.Get("ce-source"))
	require.Equal(t, "deploy-failed", got.Header.Get("ce-type"))
	require.Equal(t, "shop/Deployment/cart", got.Header.Get("ce-subject"))
	require.Equal(t, "2026-01-02T03:04:05Z", got.Header.Get("ce-time"))
	require.Equal(t, task.Text, body["prompt"])

	// Status codes map to verdicts.
	for status, retryable := range map[int]bool{400: false, 404: false, 408: true, 429: true, 500: true, 503: true} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(status) }))
		_, err := NewHTTP(HTTPConfig{URL: srv.URL, Timeout: time.Second}).Deliver(context.Background(), task)
		srv.Close()
		r, _ := Classify(err)
		require.Equal(t, retryable, r, "HTTP %d", status)
	}
}

// TestRedeliveredEventIsNotDeliveredTwice replays an event the agent already accepted, as a
// redelivery after a lost ack would: the delivery record stops a second call.
func TestRedeliveredEventIsNotDeliveredTwice(t *testing.T) {
	h := newHarness(t, testConfig(), "1.0")
	ev := mapping.Event{ID: "e1", Type: "deploy-failed", Namespace: "shop", Severity: "error", Resource: mapping.Resource{Name: "cart"}}
	h.publish(t, ev)
	h.settled(t, 1)
	// The same event again, under another stream message id so the stream keeps it.
	data, err := json.Marshal(ev)
	require.NoError(t, err)
	body, err := cloudevent.Encode(&cloudevent.Event{ID: ev.ID, Source: "webhook", Type: ev.Type, Data: data})
	require.NoError(t, err)
	msg := nats.NewMsg("khook.events.deploy-failed")
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, "redelivery-of-e1")
	_, err = h.js.PublishMsg(context.Background(), msg)
	require.NoError(t, err)
	h.settled(t, 2)
	require.Len(t, h.agent.Received(), 1)
	require.Equal(t, 0.0, testutil.ToFloat64(h.d.metrics.suppressed), "skipped as delivered, not as suppressed")
}

func TestBearerTokenFromFileRotates(t *testing.T) {
	var auth atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth.Store(r.Header.Get("Authorization"))
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("first\n"), 0o600))
	target := NewHTTP(HTTPConfig{URL: srv.URL, Timeout: time.Second, TokenFile: tokenFile})
	task := hook.Task{Hook: "a/b", MessageID: "m", Event: &mapping.Event{Type: "t"}}
	_, err := target.Deliver(context.Background(), task)
	require.NoError(t, err)
	require.Equal(t, "Bearer first", auth.Load())
	require.NoError(t, os.WriteFile(tokenFile, []byte("second"), 0o600))
	_, err = target.Deliver(context.Background(), task)
	require.NoError(t, err)
	require.Equal(t, "Bearer second", auth.Load(), "the token file is re-read on every call")

	kagentTarget := NewKagent(KagentConfig{URL: srv.URL, UserID: "u", Timeout: time.Second, TokenFile: tokenFile})
	agentTask := hook.Task{Agent: hook.AgentRef{Namespace: "n", Name: "a"}, MessageID: "m", Event: &mapping.Event{}}
	_, _ = kagentTarget.Deliver(context.Background(), agentTask)
	require.Equal(t, "Bearer second", auth.Load(), "kagent calls carry the token too")

	// A token file emptied by a bad rotation fails the call before it is made: no request
	// goes out with an empty credential, which an agent might take as anonymous.
	auth.Store("no request")
	require.NoError(t, os.WriteFile(tokenFile, []byte("\n"), 0o600))
	_, err = target.Deliver(context.Background(), task)
	require.ErrorContains(t, err, "token_file: the token is empty")
	_, err = kagentTarget.Deliver(context.Background(), agentTask)
	require.ErrorContains(t, err, "kagent.token_file: the token is empty")
	require.Equal(t, "no request", auth.Load())
}

// What the dispatcher shares with other actors is usable from before Run starts and while it
// runs: a Hook status writer reads the state and the hooks, and the hook sources replace the
// hooks, concurrently with the workers. Under -race this fails if any of it is written
// without synchronisation (the state used to be opened inside Run and published to readers).
func TestSharedPartsAreSafeWhileRunning(t *testing.T) {
	h := newHarness(t, testConfig(), "1.0")
	require.NotNil(t, h.d.State(), "the state is there before the first event")
	idx := h.d.Hooks()
	stop := make(chan struct{})
	readers := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				readers <- nil
				return
			default:
			}
			if _, err := h.d.State().ActiveEvents(context.Background(), "shop/deploys"); err != nil {
				readers <- err
				return
			}
			_ = h.d.Hooks().Len()
			h.d.SetHooks(idx)
		}
	}()
	for i := range 20 {
		h.publish(t, mapping.Event{ID: fmt.Sprint("e", i), Type: "deploy-failed", Resource: mapping.Resource{Name: fmt.Sprint("r", i)}})
	}
	h.settled(t, 20)
	close(stop)
	require.NoError(t, <-readers)
	require.Len(t, h.agent.Received(), 20, "every event delivered once while the readers ran")
}

// Calls made 16 at a time to one agent reuse their connections: Go's default transport keeps
// two idle connections per host, and the rest were closed after each call and dialled anew.
func TestConcurrentCallsReuseConnections(t *testing.T) {
	agent := demoagent.New()
	srv := httptest.NewUnstartedServer(agent.Handler())
	var dials atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dials.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	target := NewKagent(KagentConfig{URL: srv.URL, UserID: "tester", Timeout: 5 * time.Second})
	const workers, calls = 16, 400
	var wg sync.WaitGroup
	work := make(chan int)
	for range workers {
		wg.Go(func() {
			for i := range work {
				id := fmt.Sprint("e", i)
				_, err := target.Deliver(context.Background(), hook.Task{Agent: hook.AgentRef{Namespace: "kagent", Name: "sre"},
					Text: id, MessageID: hook.UUID(id), ContextID: hook.UUID("c", id), Event: &mapping.Event{ID: id}})
				require.NoError(t, err)
			}
		})
	}
	for i := range calls {
		work <- i
	}
	close(work)
	wg.Wait()
	require.Len(t, agent.Received(), calls)
	require.LessOrEqual(t, dials.Load(), int64(2*workers), "at most a connection per concurrent call (and the card's), not one per call")
}
