package dispatch

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2aclient"
)

// KagentConfig configures calls to kagent agents over A2A.
type KagentConfig struct {
	// URL is the kagent controller, e.g. http://kagent-controller.kagent:8083.
	URL    string
	UserID string
	// Timeout bounds one agent call.
	Timeout time.Duration
	// TokenFile, when set, holds a bearer token; it is re-read on every call so it can rotate.
	TokenFile string
}

// Kagent calls kagent agents with A2A JSON-RPC (protocol 1.0, method SendMessage) at
// {URL}/api/a2a/{namespace}/{agent}/.
type Kagent struct {
	cfg  KagentConfig
	http *http.Client

	mu      sync.Mutex
	clients map[string]*a2aclient.Client
}

// NewKagent returns a kagent target. It opens no connection until the first call.
func NewKagent(cfg KagentConfig) *Kagent {
	return &Kagent{
		cfg:     cfg,
		http:    &http.Client{Timeout: cfg.Timeout},
		clients: map[string]*a2aclient.Client{},
	}
}

// Name implements Target.
func (k *Kagent) Name() string { return "kagent" }

// AgentURL returns the A2A endpoint of an agent.
func (k *Kagent) AgentURL(a AgentRef) string {
	return fmt.Sprintf("%s/api/a2a/%s/%s/", strings.TrimSuffix(k.cfg.URL, "/"), a.Namespace, a.Name)
}

func (k *Kagent) client(ctx context.Context, url string) (*a2aclient.Client, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if c, ok := k.clients[url]; ok {
		return c, nil
	}
	iface := &a2a.AgentInterface{URL: url, ProtocolBinding: a2a.TransportProtocolJSONRPC, ProtocolVersion: a2a.Version}
	c, err := a2aclient.NewFromEndpoints(ctx, []*a2a.AgentInterface{iface}, a2aclient.WithJSONRPCTransport(k.http))
	if err != nil {
		return nil, fmt.Errorf("a2a client for %s: %w", url, err)
	}
	k.clients[url] = c
	return c, nil
}

// Deliver sends the task as one A2A message and returns once the agent answered.
func (k *Kagent) Deliver(ctx context.Context, t Task) error {
	url := k.AgentURL(t.Agent)
	c, err := k.client(ctx, url)
	if err != nil {
		return err
	}
	params := a2aclient.ServiceParams{"X-User-Id": {k.cfg.UserID}}
	if k.cfg.TokenFile != "" {
		tok, err := os.ReadFile(k.cfg.TokenFile)
		if err != nil {
			return fmt.Errorf("kagent.token_file: %w", err)
		}
		params["Authorization"] = []string{"Bearer " + strings.TrimSpace(string(tok))}
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
	if _, err := c.SendMessage(ctx, &a2a.SendMessageRequest{Message: msg}); err != nil {
		return fmt.Errorf("a2a SendMessage to %s: %w", url, err)
	}
	return nil
}
