package webhook

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/khook/khook/internal/jsonscan"
	"github.com/khook/khook/producers"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/subject"
)

// httpError is a request the webhook refuses, with the status and the reason it answers.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) *httpError {
	return &httpError{code: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// incoming is one event as found in a request, before ids and types are settled.
type incoming struct {
	ceType, ceID, subject string
	// ceSource is the sender's CloudEvents source, where its id is unique; extensions are
	// the sender's extension attributes. Both are kept on the raw event.
	ceSource   string
	extensions map[string]string
	time       time.Time
	data       json.RawMessage
	bodyType   string // the "type" field of a plain JSON object
}

// decodeRequest turns one request into events. It is pure: headers, query and body in,
// events or a refusal out.
//
// Formats: a plain JSON object; a JSON array of objects (batch endpoints only); CloudEvents
// 1.0 in structured mode (application/cloudevents+json), in batch mode
// (application/cloudevents-batch+json, batch endpoints only) and in binary mode (ce-*
// headers). The event type is the endpoint's fixed eventType, else the CloudEvents type,
// else the body's "type", else ?type=. The id is the Idempotency-Key header (suffixed with
// the position in a batch), else the CloudEvents id, else a hash of source, type and body.
//
// batch reports whether the request was a batch (even of one event), so that the answer
// has the same shape as the request.
func decodeRequest(e Endpoint, source string, header http.Header, query url.Values, body []byte) (events []producers.Event, batch bool, err error) {
	// JSON is UTF-8 (RFC 8259); bytes that are not would be stored as they came and reach
	// prompts and agents as mojibake.
	if !utf8.Valid(body) {
		return nil, false, badRequest("body is not valid UTF-8")
	}
	var items []incoming
	if header.Get("Ce-Specversion") != "" {
		items, err = decodeBinary(header, body)
	} else {
		ct := header.Get("Content-Type")
		mt := "application/json"
		if ct != "" {
			if mt, _, err = mime.ParseMediaType(ct); err != nil {
				return nil, false, &httpError{code: http.StatusUnsupportedMediaType, msg: fmt.Sprintf("content type %q not understood", ct)}
			}
		}
		switch {
		case mt == cloudevent.ContentType:
			items, err = decodeStructured(body)
		case mt == "application/cloudevents-batch+json":
			batch = true
			items, err = decodeStructuredBatch(body)
		case mt == "application/json" || strings.HasSuffix(mt, "+json"):
			items, batch, err = decodePlain(body)
		default:
			return nil, false, &httpError{code: http.StatusUnsupportedMediaType,
				msg: fmt.Sprintf("content type %q not supported: send application/json or CloudEvents", ct)}
		}
	}
	if err != nil {
		return nil, false, err
	}
	if batch && !e.Batch {
		return nil, false, badRequest("this endpoint takes one event per request; batches are not enabled")
	}
	if len(items) > e.MaxBatchSize {
		return nil, false, &httpError{code: http.StatusRequestEntityTooLarge,
			msg: fmt.Sprintf("batch of %d events exceeds maxBatchSize %d", len(items), e.MaxBatchSize)}
	}
	if len(items) == 0 {
		return nil, false, badRequest("no events in the request")
	}

	if e.Source != "" {
		source = e.Source
	}
	key := header.Get("Idempotency-Key")
	events = make([]producers.Event, len(items))
	for i, it := range items {
		typ := firstOf(e.EventType, it.ceType, it.bodyType, query.Get("type"))
		if typ == "" {
			return nil, false, badRequest(`no event type: set "type" in the body, ?type= in the URL, or a CloudEvents type`)
		}
		if err := subject.CheckToken("event type", typ); err != nil {
			return nil, false, badRequest("%v (set eventType on the endpoint to accept other CloudEvents types)", err)
		}
		// An id is unique only where it was made: a CloudEvents id per sender source, an
		// Idempotency-Key per endpoint. The scope keeps equal ids from different places apart.
		id, scope := it.ceID, it.ceSource
		switch {
		case key != "" && batch:
			id, scope = key+"/"+strconv.Itoa(i), "endpoint:"+e.Path
		case key != "":
			id, scope = key, "endpoint:"+e.Path
		case id == "":
			id, scope = contentID(source, typ, it.data), ""
		}
		if len(id) > 256 {
			return nil, false, badRequest("event id longer than 256 bytes")
		}
		events[i] = producers.Event{ID: id, Scope: scope, Type: typ, Subject: it.subject, Time: it.time, Data: it.data,
			Traceparent: header.Get("traceparent"), Extensions: it.extensions}
		if it.ceSource != "" {
			if events[i].Extensions == nil {
				events[i].Extensions = map[string]string{}
			}
			events[i].Extensions[SenderSourceExtension] = it.ceSource
		}
		if e.Source != "" {
			events[i].Source = e.Source
		}
	}
	return events, batch, nil
}

// decodePlain reads a JSON object, or on batch endpoints an array of them. It reads the
// body in one pass (jsonscan) and keeps each event's data as a slice of it: the webhook's
// per-event CPU was mostly encoding/json validating and copying the body, then each element
// again.
func decodePlain(body []byte) ([]incoming, bool, error) {
	trimmed := jsonscan.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' && trimmed[0] != '[' {
		return nil, false, badRequest("body must be a JSON object (or an array of them, on batch endpoints)")
	}
	v, err := jsonscan.Value(trimmed)
	if err != nil {
		return nil, trimmed[0] == '[', badRequest("body is not valid JSON: %v", err)
	}
	if jsonscan.KindOf(v) != jsonscan.Array {
		it, err := plainObject(v)
		if err != nil {
			return nil, false, badRequest("%v", err)
		}
		return []incoming{it}, false, nil
	}
	var items []incoming
	err = jsonscan.Elements(v, func(i int, element []byte) error {
		it, err := plainObject(element)
		if err != nil {
			return badRequest("event %d: %v", i, err)
		}
		items = append(items, it)
		return nil
	})
	if err != nil {
		return nil, true, err
	}
	return items, true, nil
}

// plainObject reads one event of a plain JSON body: v is valid JSON, and must be an object
// whose "type", if present and not null, is a string.
func plainObject(v []byte) (incoming, error) {
	if jsonscan.KindOf(v) != jsonscan.Object {
		return incoming{}, errors.New("body must be a JSON object (or an array of them, on batch endpoints)")
	}
	it := incoming{data: v}
	// The member is matched as encoding/json matches a struct field, without regard to
	// case ("Type" counts), the last of several counting: senders wrote bodies for that.
	var typ []byte
	_ = jsonscan.Members(v, func(name, x []byte) error {
		if bytes.EqualFold(name, []byte("type")) {
			typ = x
		}
		return nil
	})
	if typ != nil && jsonscan.KindOf(typ) != jsonscan.Null {
		s, isString := jsonscan.Unquote(typ)
		if !isString {
			return incoming{}, errors.New(`"type" must be a string`)
		}
		it.bodyType = s
	}
	return it, nil
}

func decodeStructured(body []byte) ([]incoming, error) {
	ce, err := cloudevent.Decode(body)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	return []incoming{fromCloudEvent(ce, body)}, nil
}

func decodeStructuredBatch(body []byte) ([]incoming, error) {
	var raws []json.RawMessage
	if err := json.Unmarshal(body, &raws); err != nil {
		return nil, badRequest("a CloudEvents batch must be a JSON array: %v", err)
	}
	items := make([]incoming, len(raws))
	for i, r := range raws {
		ce, err := cloudevent.Decode(r)
		if err != nil {
			return nil, badRequest("event %d: %v", i, err)
		}
		items[i] = fromCloudEvent(ce, r)
	}
	return items, nil
}

// SenderSourceExtension is the raw event's extension attribute that keeps the sender's
// CloudEvents source; the raw event's own source is khook's source token, which mappings
// match on.
const SenderSourceExtension = "sendersource"

// SenderClusterExtension keeps a sender's own "cluster" attribute. The raw event's cluster
// is khook's (the producer's cluster: setting), which a sender cannot choose.
const SenderClusterExtension = "sendercluster"

func fromCloudEvent(ce *cloudevent.Event, body []byte) incoming {
	it := incoming{ceType: ce.Type, ceID: ce.ID, ceSource: ce.Source, subject: ce.Subject, time: ce.Time, data: ce.Data,
		extensions: cloudevent.DecodeExtensions(body)}
	if ce.Cluster != "" {
		if it.extensions == nil {
			it.extensions = map[string]string{}
		}
		it.extensions[SenderClusterExtension] = ce.Cluster
	}
	return it
}

// decodeBinary reads a CloudEvent in binary mode: attributes in ce-* headers, data in the
// body. khook's events carry JSON, so the data must be JSON.
func decodeBinary(h http.Header, body []byte) ([]incoming, error) {
	if v := h.Get("Ce-Specversion"); v != cloudevent.SpecVersion {
		return nil, badRequest("ce-specversion: must be %q, got %q", cloudevent.SpecVersion, v)
	}
	var missing []string
	for _, k := range []string{"Ce-Id", "Ce-Source", "Ce-Type"} {
		if h.Get(k) == "" {
			missing = append(missing, strings.ToLower(k))
		}
	}
	if len(missing) > 0 {
		return nil, badRequest("missing CloudEvents headers: %s", strings.Join(missing, ", "))
	}
	if ct := h.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || !(mt == "application/json" || strings.HasSuffix(mt, "+json")) {
			return nil, &httpError{code: http.StatusUnsupportedMediaType, msg: fmt.Sprintf("CloudEvents data must be JSON, got %q", ct)}
		}
	}
	it := incoming{ceType: h.Get("Ce-Type"), ceID: h.Get("Ce-Id"), ceSource: h.Get("Ce-Source"), subject: h.Get("Ce-Subject")}
	// Binary mode carries extensions as ce-<name> headers.
	for k, v := range h {
		name := strings.ToLower(strings.TrimPrefix(k, "Ce-"))
		if name == "cluster" {
			name = SenderClusterExtension
		}
		if strings.HasPrefix(k, "Ce-") && len(v) > 0 && !binaryCore[name] && cloudevent.ValidExtensionName(name) {
			if it.extensions == nil {
				it.extensions = map[string]string{}
			}
			it.extensions[name] = v[0]
		}
	}
	if t := h.Get("Ce-Time"); t != "" {
		parsed, err := time.Parse(time.RFC3339Nano, t)
		if err != nil {
			return nil, badRequest("ce-time: not an RFC 3339 time: %q", t)
		}
		it.time = parsed
	}
	if trimmed := bytes.TrimSpace(body); len(trimmed) > 0 {
		if !json.Valid(trimmed) {
			return nil, badRequest("CloudEvents data is not valid JSON")
		}
		it.data = trimmed
	}
	return []incoming{it}, nil
}

var binaryCore = map[string]bool{"specversion": true, "id": true, "source": true, "type": true, "subject": true, "time": true}

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

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
