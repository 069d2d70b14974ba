// Package mapping turns raw events from any plugin into khook's normalized events, using the
// rules of event-mappings.yaml.
//
// The package is pure: rules and a raw event in, a normalized event and an outcome out. It
// knows nothing of NATS, metrics or logging, which makes it the place for golden files and
// fuzz tests.
package mapping

import (
	"encoding/json"
	"time"
)

// Raw is one event as a producer published it.
type Raw struct {
	ID      string
	Source  string // the plugin name, e.g. "webhook"
	Type    string // the plugin's event type, e.g. "deploy-failed"
	Subject string // the CloudEvents subject, "namespace/kind/name" when the producer knows it
	Time    time.Time
	Data    json.RawMessage
}

// Resource names the object an event is about.
type Resource struct {
	Kind string `json:"kind,omitempty"`
	Name string `json:"name,omitempty"`
}

// Event is a normalized event: what hooks match on and what prompts are expanded from.
type Event struct {
	ID         string            `json:"id"`
	Source     string            `json:"source"`
	SourceType string            `json:"sourceType"`
	Type       string            `json:"type"` // the internal type hooks match on
	Severity   string            `json:"severity"`
	Tags       map[string]string `json:"tags,omitempty"`
	Namespace  string            `json:"namespace,omitempty"`
	Resource   Resource          `json:"resource"`
	Reason     string            `json:"reason,omitempty"`
	Message    string            `json:"message,omitempty"`
	Time       time.Time         `json:"time"`
	Data       json.RawMessage   `json:"data,omitempty"`
}

// Severities, from least to most severe.
var Severities = []string{"info", "warning", "error", "critical"}
