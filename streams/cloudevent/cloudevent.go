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
	"maps"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/khook/khook/internal/jsonscan"
)

// SpecVersion is the only CloudEvents version khook reads and writes.
const SpecVersion = "1.0"

// ContentType is the media type of a structured-mode CloudEvent.
const ContentType = "application/cloudevents+json"

// Event is a CloudEvents 1.0 event. Data holds the JSON payload as-is so that re-encoding an
// event never changes its bytes.
type Event struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Subject         string    `json:"subject,omitempty"`
	Time            time.Time `json:"time,omitzero"`
	DataContentType string    `json:"datacontenttype,omitempty"`
	// Cluster is the Kubernetes cluster (and the edge of the pipeline) the event came from,
	// an extension attribute khook's producers stamp when `cluster` is set (ClusterName);
	// empty in a single-cluster install. Encode writes it as the "cluster" attribute.
	Cluster string          `json:"cluster,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
	// Extensions are extension attributes with string values, written after the core
	// attributes. Decode leaves them out (the pipeline's stages do not read them);
	// DecodeExtensions reads them.
	Extensions map[string]string `json:"-"`
}

// maxIDLength bounds ids so that they stay usable as Nats-Msg-Id headers and KV keys.
const maxIDLength = 256

// Validate reports every required attribute that is missing or malformed, and data that is
// not valid JSON.
//
// A cluster is checked here, when khook writes an event, and not by Decode: a sender's
// "cluster" attribute is the sender's to choose (the webhook keeps it as "sendercluster"),
// and the mapper dead-letters a raw event whose cluster is not a cluster name.
func (e *Event) Validate() error {
	err := e.validateAttributes()
	if e.Cluster != "" {
		if cerr := CheckCluster(e.Cluster); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cluster: %w", cerr))
		}
	}
	if len(e.Data) > 0 && !jsonscan.Valid(e.Data) {
		err = errors.Join(err, errors.New("data: not valid JSON"))
	}
	return err
}

func (e *Event) validateAttributes() error {
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
	for name := range e.Extensions {
		if !ValidExtensionName(name) {
			errs = append(errs, fmt.Errorf("extension %q: names are 1 to 20 lowercase letters and digits, and not a core attribute", name))
		}
	}
	return errors.Join(errs...)
}

// Encode validates e and returns its structured-mode JSON encoding. Data is written as
// given (after checking it is valid JSON), so an event's payload bytes never change on the
// way through the pipeline and are not re-compacted at every stage.
func Encode(e *Event) ([]byte, error) {
	if e.SpecVersion == "" {
		e.SpecVersion = SpecVersion
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("cloudevent: %w", err)
	}
	b := make([]byte, 0, 160+len(e.ID)+len(e.Subject)+len(e.Data))
	b = append(b, `{"specversion":`...)
	b = appendString(b, e.SpecVersion)
	b = append(b, `,"id":`...)
	b = appendString(b, e.ID)
	b = append(b, `,"source":`...)
	b = appendString(b, e.Source)
	b = append(b, `,"type":`...)
	b = appendString(b, e.Type)
	if e.Subject != "" {
		b = append(b, `,"subject":`...)
		b = appendString(b, e.Subject)
	}
	if !e.Time.IsZero() {
		b = append(b, `,"time":"`...)
		b = e.Time.AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	if e.DataContentType != "" {
		b = append(b, `,"datacontenttype":`...)
		b = appendString(b, e.DataContentType)
	}
	if e.Cluster != "" {
		b = append(b, `,"cluster":`...)
		b = appendString(b, e.Cluster)
	}
	for _, name := range slices.Sorted(maps.Keys(e.Extensions)) {
		b = append(b, ',')
		b = appendString(b, name)
		b = append(b, ':')
		b = appendString(b, e.Extensions[name])
	}
	if len(e.Data) > 0 {
		b = append(b, `,"data":`...)
		b = append(b, bytes.TrimSpace(e.Data)...)
	}
	return append(b, '}'), nil
}

// AppendString appends s as a JSON string, for the hand-written encoders of khook's own
// formats. Control characters are escaped, and invalid UTF-8 becomes U+FFFD, as
// encoding/json does; HTML characters are not escaped, which JSON does not require.
func AppendString(b []byte, s string) []byte { return appendString(b, s) }

func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// Decode parses a structured-mode CloudEvent and validates it. Unknown attributes
// (extensions) are accepted and ignored; a document that is not a JSON object is an error.
//
// It reads the document in one pass (jsonscan) and keeps data as a slice of b, not a copy:
// every stage reads every event's envelope, and decoding it with encoding/json (validate,
// decode, copy data) was a fifth of the mapper's CPU. Attribute names are matched exactly,
// as CloudEvents spells them (lowercase); encoding/json also matched "ID" or "Type". Of
// duplicate attributes, the last counts, as in a JSON object read into a map.
func Decode(b []byte) (*Event, error) {
	b = jsonscan.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return nil, errors.New("cloudevent: not a JSON object")
	}
	var e Event
	err := jsonscan.Members(b, func(name, v []byte) error {
		var field *string
		switch string(name) {
		case "specversion":
			field = &e.SpecVersion
		case "id":
			field = &e.ID
		case "source":
			field = &e.Source
		case "type":
			field = &e.Type
		case "subject":
			field = &e.Subject
		case "datacontenttype":
			field = &e.DataContentType
		case "cluster":
			if jsonscan.KindOf(v) != jsonscan.String {
				return nil // a sender's cluster of another type: not khook's, and not a name
			}
			field = &e.Cluster
		case "time":
			e.Time = time.Time{}
			if err := e.Time.UnmarshalJSON(v); err != nil {
				return fmt.Errorf("time: %w", err)
			}
			return nil
		case "data":
			e.Data = v
			return nil
		default:
			return nil
		}
		return setString(field, string(name), v)
	})
	if err != nil {
		return nil, fmt.Errorf("cloudevent: %w", err)
	}
	if err := e.validateAttributes(); err != nil {
		return nil, fmt.Errorf("cloudevent: %w", err)
	}
	return &e, nil
}

// SetString sets *field to the JSON string v (as jsonscan.Members gives it), for the
// hand-written decoders of khook's own formats: null leaves it empty, any other type is an
// error naming the attribute.
func SetString(field *string, name string, v []byte) error { return setString(field, name, v) }

// setString sets *field to the JSON string v, as encoding/json would: null leaves it empty,
// any other type is an error naming the attribute.
func setString(field *string, name string, v []byte) error {
	switch jsonscan.KindOf(v) {
	case jsonscan.String:
		*field, _ = jsonscan.Unquote(v)
	case jsonscan.Null:
		*field = ""
	default:
		return fmt.Errorf("%s: must be a string, got %s", name, jsonscan.KindOf(v))
	}
	return nil
}

// core lists the attributes Event holds itself; any other attribute is an extension.
var core = map[string]bool{"specversion": true, "id": true, "source": true, "type": true, "subject": true,
	"time": true, "datacontenttype": true, "dataschema": true, "data": true, "data_base64": true,
	// Not core in CloudEvents, but an attribute Event holds itself, which only khook's
	// producers set: a sender's "cluster" is not passed through as an extension.
	"cluster": true}

// ValidExtensionName reports whether name may name an extension attribute: 1 to 20
// lowercase letters and digits, and not a core attribute.
func ValidExtensionName(name string) bool {
	if name == "" || len(name) > 20 || core[name] {
		return false
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// DecodeExtensions returns the extension attributes of a structured-mode CloudEvent whose
// values are strings, numbers or booleans (as their JSON text, strings unquoted). Others,
// and names that are not valid extension names, are left out.
func DecodeExtensions(b []byte) map[string]string {
	var attrs map[string]json.RawMessage
	if json.Unmarshal(b, &attrs) != nil {
		return nil
	}
	var out map[string]string
	for name, raw := range attrs {
		if !ValidExtensionName(name) || len(raw) == 0 {
			continue
		}
		var v string
		switch raw[0] {
		case '"':
			if json.Unmarshal(raw, &v) != nil {
				continue
			}
		case '{', '[', 'n':
			continue
		default:
			v = string(raw)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[name] = v
	}
	return out
}
