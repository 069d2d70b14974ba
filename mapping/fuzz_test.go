package mapping

import (
	"bytes"
	"encoding/json"
	"os"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzParse feeds arbitrary files to the loader: it must never panic, and whatever it
// accepts must be usable for mapping.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("testdata/event-mappings.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(sample))
	f.Add([]byte("unmapped: deadletter\nmappings:\n  - {eventSource: \"*\", eventType: \"*\"}\n"))
	f.Add([]byte("mappings:\n  - eventSource: a\n    eventType: b\n    fields: {namespace: /x/~1y/0}\n"))
	f.Add([]byte("mappings: &a [*a]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rules, err := Parse(b)
		if err != nil {
			return
		}
		require.NotEmpty(t, rules.Hash())
		Map(rules, Raw{ID: "1", Source: "webhook", Type: "deploy-failed", Data: json.RawMessage(`{"labels":{"namespace":"x"}}`)})
	})
}

// FuzzMap evaluates fixed rules, including field paths, on arbitrary raw events: no panic,
// and a produced event always keeps the raw id and data.
func FuzzMap(f *testing.F) {
	b, err := os.ReadFile("testdata/event-mappings.yaml")
	require.NoError(f, err)
	rules, err := Parse(b)
	require.NoError(f, err)
	f.Add("alertmanager", "firing", "", []byte(`{"labels":{"namespace":"p","pod":"x","kind":"Pod"},"annotations":{"summary":"s"}}`))
	f.Add("github", "workflow-failed", "a/b/c", []byte(`{"workflow_run":{"name":7,"conclusion":[1,{"a":null}]}}`))
	f.Add("webhook", "deploy-failed", "ns/Kind/name/extra", []byte(`{"resource":{"kind":1},"metadata":null}`))
	f.Add("kubernetes", "pod-restart", "", []byte(`"just a string"`))
	f.Fuzz(func(t *testing.T, source, typ, subject string, data []byte) {
		if source == "" || typ == "" {
			// A raw event comes from a valid CloudEvent, whose source and type are required.
			return
		}
		raw := Raw{ID: "id", Source: source, Type: typ, Subject: subject, Data: data}
		ev, outcome := Map(rules, raw)
		if !outcome.HasEvent() {
			return
		}
		require.Equal(t, "id", ev.ID)
		require.Equal(t, string(data), string(ev.Data))
		require.NotEmpty(t, ev.Type)
		require.Contains(t, Severities, ev.Severity)
	})
}

// referenceExtract is extract written with encoding/json: the data decoded into maps, the
// paths walked through them, the well-known fields read one by one where they are strings.
// FuzzExtractAgainstEncodingJSON holds the one-pass extract to it.
func referenceExtract(data []byte, paths []field) fields {
	var f fields
	var doc any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if dec.Decode(&doc) != nil || dec.InputOffset() != int64(len(bytes.TrimRight(data, " \t\r\n"))) {
		return f
	}
	for _, p := range paths {
		v, ok := doc, true
		for _, tok := range p.tokens {
			switch node := v.(type) {
			case map[string]any:
				v, ok = node[tok]
			case []any:
				i, err := strconv.Atoi(tok)
				ok = err == nil && i >= 0 && i < len(node)
				if ok {
					v = node[i]
				}
			default:
				ok = false
			}
			if !ok {
				break
			}
		}
		if !ok {
			continue
		}
		switch x := v.(type) {
		case nil:
			p.set(&f, "")
		case string:
			p.set(&f, x)
		case bool:
			p.set(&f, strconv.FormatBool(x))
		case json.Number:
			if n, err := strconv.ParseFloat(string(x), 64); err == nil {
				p.set(&f, strconv.FormatFloat(n, 'f', -1, 64))
			} else {
				p.set(&f, string(x))
			}
		default:
			var plain any
			raw, _ := json.Marshal(x)
			_ = json.Unmarshal(raw, &plain)
			b, _ := json.Marshal(plain)
			p.set(&f, string(b))
		}
	}
	top, _ := doc.(map[string]any)
	s := func(m map[string]any, k string) string { v, _ := m[k].(string); return v }
	res, _ := top["resource"].(map[string]any)
	meta, _ := top["metadata"].(map[string]any)
	f.namespace = first(f.namespace, s(top, "namespace"), s(res, "namespace"), s(meta, "namespace"))
	f.kind = first(f.kind, s(top, "resourceKind"), s(top, "kind"), s(res, "kind"))
	f.name = first(f.name, s(top, "resourceName"), s(top, "name"), s(res, "name"), s(meta, "name"))
	f.reason = first(f.reason, s(top, "reason"))
	f.message = first(f.message, s(top, "message"))
	return f
}

func FuzzExtractAgainstEncodingJSON(f *testing.F) {
	f.Add([]byte(`{"labels":{"namespace":"p","pod":"x","kind":"Pod"},"annotations":{"summary":"s"},"steps":[1,{"a":null}]}`))
	f.Add([]byte(`{"namespace":"a","namespace":"b","resource":{"kind":1,"name":"n"},"metadata":{"namespace":"m"}}`))
	f.Add([]byte(`{"resourceName":"r","name":"n","kind":"k","message":"\u00e9","reason":null,"labels":{"pod":1e400}}`))
	f.Add([]byte(`{"labels":{"pod":{"b":[1,2.50],"a":"<&>"}},"steps":[{"name":"x"},{"name":true}]}`))
	f.Add([]byte(`["namespace"]`))
	paths, err := compileFields(Fields{Namespace: "labels.namespace", ResourceName: "labels.pod", ResourceKind: "/steps/1/name",
		Reason: "steps.0", Message: "annotations.summary"})
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return // the envelope's decoder has validated data before extract sees it
		}
		require.Equal(t, referenceExtract(data, nil), extract(data, nil), "%s", data)
		require.Equal(t, referenceExtract(data, paths), extract(data, paths), "%s", data)
	})
}
