package telemetry

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// Check reports whether one part of the process is ready; nil means ready.
type Check func(ctx context.Context) error

// Probes serves /healthz (the process is alive) and /readyz (every registered check
// passes). Components register checks as they start and remove them as they stop.
type Probes struct {
	mu     sync.Mutex
	checks map[string]Check
}

// NewProbes returns probes with no checks; /readyz fails until at least one is added, so a
// process is never ready before its components have started.
func NewProbes() *Probes { return &Probes{checks: map[string]Check{}} }

// Set registers or replaces the named check.
func (p *Probes) Set(name string, c Check) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.checks[name] = c
}

// Remove unregisters the named check.
func (p *Probes) Remove(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.checks, name)
}

// Ready runs every check and returns each one's error text, or "ok".
func (p *Probes) Ready(ctx context.Context) (map[string]string, bool) {
	p.mu.Lock()
	checks := make(map[string]Check, len(p.checks))
	for k, v := range p.checks {
		checks[k] = v
	}
	p.mu.Unlock()
	ready := len(checks) > 0
	status := make(map[string]string, len(checks))
	for name, c := range checks {
		if err := c(ctx); err != nil {
			status[name] = err.Error()
			ready = false
		} else {
			status[name] = "ok"
		}
	}
	return status, ready
}

// Handler serves /healthz and /readyz. Both answer JSON.
func (p *Probes) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		status, ready := p.Ready(ctx)
		code := http.StatusOK
		if !ready {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]any{"ready": ready, "checks": status})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
