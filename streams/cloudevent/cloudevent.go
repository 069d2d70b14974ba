// Package cloudevent is khook's wire envelope: CloudEvents 1.0 in structured JSON mode.
//
// Every message on a khook stream is one Event encoded by Encode. The package has no NATS
// dependency so that pure code (mapping, tests, fuzzers) can use it.
package cloudevent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// SpecVersion is the only CloudEvents version khook reads and writes.
const SpecVersion = "1.0"

// ContentType is the media type of a structured-mode CloudEvent.
const ContentType = "application/cloudevents+json"

// Event is a CloudEvents 1.0 event. Data holds the JSON payload as-is so that re-encoding an
// event never changes its bytes.
type Event struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject,omitempty"`
	Time            time.Time       `json:"time,omitzero"`
	DataContentType string          `json:"datacontenttype,omitempty"`
	Data            json.RawMessage `json:"data,omitempty"`
}

// maxIDLength bounds ids so that they stay usable as Nats-Msg-Id headers and KV keys.
const maxIDLength = 256

// Validate reports every required attribute that is missing or malformed.
func (e *Event) Validate() error {
	var errs []error
	if e.SpecVersion != SpecVersion {
		errs = append(errs, fmt.Errorf("specversion: must be %q, got %q", SpecVersion, e.SpecVersion))
	}
	if e.ID == "" {
		errs = append(errs, errors.New("id: required"))
	} else if len(e.ID) > maxIDLength {
		errs = append(errs, fmt.Errorf("id: at most %d bytes, got %d", maxIDLength, len(e.ID)))
	}
	if e.Source == "" {
		errs = append(errs, errors.New("source: required"))
	}
	if e.Type == "" {
		errs = append(errs, errors.New("type: required"))
	}
	if len(e.Data) > 0 && !json.Valid(e.Data) {
		errs = append(errs, errors.New("data: not valid JSON"))
	}
	return errors.Join(errs...)
}

// Encode validates e and returns its structured-mode JSON encoding.
func Encode(e *Event) ([]byte, error) {
	if e.SpecVersion == "" {
		e.SpecVersion = SpecVersion
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("cloudevent: %w", err)
	}
	return json.Marshal(e)
}

// Decode parses a structured-mode CloudEvent and validates it. Unknown attributes
// (extensions) are accepted and ignored; a document that is not a JSON object is an error.
func Decode(b []byte) (*Event, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return nil, errors.New("cloudevent: not a JSON object")
	}
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("cloudevent: %w", err)
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("cloudevent: %w", err)
	}
	return &e, nil
}
