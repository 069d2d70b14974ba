package mapping

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams/cloudevent"
)

// The normalized event's message body round-trips, and its envelope repeats what routing
// and tracing read without decoding the data.
func TestEventEncodesAsACloudEvent(t *testing.T) {
	ev := Event{ID: "webhook/1", Source: "webhook", SourceType: "deploy-failed", Type: "deploy-failed", Severity: "error",
		Namespace: "shop", Resource: Resource{Kind: "Deployment", Name: "cart"}, Message: "rollout stuck",
		Time: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC), Data: []byte(`{"a":1}`)}
	body, err := ev.Encode()
	require.NoError(t, err)
	ce, err := cloudevent.Decode(body)
	require.NoError(t, err)
	require.Equal(t, "webhook/1", ce.ID)
	require.Equal(t, "deploy-failed", ce.Type)
	require.Equal(t, "shop/Deployment/cart", ce.Subject)
	back, err := DecodeEvent(body)
	require.NoError(t, err)
	require.Equal(t, ev, back)

	_, err = DecodeEvent([]byte(`{"specversion":"1.0","id":"x","source":"s","type":"t","data":"not an event"}`))
	require.ErrorContains(t, err, "normalized event")
	_, err = DecodeEvent([]byte(`not json`))
	require.Error(t, err)
}

// encodeWithEncodingJSON is how Encode wrote events before it was written by hand (and how
// every event already stored in KHOOK_EVENTS by an earlier version is written).
func encodeWithEncodingJSON(ev Event) ([]byte, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	return cloudevent.Encode(&cloudevent.Event{ID: ev.ID, Source: ev.Source, Type: ev.Type, Time: ev.Time,
		DataContentType: "application/json", Data: data})
}

// FuzzEventEncoding holds the hand-written encoder and decoder to encoding/json: an event
// survives Encode and DecodeEvent unchanged, an event encoding/json wrote decodes to the
// same event, and any data member reads as encoding/json reads it.
func FuzzEventEncoding(f *testing.F) {
	f.Add("id-1", "webhook", "deploy-failed", "shop", "Pod", "api-0", "BackOff", "crash <&> \u2028 \xff", "team", "a\"b", int64(1764000000123456789), []byte(`{"a":[1,2.50,"x"]}`))
	f.Add("", "", "", "", "", "", "", "", "", "", int64(0), []byte(nil))
	f.Add("x", "s", "t", "", "", "n", "", "", "", "", int64(-62135596800), []byte(` null `))
	f.Fuzz(func(t *testing.T, id, source, typ, ns, kind, name, reason, message, tagKey, tagValue string, nanos int64, data []byte) {
		if len(data) > 0 && !json.Valid(data) {
			return
		}
		ev := Event{ID: id, Source: source, SourceType: typ, Type: typ, Severity: "error", Namespace: ns,
			Resource: Resource{Kind: kind, Name: name}, Reason: reason, Message: message, Time: time.Unix(0, nanos).UTC(), Data: data}
		if tagKey != "" {
			ev.Tags = map[string]string{tagKey: tagValue, "fixed": "1"}
		}
		old, oldErr := encodeWithEncodingJSON(ev)
		body, err := ev.Encode()
		if oldErr != nil || err != nil {
			// Both refuse the same events (an empty id or type, a year past 9999).
			require.Equal(t, oldErr != nil, err != nil, "old: %v, new: %v", oldErr, err)
			return
		}
		for _, b := range [][]byte{body, old} {
			got, err := DecodeEvent(b)
			require.NoError(t, err)
			var want Event
			ce, err := cloudevent.Decode(b)
			require.NoError(t, err)
			require.NoError(t, json.Unmarshal(ce.Data, &want))
			require.True(t, want.Time.Equal(got.Time))
			want.Time, got.Time = time.Time{}, time.Time{}
			if len(want.Data) > 0 {
				require.JSONEq(t, string(want.Data), string(got.Data))
			}
			want.Data, got.Data = nil, nil
			require.Equal(t, want, got)
		}
		got, err := DecodeEvent(body)
		require.NoError(t, err)
		require.Equal(t, string(bytes.TrimSpace(data)), string(bytes.TrimSpace(got.Data)), "the payload's bytes travel unchanged")
	})
}

// FuzzDecodeEventMembers decodes arbitrary normalized-event members: whatever encoding/json
// reads from them member by member, DecodeEvent reads too, and it refuses what it refuses.
func FuzzDecodeEventMembers(f *testing.F) {
	f.Add([]byte(`{"id":"1","tags":{"a":"b","a":"c"},"resource":{"kind":"Pod"},"resource":{"name":"x"},"time":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"id":"1","tags":{"a":null},"resource":null,"data":[1],"severity":null}`))
	f.Add([]byte(`{"id":"1","tags":{"a":1}}`))
	f.Add([]byte(`{"id":"1","resource":{"kind":5}}`))
	f.Add([]byte(`{"id":"1","tags":[]}`))
	f.Fuzz(func(t *testing.T, inner []byte) {
		body, err := cloudevent.Encode(&cloudevent.Event{ID: "e", Source: "s", Type: "t", Data: inner})
		if err != nil {
			return
		}
		got, gotErr := DecodeEvent(body)
		var members map[string]json.RawMessage
		if json.Unmarshal(inner, &members) != nil {
			require.Error(t, gotErr)
			return
		}
		var want Event
		fields := map[string]any{"id": &want.ID, "source": &want.Source, "sourceType": &want.SourceType, "type": &want.Type,
			"severity": &want.Severity, "namespace": &want.Namespace, "reason": &want.Reason, "message": &want.Message,
			"tags": &want.Tags, "resource": &want.Resource, "time": &want.Time, "data": &want.Data}
		var wantErr error
		for name, raw := range members {
			if field, ok := fields[name]; ok {
				wantErr = errors.Join(wantErr, json.Unmarshal(raw, field))
			}
		}
		if wantErr != nil {
			require.Error(t, gotErr, "encoding/json refuses %s: %v", inner, wantErr)
			return
		}
		require.NoError(t, gotErr, "%s", inner)
		require.True(t, want.Time.Equal(got.Time))
		want.Time, got.Time = time.Time{}, time.Time{}
		require.Equal(t, want, got)
	})
}
