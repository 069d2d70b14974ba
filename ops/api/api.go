// Package api serves khook's events HTTP API: retained normalized events with filters and
// paging, the events of one hook, a live Server-Sent Events stream, and the pipeline status.
// Every request needs the bearer token; docs/api/openapi.yaml describes the API.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/internal/secret"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/streams"
)

// Limits of one page of events.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// Server is the events API.
type Server struct {
	JS    jetstream.JetStream
	Topo  streams.Config
	Token *secret.Value
	// Hooks returns the active hooks, for the per-hook listing.
	Hooks func() *hook.Index
	// Status returns the pipeline status for /api/v1/status, with the outcomes of the last
	// window (0: none).
	Status func(ctx context.Context, window time.Duration) (*ops.Status, error)
	Logger *zap.Logger
	// Heartbeat is how often an idle event stream sends a comment, so proxies keep it open.
	Heartbeat time.Duration
}

// Handler returns the API's routes behind the token check.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/events", s.events)
	mux.HandleFunc("GET /api/v1/events/stream", s.stream)
	mux.HandleFunc("GET /api/v1/hooks/{namespace}/{name}/events", s.hookEvents)
	mux.HandleFunc("GET /api/v1/status", s.status)
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if s.Token == nil {
			// Configuration requires a token; refuse rather than serve openly if it is missing.
			writeError(rw, http.StatusUnauthorized, "the API has no token configured")
			return
		}
		if err := s.Token.CheckBearer(r.Header); err != nil {
			if !errors.Is(err, secret.ErrBearer) {
				s.Logger.Warn("api token unreadable", zap.Error(err))
			}
			rw.Header().Set("WWW-Authenticate", `Bearer realm="khook"`)
			writeError(rw, http.StatusUnauthorized, "missing or invalid bearer token")
			return
		}
		// An id holds its source and a slash (webhook/3f2a9c), and whatever its sender
		// chose after it, "." and ".." segments included: the rest of the path is the id, as
		// sent. The mux would clean such a path and redirect to another event's.
		if id, ok := strings.CutPrefix(r.URL.EscapedPath(), describePrefix); ok && id != "stream" {
			if r.Method != http.MethodGet {
				rw.Header().Set("Allow", http.MethodGet)
				writeError(rw, http.StatusMethodNotAllowed, "only GET")
				return
			}
			s.describe(rw, r, id)
			return
		}
		mux.ServeHTTP(rw, r)
	})
}

// describePrefix is the path of GET /api/v1/events/{id} before the id.
const describePrefix = "/api/v1/events/"

type page struct {
	Events []ops.EventRecord `json:"events"`
	// Next is the cursor of the following page; absent on the last one.
	Next string `json:"next,omitempty"`
}

func (s *Server) events(rw http.ResponseWriter, r *http.Request) {
	s.list(rw, r, nil)
}

// describe is khook events describe: what became of one event, by id (escaped as in the
// path) or events-stream sequence.
func (s *Server) describe(rw http.ResponseWriter, r *http.Request, escaped string) {
	id, err := url.PathUnescape(escaped)
	if err != nil || id == "" {
		writeError(rw, http.StatusBadRequest, "want an event id or sequence after /api/v1/events/")
		return
	}
	d, err := ops.Describe(r.Context(), s.JS, s.Topo, id)
	switch {
	case errors.Is(err, ops.ErrEventNotFound):
		writeError(rw, http.StatusNotFound, err.Error())
	case err != nil:
		s.Logger.Warn("api describe", zap.Error(err))
		writeError(rw, http.StatusServiceUnavailable, "streams unavailable")
	default:
		writeJSON(rw, http.StatusOK, d)
	}
}

func (s *Server) hookEvents(rw http.ResponseWriter, r *http.Request) {
	key := r.PathValue("namespace") + "/" + r.PathValue("name")
	var found *hook.Hook
	for _, h := range s.Hooks().Hooks() {
		if h.Key() == key {
			found = h
		}
	}
	if found == nil {
		writeError(rw, http.StatusNotFound, fmt.Sprintf("no hook %s", key))
		return
	}
	// The hook's own matching rule: its namespace, its event types, severity floors and tag
	// selectors, as the dispatcher applies them.
	idx, err := hook.NewIndex([]hook.Hook{*found})
	if err != nil {
		writeError(rw, http.StatusInternalServerError, err.Error())
		return
	}
	s.list(rw, r, func(ev *mapping.Event) bool { return len(idx.Match(ev)) > 0 })
}

func (s *Server) list(rw http.ResponseWriter, r *http.Request, match func(*mapping.Event) bool) {
	f, err := filter(r)
	if err != nil {
		writeError(rw, http.StatusBadRequest, err.Error())
		return
	}
	f.Match = match
	q := r.URL.Query()
	limit := DefaultLimit
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > MaxLimit {
			writeError(rw, http.StatusBadRequest, fmt.Sprintf("limit: want 1 to %d", MaxLimit))
			return
		}
	}
	var after uint64
	if v := q.Get("cursor"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			writeError(rw, http.StatusBadRequest, "cursor: want the next value of the previous page")
			return
		}
	}
	events, next, err := ops.QueryEvents(r.Context(), s.JS, s.Topo, f, after, limit)
	if err != nil {
		s.Logger.Warn("api events query", zap.Error(err))
		writeError(rw, http.StatusServiceUnavailable, "events stream unavailable")
		return
	}
	p := page{Events: events}
	if p.Events == nil {
		p.Events = []ops.EventRecord{}
	}
	if next > 0 {
		p.Next = strconv.FormatUint(next, 10)
	}
	writeJSON(rw, http.StatusOK, p)
}

// filter reads the common query parameters. since and until take RFC 3339 times or, for
// since, a duration back from now ("2h").
func filter(r *http.Request) (ops.EventFilter, error) {
	q := r.URL.Query()
	f := ops.EventFilter{Type: q.Get("type"), Namespace: q.Get("namespace"), Resource: q.Get("resource"), Cluster: q.Get("cluster"), MinSeverity: q.Get("severity")}
	var err error
	if f.Since, err = ops.ParseTime(q.Get("since"), true); err != nil {
		return f, fmt.Errorf("since: %w", err)
	}
	if f.Until, err = ops.ParseTime(q.Get("until"), false); err != nil {
		return f, fmt.Errorf("until: %w", err)
	}
	return f, f.Validate()
}

// stream sends every new event matching the filters as a Server-Sent Event: `id` is the
// stream sequence, `event` is "event", `data` the event as JSON.
func (s *Server) stream(rw http.ResponseWriter, r *http.Request) {
	f, err := filter(r)
	if err != nil {
		writeError(rw, http.StatusBadRequest, err.Error())
		return
	}
	flusher, ok := rw.(http.Flusher)
	if !ok {
		writeError(rw, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	rw.Header().Set("Content-Type", "text/event-stream")
	rw.Header().Set("Cache-Control", "no-cache")
	rw.Header().Set("X-Accel-Buffering", "no")
	rw.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(rw, ": khook events\n\n")
	flusher.Flush()

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	events := make(chan ops.EventRecord, 64)
	errc := make(chan error, 1)
	go func() {
		errc <- ops.TailEvents(ctx, s.JS, s.Topo, f, func(rec ops.EventRecord) error {
			select {
			case events <- rec:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	beat := s.Heartbeat
	if beat <= 0 {
		beat = 15 * time.Second
	}
	t := time.NewTicker(beat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-errc:
			if err != nil && ctx.Err() == nil {
				s.Logger.Warn("api event stream", zap.Error(err))
			}
			return
		case <-t.C:
			if _, err := fmt.Fprint(rw, ": ping\n\n"); err != nil {
				return
			}
			flusher.Flush()
		case rec := <-events:
			b, err := json.Marshal(rec)
			if err != nil {
				continue
			}
			if _, err := fmt.Fprintf(rw, "id: %d\nevent: event\ndata: %s\n\n", rec.Seq, b); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

// MaxStatusWindow bounds the outcomes window of /api/v1/status: each request reads every
// outcome record of its window.
const MaxStatusWindow = 24 * time.Hour

func (s *Server) status(rw http.ResponseWriter, r *http.Request) {
	window := time.Hour
	if v := r.URL.Query().Get("window"); v != "" {
		var err error
		if window, err = time.ParseDuration(v); err != nil || window < 0 || window > MaxStatusWindow {
			writeError(rw, http.StatusBadRequest, fmt.Sprintf("window: want a duration from 0 (no outcome counts) to %s", MaxStatusWindow))
			return
		}
	}
	st, err := s.Status(r.Context(), window)
	if err != nil {
		s.Logger.Warn("api status", zap.Error(err))
		writeError(rw, http.StatusServiceUnavailable, "status unavailable: "+err.Error())
		return
	}
	writeJSON(rw, http.StatusOK, st)
}

func writeJSON(rw http.ResponseWriter, code int, v any) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(code)
	_ = json.NewEncoder(rw).Encode(v)
}

func writeError(rw http.ResponseWriter, code int, msg string) {
	writeJSON(rw, code, map[string]string{"error": msg})
}
