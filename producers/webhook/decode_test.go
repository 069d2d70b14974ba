package webhook

import (
	"errors"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams/subject"
)

// FuzzDecodeRequest feeds arbitrary bodies, content types, CloudEvents headers and queries
// to the request decoder. It must never panic; every outcome is events (a 202 once stored)
// or a refusal with a 4xx status; and every event it accepts is publishable.
func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"type":"deploy-failed","namespace":"shop"}`), "application/json", "", "", "", false)
	f.Add([]byte(`[{"type":"a"},{"type":"b"}]`), "application/json", "", "", "", true)
	f.Add([]byte(`{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"x":1}}`), "application/cloudevents+json", "", "", "", false)
	f.Add([]byte(`[{"specversion":"1.0","id":"1","source":"s","type":"t"}]`), "application/cloudevents-batch+json", "", "", "", true)
	f.Add([]byte(`{"x":1}`), "application/json; charset=utf-8", "1.0", "lint-failed", "t", false)
	f.Add([]byte(`{"x":1}`), "text/plain", "", "", "q-type", false)
	f.Add([]byte("\x00\xff"), ";;;", "0.3", "Bad Type", "", true)
	f.Fuzz(func(t *testing.T, body []byte, contentType, ceVersion, ceType, queryType string, batch bool) {
		h := http.Header{}
		if contentType != "" {
			h.Set("Content-Type", contentType)
		}
		if ceVersion != "" {
			h.Set("Ce-Specversion", ceVersion)
			h.Set("Ce-Id", "id-1")
			h.Set("Ce-Source", "src")
			h.Set("Ce-Type", ceType)
		}
		e := DefaultConfig().Endpoint
		e.Batch = batch
		events, _, err := decodeRequest(e, Name, h, url.Values{"type": {queryType}}, body)
		if err != nil {
			var he *httpError
			require.True(t, errors.As(err, &he), "refusals carry a status: %v", err)
			require.True(t, he.code >= 400 && he.code < 500, "refusal status %d", he.code)
			require.NotEmpty(t, he.msg)
			return
		}
		require.NotEmpty(t, events)
		for _, ev := range events {
			require.NoError(t, subject.CheckToken("type", ev.Type))
			require.NotEmpty(t, ev.ID)
			require.LessOrEqual(t, len(ev.ID), 256)
		}
	})
}

func TestDecodeRequestTypePrecedence(t *testing.T) {
	e := DefaultConfig().Endpoint
	h := http.Header{"Content-Type": {"application/json"}}
	evs, _, err := decodeRequest(e, Name, h, url.Values{"type": {"from-query"}}, []byte(`{"type":"from-body"}`))
	require.NoError(t, err)
	require.Equal(t, "from-body", evs[0].Type, "the body's type wins over the query")
	evs, _, err = decodeRequest(e, Name, h, url.Values{"type": {"from-query"}}, []byte(`{}`))
	require.NoError(t, err)
	require.Equal(t, "from-query", evs[0].Type)
	e.EventType = "fixed"
	evs, _, err = decodeRequest(e, Name, h, url.Values{"type": {"from-query"}}, []byte(`{"type":"from-body"}`))
	require.NoError(t, err)
	require.Equal(t, "fixed", evs[0].Type, "the endpoint's fixed type wins")
}
