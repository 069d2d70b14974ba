// Package producers is the runtime every event-source plugin runs in.
//
// A plugin sees only an Emit function: it never touches NATS, metrics or retries. Emit
// returns only after JetStream has durably stored the event, so a plugin that reports
// success to its caller (a webhook's 202) after Emit returns never acknowledges an event that
// could be lost.
package producers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Event is what a plugin emits: one raw event from its source.
type Event struct {
	// ID identifies the event deterministically from the source (an idempotency key, a
	// Kubernetes UID and count, a hash of the body), so that a repeat inside the raw
	// stream's duplicate window is stored once.
	ID string
	// Type is the plugin's event type, a subject token ([a-z0-9-_]).
	Type string
	// Subject is the CloudEvents subject, "namespace/kind/name" when known.
	Subject string
	// Time is when the event happened; zero means now.
	Time time.Time
	// Data is the event payload as JSON.
	Data json.RawMessage
	// Traceparent is the W3C trace context to continue, if the source carried one.
	Traceparent string
	// Scope says where ID is unique when that is narrower than the source: the sender's
	// CloudEvents source, or the endpoint an Idempotency-Key was sent to. Events with the
	// same ID and different scopes are different events. Empty: the source is the scope.
	Scope string
	// Extensions are CloudEvents extension attributes to keep on the raw event (a sender's
	// own source and extensions), by attribute name.
	Extensions map[string]string
	// Source overrides the plugin's name as the event's source, for plugins that receive
	// events on behalf of several systems (a webhook endpoint per CI system). It is a
	// subject token ([a-z0-9-_]).
	Source string
}

// Result is what JetStream said about an emitted event.
type Result struct {
	// ID is the event's key inside khook: its id scoped by its source (see
	// cloudevent.Key), the id the agent's messageId and every record derive from.
	ID string
	// Duplicate is true when the stream already held an event with this id inside its
	// duplicate window, so nothing new was stored.
	Duplicate bool
}

// Emit publishes one event and returns after JetStream acknowledged it.
type Emit func(ctx context.Context, ev Event) (Result, error)

// EventSource is a producer plugin: the deployment guide's EventSource, with its
// Initialize/WatchEvents/Stop lifecycle folded into Run. Build one in a constructor that
// validates config and starts nothing; the runtime calls Run.
type EventSource interface {
	// Name is the plugin's name in plugins.yaml and the source of its events.
	Name() string
	// Version is the plugin's own version, reported in logs.
	Version() string
	// SupportedEventTypes lists the event types the plugin emits. The runtime refuses
	// others. Nil means any type (a webhook takes whatever its callers send).
	SupportedEventTypes() []string
	// Run blocks until ctx ends, emitting events as they happen, and returns nil on a clean
	// stop. An error (or a panic) makes the runtime restart it with backoff.
	Run(ctx context.Context, emit Emit) error
}

// Plugin is another name for EventSource, the word plugins.yaml uses.
type Plugin = EventSource

// ErrInvalidEvent wraps every error about an event a plugin built wrongly; a plugin should
// report it to its source as the source's fault (a webhook answers 400).
var ErrInvalidEvent = errors.New("invalid event")

// ErrTooLarge wraps the error for an event larger than the NATS server accepts (its
// max_payload, less the envelope). It is an ErrInvalidEvent: the event, not the store, is at
// fault, no retry will store it, and it never marks the producer unready. A webhook answers
// 413 with the limit.
var ErrTooLarge = fmt.Errorf("%w: too large", ErrInvalidEvent)

// ErrUnavailable wraps every error that means JetStream could not store the event now; a
// plugin should ask its source to retry later (a webhook answers 503).
var ErrUnavailable = errors.New("event store unavailable")
