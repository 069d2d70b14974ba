package dispatch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2aclient"
	"github.com/a2aproject/a2a-go/v2/a2acompat/a2av0"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/internal/secret"
)

// KagentConfig configures calls to kagent agents over A2A.
type KagentConfig struct {
	// URL is the kagent controller, e.g. http://kagent-controller.kagent:8083.
	URL string
	// Protocol is the A2A version: 1.0 (method SendMessage) or 0.3 (message/send, kagent
	// 0.8 and older).
	Protocol string
	UserID   string
	// Timeout bounds one agent call, including polling a task until it is final.
	Timeout time.Duration
	// TokenFile, when set, holds a bearer token; it is re-read when it changes, so it can
	// rotate without a restart.
	TokenFile string
	// PollInterval is how often a task that is not final yet is polled with GetTask.
	PollInterval time.Duration
}

// Kagent calls kagent agents with A2A JSON-RPC at {URL}/api/a2a/{namespace}/{agent}/.
type Kagent struct {
	cfg   KagentConfig
	http  *http.Client
	token *secret.Value // nil without a token file

	mu      sync.Mutex
	clients map[string]*a2aclient.Client
}

// NewKagent returns a kagent target. It opens no connection until the first call.
func NewKagent(cfg KagentConfig) *Kagent {
	if cfg.Protocol == "" {
		cfg.Protocol = string(a2a.Version)
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	return &Kagent{
		cfg:     cfg,
		token:   secret.New("", cfg.TokenFile),
		http:    &http.Client{Transport: captureTransport{next: keepAliveTransport()}},
		clients: map[string]*a2aclient.Client{},
	}
}

// Name implements Target.
func (k *Kagent) Name() string { return "kagent" }

// Endpoint implements Target: the agent's A2A URL.
func (k *Kagent) Endpoint(t hook.Task) string { return k.AgentURL(t.Agent) }

// AgentURL returns the A2A endpoint of an agent.
func (k *Kagent) AgentURL(a hook.AgentRef) string {
	return fmt.Sprintf("%s/api/a2a/%s/%s/", strings.TrimSuffix(k.cfg.URL, "/"), a.Namespace, a.Name)
}

func (k *Kagent) client(ctx context.Context, url string) (*a2aclient.Client, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if c, ok := k.clients[url]; ok {
		return c, nil
	}
	iface := &a2a.AgentInterface{URL: url, ProtocolBinding: a2a.TransportProtocolJSONRPC, ProtocolVersion: a2a.ProtocolVersion(k.cfg.Protocol)}
	var opt a2aclient.FactoryOption
	if k.cfg.Protocol == string(a2av0.Version) {
		opt = a2av0.WithJSONRPCTransport(a2av0.JSONRPCTransportConfig{Client: k.http})
	} else {
		opt = a2aclient.WithJSONRPCTransport(k.http)
	}
	c, err := a2aclient.NewFromEndpoints(ctx, []*a2a.AgentInterface{iface}, opt)
	if err != nil {
		return nil, Permanent(fmt.Errorf("a2a client for %s: %w", url, err))
	}
	k.clients[url] = c
	return c, nil
}

// Deliver sends the task as one A2A message. When the agent answers with a task that is not
// final yet, Deliver polls it with GetTask until it is final or the timeout ends; a task
// still running then counts as delivered, since sending again would start a second one.
func (k *Kagent) Deliver(ctx context.Context, t hook.Task) (Result, error) {
	url := k.AgentURL(t.Agent)
	c, err := k.client(ctx, url)
	if err != nil {
		return Result{}, err
	}
	params := a2aclient.ServiceParams{"X-User-Id": {k.cfg.UserID}}
	if k.token != nil {
		bearer, err := k.token.Bearer("kagent.token_file")
		if err != nil {
			return Result{}, err
		}
		params["Authorization"] = []string{bearer}
	}
	if t.Traceparent != "" {
		params["traceparent"] = []string{t.Traceparent}
	}
	ctx, cancel := context.WithTimeout(a2aclient.AttachServiceParams(ctx, params), k.cfg.Timeout)
	defer cancel()
	msg := &a2a.Message{
		ID:        t.MessageID,
		ContextID: t.ContextID,
		Role:      a2a.MessageRoleUser,
		Parts:     a2a.ContentParts{a2a.NewTextPart(t.Text)},
		Metadata: map[string]any{
			"khook.hook":      t.Hook,
			"khook.eventId":   t.Event.ID,
			"khook.eventType": t.Event.Type,
		},
	}
	callCtx, capture := withCapture(ctx)
	res, err := c.SendMessage(callCtx, &a2a.SendMessageRequest{Message: msg})
	if err != nil {
		return Result{}, capture.verdict(fmt.Errorf("a2a %s to %s: %w", k.method(), url, err))
	}
	task, ok := res.(*a2a.Task)
	if !ok {
		return Result{State: "message"}, nil
	}
	return k.await(ctx, c, task), nil
}

func (k *Kagent) method() string {
	if k.cfg.Protocol == string(a2av0.Version) {
		return "message/send"
	}
	return "SendMessage"
}

// await polls a task until it reaches a final (or interrupted) state, or ctx ends.
func (k *Kagent) await(ctx context.Context, c *a2aclient.Client, task *a2a.Task) Result {
	for !settled(task.Status.State) {
		select {
		case <-ctx.Done():
			return Result{State: string(task.Status.State)}
		case <-time.After(k.cfg.PollInterval):
		}
		next, err := c.GetTask(ctx, &a2a.GetTaskRequest{ID: task.ID})
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
				return Result{State: string(task.Status.State)}
			}
			continue
		}
		task = next
	}
	return Result{State: string(task.Status.State)}
}

// settled reports whether a task will not change without more input from khook.
func settled(s a2a.TaskState) bool {
	switch s {
	case a2a.TaskStateSubmitted, a2a.TaskStateWorking, "":
		return false
	}
	return true
}
