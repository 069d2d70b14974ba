package dispatch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/internal/secret"
)

// HTTPConfig configures a plain HTTP target.
type HTTPConfig struct {
	URL       string
	Timeout   time.Duration
	TokenFile string // bearer token, re-read when it changes
}

// HTTP posts each task to a URL as a CloudEvent in binary mode: the ce-* headers carry the
// event attributes and the body is the task (hook, agent, prompt and normalized event).
type HTTP struct {
	cfg    HTTPConfig
	client *http.Client
	token  *secret.Value // nil without a token file
}

// NewHTTP returns an HTTP target.
func NewHTTP(cfg HTTPConfig) *HTTP {
	return &HTTP{cfg: cfg, client: &http.Client{Timeout: cfg.Timeout, Transport: keepAliveTransport()}, token: secret.New("", cfg.TokenFile)}
}

// Name implements Target.
func (h *HTTP) Name() string { return "http" }

// Endpoint implements Target.
func (h *HTTP) Endpoint(hook.Task) string { return h.cfg.URL }

// httpTask is the body an HTTP target receives.
type httpTask struct {
	Hook      string `json:"hook"`
	Agent     string `json:"agent"`
	Prompt    string `json:"prompt"`
	MessageID string `json:"messageId"`
	ContextID string `json:"contextId"`
	Event     any    `json:"event"`
}

// Deliver implements Target.
func (h *HTTP) Deliver(ctx context.Context, t hook.Task) (Result, error) {
	body, err := json.Marshal(httpTask{
		Hook: t.Hook, Agent: t.Agent.Key(), Prompt: t.Text,
		MessageID: t.MessageID, ContextID: t.ContextID, Event: t.Event,
	})
	if err != nil {
		return Result{}, Permanent(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return Result{}, Permanent(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("ce-specversion", "1.0")
	req.Header.Set("ce-id", t.MessageID)
	req.Header.Set("ce-source", "khook/"+t.Hook)
	req.Header.Set("ce-type", t.Event.Type)
	if t.Event.Namespace != "" || t.Event.Resource.Name != "" {
		req.Header.Set("ce-subject", t.Event.Namespace+"/"+t.Event.Resource.Kind+"/"+t.Event.Resource.Name)
	}
	if !t.Event.Time.IsZero() {
		req.Header.Set("ce-time", t.Event.Time.UTC().Format(time.RFC3339Nano))
	}
	if t.Traceparent != "" {
		req.Header.Set("traceparent", t.Traceparent)
	}
	if h.token != nil {
		bearer, err := h.token.Bearer("token_file")
		if err != nil {
			return Result{}, err
		}
		req.Header.Set("Authorization", bearer)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return Result{}, &DeliveryError{Err: fmt.Errorf("POST %s: %w", h.cfg.URL, err), Retryable: true}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return Result{State: "accepted"}, nil
	}
	return Result{}, &DeliveryError{
		Err:        fmt.Errorf("POST %s: HTTP %d", h.cfg.URL, resp.StatusCode),
		Retryable:  statusVerdict(resp.StatusCode),
		RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
		Status:     resp.StatusCode,
	}
}
