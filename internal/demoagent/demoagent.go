// Package demoagent is a small A2A agent server built on a2a-go: it answers every message at
// /api/a2a/{namespace}/{agent}/ (kagent's layout) and records what it received. `khook agent`
// runs it for local demos, and tests use it as the real agent at the other end of khook.
package demoagent

import (
	"context"
	"fmt"
	"io"
	"iter"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2acompat/a2av0"
	"github.com/a2aproject/a2a-go/v2/a2asrv"
)

// Received is one message an agent received.
type Received struct {
	Agent       string // namespace/name
	MessageID   string
	ContextID   string
	Text        string
	UserID      string
	Traceparent string
	At          time.Time
}

// Server serves any number of agents and records their messages.
type Server struct {
	// OnMessage, when set, is called for every message before it is answered; an error it
	// returns fails the call as the A2A server would report an agent error.
	OnMessage func(Received) error
	// LegacyAgents (namespace/name) speak A2A protocol 0.3 (message/send), as kagent 0.8
	// and older do; every other agent speaks 1.0.
	LegacyAgents map[string]bool
	// TaskAgents (namespace/name) answer with a task in the working state that completes
	// after TaskDelay, as long-running agents do.
	TaskAgents map[string]bool
	TaskDelay  time.Duration

	mu       sync.Mutex
	received []Received
	handlers map[string]http.Handler
	notify   chan struct{}
}

// New returns a server with no messages recorded.
func New() *Server {
	return &Server{handlers: map[string]http.Handler{}, notify: make(chan struct{})}
}

// Handler serves A2A JSON-RPC at /api/a2a/{namespace}/{agent}/.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	// A liveness endpoint, so that a container healthcheck (`khook probe`) can tell when the
	// agent accepts calls.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/api/a2a/{namespace}/{agent}/", func(w http.ResponseWriter, r *http.Request) {
		s.agent(r.PathValue("namespace")+"/"+r.PathValue("agent")).ServeHTTP(w, r)
	})
	return mux
}

func (s *Server) agent(name string) http.Handler {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.handlers[name]
	if !ok {
		handler := a2asrv.NewHandler(&executor{server: s, agent: name, task: s.TaskAgents[name]})
		if s.LegacyAgents[name] {
			h = a2av0.NewJSONRPCHandler(handler)
		} else {
			h = a2asrv.NewJSONRPCHandler(handler)
		}
		s.handlers[name] = h
	}
	return h
}

// Received returns a copy of every message received so far, in arrival order.
func (s *Server) Received() []Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Received(nil), s.received...)
}

// Changed returns a channel closed at the next received message, for waiting without polling.
func (s *Server) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.notify
}

// HoldFirst makes the first message wait, unanswered, until release is called: a call in
// flight that holds its agent's slot, or during which a test kills a dispatcher. calls
// counts the messages that arrived, the held one included. It replaces OnMessage.
func (s *Server) HoldFirst() (calls *atomic.Int64, release func()) {
	calls = new(atomic.Int64)
	held := make(chan struct{})
	var once sync.Once
	s.OnMessage = func(Received) error {
		if calls.Add(1) == 1 {
			<-held
		}
		return nil
	}
	return calls, func() { once.Do(func() { close(held) }) }
}

// Await waits until the server has received at least n messages, and returns them; after
// timeout it returns what it has and an error.
func (s *Server) Await(n int, timeout time.Duration) ([]Received, error) {
	deadline := time.After(timeout)
	for {
		changed := s.Changed()
		if got := s.Received(); len(got) >= n {
			return got, nil
		}
		select {
		case <-changed:
		case <-deadline:
			got := s.Received()
			return got, fmt.Errorf("agent received %d of %d messages within %s", len(got), n, timeout)
		}
	}
}

func (s *Server) record(r Received) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.received = append(s.received, r)
	close(s.notify)
	s.notify = make(chan struct{})
}

type executor struct {
	server *Server
	agent  string
	task   bool
}

func (e *executor) Execute(_ context.Context, ec *a2asrv.ExecutorContext) iter.Seq2[a2a.Event, error] {
	return func(yield func(a2a.Event, error) bool) {
		r := Received{Agent: e.agent, ContextID: ec.ContextID, At: time.Now()}
		if m := ec.Message; m != nil {
			r.MessageID = m.ID
			for _, p := range m.Parts {
				if t, ok := p.Content.(a2a.Text); ok {
					r.Text += string(t)
				}
			}
		}
		if ec.ServiceParams != nil {
			r.UserID = first(ec.ServiceParams.Get("x-user-id"))
			r.Traceparent = first(ec.ServiceParams.Get("traceparent"))
		}
		if hook := e.server.OnMessage; hook != nil {
			if err := hook(r); err != nil {
				yield(nil, err)
				return
			}
		}
		e.server.record(r)
		if !e.task {
			yield(a2a.NewMessage(a2a.MessageRoleAgent, a2a.NewTextPart("received")), nil)
			return
		}
		if !yield(a2a.NewSubmittedTask(ec, ec.Message), nil) {
			return
		}
		if !yield(a2a.NewStatusUpdateEvent(ec, a2a.TaskStateWorking, nil), nil) {
			return
		}
		time.Sleep(e.server.TaskDelay)
		yield(a2a.NewStatusUpdateEvent(ec, a2a.TaskStateCompleted, nil), nil)
	}
}

func (e *executor) Cancel(_ context.Context, ec *a2asrv.ExecutorContext) iter.Seq2[a2a.Event, error] {
	return func(yield func(a2a.Event, error) bool) {
		yield(a2a.NewStatusUpdateEvent(ec, a2a.TaskStateCanceled, nil), nil)
	}
}

func first(vals []string, _ bool) string {
	if len(vals) == 0 {
		return ""
	}
	return vals[0]
}
