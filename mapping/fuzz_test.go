package mapping

import (
	"encoding/json"
	"os"
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
