// Package mapping turns raw events from any plugin into khook's normalized events, using the
// rules of event-mappings.yaml.
//
// The package is pure: rules and a raw event in, a normalized event and an outcome out. It
// knows nothing of NATS, metrics or logging, which makes it the place for golden files and
// fuzz tests.
package mapping

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/khook/khook/streams/cloudevent"
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

// RawOf is the raw event a stored raw message holds. source is the <source> token of the
// message's subject, which NATS permissions tie to its publisher, so it wins over the
// envelope's own source attribute (empty: no subject, as for an event read from a file);
// msgID is the message's Nats-Msg-Id. The raw event's ID is the event's key, its id scoped
// by its source (cloudevent.KeyOf), so that every id derived from it downstream is scoped.
func RawOf(source, msgID string, ce *cloudevent.Event) Raw {
	if source == "" {
		source = ce.Source
	}
	return Raw{ID: cloudevent.KeyOf(source, msgID, ce.ID), Source: source, Type: ce.Type, Subject: ce.Subject,
		Time: ce.Time, Data: ce.Data}
}

// Encode is the body of a normalized event's message in KHOOK_EVENTS: a CloudEvent whose
// attributes repeat the event's id, source, type, time and namespace/kind/name subject, with
// the event itself as its JSON data. DecodeEvent reads it back; every reader of the events
// stream (the dispatcher, replay, the operations commands) goes through it.
func (ev Event) Encode() ([]byte, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	var subject string
	if ev.Namespace != "" || ev.Resource.Name != "" {
		subject = ev.Namespace + "/" + ev.Resource.Kind + "/" + ev.Resource.Name
	}
	return cloudevent.Encode(&cloudevent.Event{
		ID: ev.ID, Source: ev.Source, Type: ev.Type, Time: ev.Time,
		Subject:         subject,
		DataContentType: "application/json",
		Data:            data,
	})
}

// DecodeEvent reads a normalized event from a KHOOK_EVENTS message body (Encode's inverse).
func DecodeEvent(body []byte) (Event, error) {
	var ev Event
	ce, err := cloudevent.Decode(body)
	if err != nil {
		return ev, err
	}
	if err := json.Unmarshal(ce.Data, &ev); err != nil {
		return ev, fmt.Errorf("normalized event: %w", err)
	}
	return ev, nil
}
