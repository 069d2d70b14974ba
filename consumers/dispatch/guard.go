package dispatch

import (
	"sync"
	"time"
)

// GuardConfig configures the protection kept for every endpoint.
type GuardConfig struct {
	// Concurrency bounds the calls in flight to one endpoint, so one slow agent cannot take
	// every worker.
	Concurrency int           `koanf:"per_target_concurrency"`
	Breaker     BreakerConfig `koanf:"breaker"`
}

// BreakerConfig configures the circuit breaker kept for each endpoint.
type BreakerConfig struct {
	// Failures is how many consecutive retryable failures open the breaker.
	Failures int `koanf:"failures"`
	// Cooldown is how long an open breaker waits before letting one probe call through.
	Cooldown time.Duration `koanf:"cooldown"`
}

// guards hold one guard per endpoint, created on first use.
type guards struct {
	cfg GuardConfig
	now func() time.Time

	mu     sync.Mutex
	byName map[string]*guard
	// onTransition is told every breaker state change, for metrics.
	onTransition func(state string)
}

func newGuards(cfg GuardConfig, onTransition func(string)) *guards {
	return &guards{cfg: cfg, now: time.Now, byName: map[string]*guard{}, onTransition: onTransition}
}

func (g *guards) get(endpoint string) *guard {
	g.mu.Lock()
	defer g.mu.Unlock()
	gd, ok := g.byName[endpoint]
	if !ok {
		gd = &guard{sem: make(chan struct{}, g.cfg.Concurrency), parent: g}
		g.byName[endpoint] = gd
	}
	return gd
}

// openCount returns how many breakers are open now.
func (g *guards) openCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, gd := range g.byName {
		gd.mu.Lock()
		if gd.state != closed {
			n++
		}
		gd.mu.Unlock()
	}
	return n
}

type breakerState int

const (
	closed breakerState = iota
	open
	halfOpen
)

// guard limits concurrency to one endpoint and keeps its circuit breaker: after enough
// consecutive retryable failures the breaker opens and calls wait out a cooldown; then one
// probe call is let through, whose result closes or re-opens the breaker.
type guard struct {
	sem    chan struct{}
	parent *guards

	mu       sync.Mutex
	state    breakerState
	failures int
	openedAt time.Time
	probing  bool
}

// admit asks to make one call. It returns how long to wait before asking again when the
// call must not be made now (breaker open, probe in flight, or the endpoint saturated).
// After admit returns 0, the caller must call done with the call's outcome.
func (g *guard) admit() (wait time.Duration) {
	g.mu.Lock()
	now := g.parent.now()
	switch g.state {
	case open:
		if remaining := g.openedAt.Add(g.parent.cfg.Breaker.Cooldown).Sub(now); remaining > 0 {
			g.mu.Unlock()
			return remaining
		}
		g.state = halfOpen
		g.parent.onTransition("half-open")
		fallthrough
	case halfOpen:
		if g.probing {
			g.mu.Unlock()
			return g.parent.cfg.Breaker.Cooldown / 4
		}
		g.probing = true
	}
	g.mu.Unlock()
	select {
	case g.sem <- struct{}{}:
		return 0
	default:
		g.mu.Lock()
		g.probing = false
		g.mu.Unlock()
		// The endpoint is busy: ask again shortly, leaving the worker free for others.
		return 250 * time.Millisecond
	}
}

// done records the outcome of an admitted call. Only retryable failures count against the
// breaker: a permanent failure says the request was wrong, not that the endpoint is down.
func (g *guard) done(success, countsAsFailure bool) {
	<-g.sem
	g.mu.Lock()
	defer g.mu.Unlock()
	g.probing = false
	switch {
	case success:
		if g.state != closed {
			g.parent.onTransition("closed")
		}
		g.state, g.failures = closed, 0
	case countsAsFailure:
		g.failures++
		if g.state == halfOpen || (g.state == closed && g.failures >= g.parent.cfg.Breaker.Failures) {
			g.parent.onTransition("open")
			g.state, g.openedAt = open, g.parent.now()
		}
	}
}
