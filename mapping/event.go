// Package mapping turns raw events from any plugin into khook's normalized events, using the
// rules of event-mappings.yaml.
//
// The package is pure: rules and a raw event in, a normalized event and an outcome out. It
// knows nothing of NATS, metrics or logging, which makes it the place for golden files and
// fuzz tests.
package mapping

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/khook/khook/internal/jsonscan"
	"github.com/khook/khook/streams/cloudevent"
)

// Raw is one event as a producer published it.
type Raw struct {
	ID      string
	Source  string // the plugin name, e.g. "webhook"
	Cluster string // the cluster it came from (cloudevent.Event.Cluster), empty in a single-cluster install
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
	Cluster    string            `json:"cluster,omitempty"`
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
	return Raw{ID: cloudevent.KeyOf(source, ce.Cluster, msgID, ce.ID), Source: source, Cluster: ce.Cluster, Type: ce.Type,
		Subject: ce.Subject, Time: ce.Time, Data: ce.Data}
}

// Encode is the body of a normalized event's message in KHOOK_EVENTS: a CloudEvent whose
// attributes repeat the event's id, source, type, time and namespace/kind/name subject, with
// the event itself as its JSON data. DecodeEvent reads it back; every reader of the events
// stream (the dispatcher, replay, the operations commands) goes through it.
//
// The event's JSON is written by hand, in the order and with the omissions of its struct
// tags, and its data is written as it came (not re-compacted): the mapper encodes every
// event, and encoding/json's reflection and compaction of the payload was a fifth of its
// CPU. The envelope's encoder validates the result, the payload with it, in one pass.
func (ev Event) Encode() ([]byte, error) {
	// Data is written as it is, so it must be one JSON value: anything else (say, `{},"id":
	// "other"`) would add members to the event itself.
	if len(ev.Data) > 0 && !jsonscan.Valid(ev.Data) {
		return nil, errors.New("normalized event: data is not one valid JSON value")
	}
	b := make([]byte, 0, 256+len(ev.Data)+len(ev.Message)+len(ev.ID))
	b = append(b, `{"id":`...)
	b = cloudevent.AppendString(b, ev.ID)
	b = append(b, `,"source":`...)
	b = cloudevent.AppendString(b, ev.Source)
	b = appendOptional(b, `,"cluster":`, ev.Cluster)
	b = append(b, `,"sourceType":`...)
	b = cloudevent.AppendString(b, ev.SourceType)
	b = append(b, `,"type":`...)
	b = cloudevent.AppendString(b, ev.Type)
	b = append(b, `,"severity":`...)
	b = cloudevent.AppendString(b, ev.Severity)
	if len(ev.Tags) > 0 {
		b = append(b, `,"tags":{`...)
		for i, k := range slices.Sorted(maps.Keys(ev.Tags)) {
			if i > 0 {
				b = append(b, ',')
			}
			b = cloudevent.AppendString(b, k)
			b = append(b, ':')
			b = cloudevent.AppendString(b, ev.Tags[k])
		}
		b = append(b, '}')
	}
	b = appendOptional(b, `,"namespace":`, ev.Namespace)
	b = append(b, `,"resource":{`...)
	if ev.Resource.Kind != "" {
		b = append(b, `"kind":`...)
		b = cloudevent.AppendString(b, ev.Resource.Kind)
	}
	if ev.Resource.Name != "" {
		if ev.Resource.Kind != "" {
			b = append(b, ',')
		}
		b = append(b, `"name":`...)
		b = cloudevent.AppendString(b, ev.Resource.Name)
	}
	b = append(b, '}')
	b = appendOptional(b, `,"reason":`, ev.Reason)
	b = appendOptional(b, `,"message":`, ev.Message)
	b = append(b, `,"time":"`...)
	b, err := ev.Time.AppendText(b)
	if err != nil {
		return nil, fmt.Errorf("normalized event: time: %w", err)
	}
	b = append(b, '"')
	if len(ev.Data) > 0 {
		b = append(b, `,"data":`...)
		b = append(b, ev.Data...)
	}
	b = append(b, '}')
	var subject string
	if ev.Namespace != "" || ev.Resource.Name != "" {
		subject = ev.Namespace + "/" + ev.Resource.Kind + "/" + ev.Resource.Name
	}
	return cloudevent.Encode(&cloudevent.Event{
		ID: ev.ID, Source: ev.Source, Type: ev.Type, Time: ev.Time, Cluster: ev.Cluster,
		Subject:         subject,
		DataContentType: "application/json",
		Data:            b,
	})
}

func appendOptional(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	return cloudevent.AppendString(append(b, key...), v)
}

// DecodeEvent reads a normalized event from a KHOOK_EVENTS message body (Encode's inverse).
// Like the envelope, it is read in one pass, with exact member names, the last of duplicates
// counting, and the payload kept as a slice of body.
func DecodeEvent(body []byte) (Event, error) {
	var ev Event
	ce, err := cloudevent.Decode(body)
	if err != nil {
		return ev, err
	}
	if jsonscan.KindOf(jsonscan.TrimSpace(ce.Data)) == jsonscan.Null {
		return ev, nil // an event of no members, as encoding/json reads null
	}
	err = jsonscan.Members(ce.Data, func(name, v []byte) error {
		var field *string
		switch string(name) {
		case "id":
			field = &ev.ID
		case "source":
			field = &ev.Source
		case "cluster":
			field = &ev.Cluster
		case "sourceType":
			field = &ev.SourceType
		case "type":
			field = &ev.Type
		case "severity":
			field = &ev.Severity
		case "namespace":
			field = &ev.Namespace
		case "reason":
			field = &ev.Reason
		case "message":
			field = &ev.Message
		case "tags":
			return decodeTags(&ev.Tags, v)
		case "resource":
			return decodeResource(&ev.Resource, v)
		case "time":
			ev.Time = time.Time{}
			if err := ev.Time.UnmarshalJSON(v); err != nil {
				return fmt.Errorf("time: %w", err)
			}
			return nil
		case "data":
			ev.Data = v
			return nil
		default:
			return nil
		}
		return cloudevent.SetString(field, string(name), v)
	})
	if err != nil {
		return Event{}, fmt.Errorf("normalized event: %w", err)
	}
	return ev, nil
}

func decodeTags(tags *map[string]string, v []byte) error {
	*tags = nil
	switch jsonscan.KindOf(v) {
	case jsonscan.Null:
		return nil
	case jsonscan.Object:
	default:
		return fmt.Errorf("tags: must be an object, got %s", jsonscan.KindOf(v))
	}
	m := map[string]string{}
	err := jsonscan.Members(v, func(name, x []byte) error {
		var s string
		if err := cloudevent.SetString(&s, "tags."+string(name), x); err != nil {
			return err
		}
		m[string(name)] = s
		return nil
	})
	*tags = m
	return err
}

func decodeResource(r *Resource, v []byte) error {
	*r = Resource{}
	switch jsonscan.KindOf(v) {
	case jsonscan.Null:
		return nil
	case jsonscan.Object:
	default:
		return fmt.Errorf("resource: must be an object, got %s", jsonscan.KindOf(v))
	}
	return jsonscan.Members(v, func(name, x []byte) error {
		switch string(name) {
		case "kind":
			return cloudevent.SetString(&r.Kind, "resource.kind", x)
		case "name":
			return cloudevent.SetString(&r.Name, "resource.name", x)
		}
		return nil
	})
}
