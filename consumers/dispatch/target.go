package dispatch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/khook/khook/hook"
)

// Target delivers tasks to agents (Alertmanager's notify.Notifier, for agents). Deliver
// returns once the agent accepted the task; its error says, through Classify, whether
// retrying could help.
type Target interface {
	// Name is the target's kind (kagent, http, log), a metric label.
	Name() string
	// Endpoint is where t would be delivered: the unit of concurrency limits and circuit
	// breakers.
	Endpoint(t hook.Task) string
	Deliver(ctx context.Context, t hook.Task) (Result, error)
}

// Result is what a target learned from a successful delivery.
type Result struct {
	// State is the agent's final word: an A2A task state (completed, failed, ...), "message"
	// for a direct A2A reply, or "accepted" for targets that say nothing more.
	State string
}

// DeliveryError is a failed delivery with its verdict.
type DeliveryError struct {
	Err        error
	Retryable  bool
	RetryAfter time.Duration // from a Retry-After header; zero when absent
	Status     int           // the HTTP status, when there was a response
}

func (e *DeliveryError) Error() string { return e.Err.Error() }
func (e *DeliveryError) Unwrap() error { return e.Err }

// Permanent marks err as a failure that retrying cannot fix: it is dead-lettered at once.
func Permanent(err error) error { return &DeliveryError{Err: err} }

// Classify says whether a delivery error is worth retrying and after how long the peer
// asked us to wait. Errors that carry no verdict (connection refused, timeouts) are
// retryable: a possibly late delivery beats a lost one.
func Classify(err error) (retryable bool, retryAfter time.Duration) {
	var de *DeliveryError
	if errors.As(err, &de) {
		return de.Retryable, de.RetryAfter
	}
	return true, 0
}

// statusVerdict classifies an HTTP response status: 408, 429 and 5xx are retryable, every
// other 4xx is permanent.
func statusVerdict(status int) bool {
	return status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// responseCapture records the status and Retry-After of the last HTTP response of a call.
// Libraries such as a2a-go turn HTTP failures into plain error strings; capturing the
// response beneath them keeps the verdict exact.
type responseCapture struct {
	status     int
	retryAfter time.Duration
}

type captureKey struct{}

// keepAliveTransport is Go's default transport keeping as many idle connections to one
// agent as the dispatcher makes calls to it at once. The default keeps two per host, so a
// dispatcher calling one agent from 16 workers closed and dialled connections continuously:
// about a tenth of its CPU in the benchmark, and a socket in TIME_WAIT per call.
func keepAliveTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = maxConnsPerAgent
	return t
}

// maxConnsPerAgent bounds the idle connections kept per agent: more than any sensible
// dispatcher.workers.
const maxConnsPerAgent = 256

// captureTransport fills the responseCapture found in a request's context.
type captureTransport struct{ next http.RoundTripper }

func (t captureTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if c, ok := req.Context().Value(captureKey{}).(*responseCapture); ok && resp != nil {
		c.status = resp.StatusCode
		c.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return resp, err
}

// withCapture returns a context whose HTTP responses are recorded in the returned capture.
func withCapture(ctx context.Context) (context.Context, *responseCapture) {
	c := &responseCapture{}
	return context.WithValue(ctx, captureKey{}, c), c
}

// verdict turns a failed call and what its HTTP response said into a DeliveryError. A 200
// response with an error is an application-level refusal (a JSON-RPC error such as an
// unknown agent), which retrying does not fix.
func (c *responseCapture) verdict(err error) error {
	switch {
	case c.status == 0:
		return &DeliveryError{Err: err, Retryable: true}
	case c.status >= 200 && c.status < 300:
		return &DeliveryError{Err: err, Status: c.status}
	default:
		return &DeliveryError{Err: fmt.Errorf("HTTP %d: %w", c.status, err), Retryable: statusVerdict(c.status),
			RetryAfter: c.retryAfter, Status: c.status}
	}
}

// LogTarget prints tasks instead of calling agents: for local runs without kagent.
type LogTarget struct{ Logger *zap.Logger }

// Name implements Target.
func (LogTarget) Name() string { return "log" }

// Endpoint implements Target.
func (LogTarget) Endpoint(hook.Task) string { return "log" }

// Deliver implements Target.
func (l LogTarget) Deliver(_ context.Context, t hook.Task) (Result, error) {
	l.Logger.Info("task", zap.String("hook", t.Hook), zap.String("agent", t.Agent.Key()),
		zap.String("event_id", t.Event.ID), zap.String("message_id", t.MessageID), zap.String("text", t.Text))
	return Result{State: "logged"}, nil
}
