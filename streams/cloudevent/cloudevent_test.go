package cloudevent

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	in := &Event{
		ID:              "abc",
		Source:          "webhook",
		Type:            "deploy-failed",
		Subject:         "shop/Deployment/cart",
		Time:            time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC),
		DataContentType: "application/json",
		Data:            json.RawMessage(`{"a":1}`),
	}
	b, err := Encode(in)
	require.NoError(t, err)
	out, err := Decode(b)
	require.NoError(t, err)
	require.Equal(t, SpecVersion, out.SpecVersion)
	require.Equal(t, in.ID, out.ID)
	require.Equal(t, in.Source, out.Source)
	require.Equal(t, in.Type, out.Type)
	require.Equal(t, in.Subject, out.Subject)
	require.True(t, in.Time.Equal(out.Time))
	require.JSONEq(t, `{"a":1}`, string(out.Data))
}

func TestDecodeRejects(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", ``, "not a JSON object"},
		{"array", `[1]`, "not a JSON object"},
		{"no id", `{"specversion":"1.0","source":"s","type":"t"}`, "id: required"},
		{"wrong version", `{"specversion":"0.3","id":"1","source":"s","type":"t"}`, "specversion"},
		{"no type", `{"specversion":"1.0","id":"1","source":"s"}`, "type: required"},
		{"bad json", `{"specversion":`, "cloudevent:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.in))
			require.ErrorContains(t, err, tt.want)
		})
	}
}

// FuzzDecode checks that no input makes the decoder panic, and that whatever it accepts is
// valid and survives a round trip unchanged.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"specversion":"1.0","id":"1","source":"webhook","type":"t","data":{"x":[1,2]}}`))
	f.Add([]byte(`{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"specversion":"1.0","id":"","source":"s","type":"t"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Decode(b)
		if err != nil {
			return
		}
		require.NoError(t, e.Validate())
		again, err := Encode(e)
		require.NoError(t, err)
		e2, err := Decode(again)
		require.NoError(t, err)
		require.Equal(t, e.ID, e2.ID)
		require.Equal(t, e.Type, e2.Type)
	})
}

// FuzzEncodeStrings checks the hand-written encoder against encoding/json: any attribute
// value must decode to what encoding/json would have produced for it.
func FuzzEncodeStrings(f *testing.F) {
	f.Add("id-1", "ns/Pod/a", "deploy-failed")
	f.Add("quote\"back\\slash", "tab\tnewline\n\x00", "ctl\x1f")
	f.Add("bad utf8 \xff\xfe", "emoji 🎉", "\u2028line sep")
	f.Fuzz(func(t *testing.T, id, subject, typ string) {
		if id == "" || typ == "" || len(id) > maxIDLength {
			return
		}
		b, err := Encode(&Event{ID: id, Source: "s", Type: typ, Subject: subject, Data: json.RawMessage(`{"k":[1,"v"]}`)})
		require.NoError(t, err)
		e, err := Decode(b)
		require.NoError(t, err, string(b))
		for _, pair := range [][2]string{{id, e.ID}, {subject, e.Subject}, {typ, e.Type}} {
			want, err := json.Marshal(pair[0])
			require.NoError(t, err)
			var wantStr string
			require.NoError(t, json.Unmarshal(want, &wantStr))
			require.Equal(t, wantStr, pair[1])
		}
		require.JSONEq(t, `{"k":[1,"v"]}`, string(e.Data))
	})
}
