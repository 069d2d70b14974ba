package cloudevent

import (
	"bytes"
	"encoding/json"
	"errors"
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

// referenceDecode is Decode written with encoding/json: the document read into a map (so the
// last of duplicate attributes counts and names match exactly), then each attribute into its
// field. FuzzDecodeAgainstEncodingJSON holds the one-pass Decode to it.
func referenceDecode(b []byte) (*Event, error) {
	b = bytes.Trim(b, " \t\r\n")
	if len(b) == 0 || b[0] != '{' {
		return nil, errors.New("not a JSON object")
	}
	var attrs map[string]json.RawMessage
	if err := json.Unmarshal(b, &attrs); err != nil {
		return nil, err
	}
	var e Event
	for name, field := range map[string]any{"specversion": &e.SpecVersion, "id": &e.ID, "source": &e.Source,
		"type": &e.Type, "subject": &e.Subject, "datacontenttype": &e.DataContentType, "time": &e.Time} {
		if raw, ok := attrs[name]; ok {
			if err := json.Unmarshal(raw, field); err != nil {
				return nil, err
			}
		}
	}
	if raw, ok := attrs["data"]; ok {
		e.Data = raw
	}
	if err := e.validateAttributes(); err != nil {
		return nil, err
	}
	return &e, nil
}

func FuzzDecodeAgainstEncodingJSON(f *testing.F) {
	for _, s := range []string{
		`{"specversion":"1.0","id":"1","source":"webhook","type":"t","data":{"x":[1,2]}}`,
		`{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2026-01-01T00:00:00.5+01:00","subject":"a/b/c"}`,
		`{"specversion":"1.0","id":"1","id":"2","source":"s","type":"t","data":null}`,
		`{"specversion":"1.0","id":"1","source":"s","type":"t","time":null,"subject":null}`,
		`{"specversion":"1.0","id":5,"source":"s","type":"t"}`,
		`{"specversion":"1.0","id":"\u00e9\ud83d","source":"s","type":"t","datacontenttype":"x","ext":{"a":1}}`,
		`{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2026-13-01T00:00:00Z"}`,
		`{"specversion":"1.0","ID":"1","source":"s","type":"t"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want, wantErr := referenceDecode(b)
		got, err := Decode(b)
		if wantErr != nil {
			require.Error(t, err, "encoding/json refuses %q: %v", b, wantErr)
			return
		}
		require.NoError(t, err, "%q", b)
		require.True(t, want.Time.Equal(got.Time))
		want.Time, got.Time = time.Time{}, time.Time{}
		require.Equal(t, want, got)
	})
}
