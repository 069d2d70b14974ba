// Package webhook is the webhook producer plugin: an HTTP endpoint that turns each JSON
// request into one raw event, and answers 202 only after JetStream stored it.
package webhook

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/khook/khook/producers"
	"github.com/khook/khook/streams/subject"
)

// Name is the plugin's name in plugins.yaml and the source of its events.
const Name = "webhook"

// Webhook is the webhook plugin.
type Webhook struct {
	cfg    Config
	logger *zap.Logger
	// OnListen, when set, is told the bound address; tests use it with port 0.
	OnListen func(net.Addr)
}

// New validates cfg and returns the plugin. It starts nothing.
func New(cfg Config, logger *zap.Logger) (*Webhook, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("plugins.webhook.config: %w", err)
	}
	return &Webhook{cfg: cfg, logger: logger}, nil
}

// FromSpec builds the plugin from its plugins.yaml entry.
func FromSpec(spec producers.Spec, logger *zap.Logger) (producers.Plugin, error) {
	cfg := DefaultConfig()
	if err := spec.DecodeConfig(&cfg); err != nil {
		return nil, err
	}
	return New(cfg, logger)
}

// Name implements producers.Plugin.
func (w *Webhook) Name() string { return Name }

// Run serves HTTP until ctx ends, then stops accepting requests and waits for in-flight
// requests (and their publishes) to finish.
func (w *Webhook) Run(ctx context.Context, emit producers.Emit) error {
	ln, err := net.Listen("tcp", net.JoinHostPort(w.cfg.Address, strconv.Itoa(w.cfg.Port)))
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	if w.OnListen != nil {
		w.OnListen(ln.Addr())
	}
	srv := &http.Server{
		Handler:           w.Handler(emit),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      w.cfg.Timeout + 10*time.Second,
		IdleTimeout:       120 * time.Second,
	}
	w.logger.Info("webhook listening", zap.String("addr", ln.Addr().String()), zap.String("path", w.cfg.Path))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("webhook: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), w.cfg.Timeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("webhook shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("webhook: %w", err)
	}
	return nil
}

// Handler returns the plugin's HTTP handler: POST on the configured path, and GET /healthz
// for load balancers.
func (w *Webhook) Handler(emit producers.Emit) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		writeJSON(rw, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc(w.cfg.Path, func(rw http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			rw.Header().Set("Allow", http.MethodPost)
			writeError(rw, http.StatusMethodNotAllowed, "method %s not allowed: POST events to %s", r.Method, w.cfg.Path)
			return
		}
		w.receive(rw, r, emit)
	})
	return mux
}

// response is the body of a 202.
type response struct {
	ID        string `json:"id"`
	Duplicate bool   `json:"duplicate"`
}

func (w *Webhook) receive(rw http.ResponseWriter, r *http.Request, emit producers.Emit) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSON(ct) {
		writeError(rw, http.StatusUnsupportedMediaType, "content type %q not supported: send application/json", ct)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, w.cfg.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(rw, http.StatusRequestEntityTooLarge, "body larger than %d bytes", w.cfg.MaxBodyBytes)
			return
		}
		writeError(rw, http.StatusBadRequest, "reading body: %v", err)
		return
	}
	ev, err := decode(body, r.URL.Query().Get("type"))
	if err != nil {
		writeError(rw, http.StatusBadRequest, "%v", err)
		return
	}
	ev.ID = r.Header.Get("Idempotency-Key")
	if ev.ID == "" {
		ev.ID = contentID(Name, ev.Type, body)
	}
	ev.Traceparent = r.Header.Get("traceparent")

	ctx, cancel := context.WithTimeout(r.Context(), w.cfg.Timeout)
	defer cancel()
	res, err := emit(ctx, ev)
	switch {
	case errors.Is(err, producers.ErrInvalidEvent):
		writeError(rw, http.StatusBadRequest, "%v", err)
	case err != nil:
		// Never 2xx for an event that was not stored: the sender must retry.
		w.logger.Warn("event not stored", zap.String("event_id", ev.ID), zap.Error(err))
		rw.Header().Set("Retry-After", "1")
		writeError(rw, http.StatusServiceUnavailable, "event store unavailable, retry later")
	default:
		writeJSON(rw, http.StatusAccepted, response{ID: res.ID, Duplicate: res.Duplicate})
	}
}

// decode reads a JSON object body. The event type comes from the body's "type" field, else
// from the ?type= query.
func decode(body []byte, queryType string) (producers.Event, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return producers.Event{}, errors.New("body must be a JSON object")
	}
	var fields struct {
		Type json.RawMessage `json:"type"`
	}
	if err := json.Unmarshal(trimmed, &fields); err != nil {
		return producers.Event{}, fmt.Errorf("body is not valid JSON: %v", err)
	}
	eventType := queryType
	if len(fields.Type) > 0 && string(fields.Type) != "null" {
		if err := json.Unmarshal(fields.Type, &eventType); err != nil {
			return producers.Event{}, errors.New(`"type" must be a string`)
		}
	}
	if eventType == "" {
		return producers.Event{}, errors.New(`no event type: set "type" in the body or ?type= in the URL`)
	}
	if err := subject.CheckToken("event type", eventType); err != nil {
		return producers.Event{}, err
	}
	return producers.Event{Type: eventType, Data: json.RawMessage(trimmed)}, nil
}

// contentID derives an event id from what the event says, so that a retried request without
// an Idempotency-Key is stored once.
func contentID(source, eventType string, body []byte) string {
	h := sha256.New()
	h.Write([]byte(source))
	h.Write([]byte{0})
	h.Write([]byte(eventType))
	h.Write([]byte{0})
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil)[:16])
}

func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

func writeJSON(rw http.ResponseWriter, code int, v any) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(code)
	_ = json.NewEncoder(rw).Encode(v)
}

func writeError(rw http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(rw, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}
