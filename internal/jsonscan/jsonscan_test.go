package jsonscan

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var seeds = []string{
	`{}`, `[]`, `null`, `true`, `false`, `0`, `-0.5e+10`, `"a"`, ` {"a" : [1, 2, {"b": null}] } `,
	`{"id":"x","id":"y"}`, `{"a\u0062":1}`, `"\ud83d\ude00"`, `"\ud83d"`, `"\ud83d\u0041"`, `"\udc00\ud800"`,
	"\"\xff\xfe\"", `{"k":"\u00e9\n\t\"\\\/"}`, `01`, `1.`, `.5`, `-`, `1e`, `tru`, `{"a"}`, `{"a":1,}`, `[1,]`,
	`{"a":1}x`, "\"\x01\"", `"\x"`, `"\u12g4"`, `{"a":{"b":{"c":[[[]]]}}}`, strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	strings.Repeat("[", 10000) + strings.Repeat("]", 10000), `{"namespace":"a","namespace":5}`, "{\"\xff\":1}",
}

// FuzzAgainstEncodingJSON holds the package to encoding/json's rules: the same documents are
// valid, strings unquote to the same text, and an object's members are the ones
// encoding/json puts in a map.
func FuzzAgainstEncodingJSON(f *testing.F) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		valid := Valid(b)
		require.Equal(t, json.Valid(b), valid, "validity of %q", b)
		if !valid {
			require.Error(t, Members(b, func([]byte, []byte) error { return nil }))
			return
		}
		v, err := Value(b)
		require.NoError(t, err)
		require.Equal(t, string(bytes.TrimSpace(b)), string(v))
		switch KindOf(v) {
		case String:
			var want string
			require.NoError(t, json.Unmarshal(v, &want))
			got, ok := Unquote(v)
			require.True(t, ok)
			require.Equal(t, want, got)
		case Object:
			var want map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(v, &want))
			got := map[string]string{}
			require.NoError(t, Members(b, func(name, value []byte) error {
				got[string(name)] = string(value)
				return nil
			}))
			require.Len(t, got, len(want))
			checked := 0
			for name, raw := range want {
				if checked++; checked > 20 {
					break // Lookup walks the object: checking every name is quadratic
				}
				require.Equal(t, string(raw), got[name], "member %q", name)
				last, ok := Lookup(v, name)
				require.True(t, ok)
				require.Equal(t, string(raw), string(last))
			}
		case Array:
			var want []json.RawMessage
			require.NoError(t, json.Unmarshal(v, &want))
			for i, raw := range want[:min(len(want), 20)] {
				got, ok := Index(v, i)
				require.True(t, ok)
				require.Equal(t, string(raw), string(got))
			}
			var all []string
			require.NoError(t, Elements(v, func(i int, e []byte) error {
				require.Equal(t, len(all), i)
				all = append(all, string(e))
				return nil
			}))
			require.Len(t, all, len(want))
			for i, raw := range want {
				require.Equal(t, string(raw), all[i])
			}
			if len(want) <= 20 {
				_, ok := Index(v, len(want))
				require.False(t, ok)
			}
		}
	})
}

func TestMembersStopsAtTheFirstError(t *testing.T) {
	stop := json.Unmarshal([]byte(`1`), new(string))
	var seen []string
	err := Members([]byte(`{"a":1,"b":2,"c":3}`), func(name, _ []byte) error {
		seen = append(seen, string(name))
		if string(name) == "b" {
			return stop
		}
		return nil
	})
	require.Equal(t, stop, err)
	require.Equal(t, []string{"a", "b"}, seen)
}

func TestMembersRefusesWhatIsNotAnObject(t *testing.T) {
	for _, doc := range []string{`[]`, `"x"`, `{"a":1`, `{"a":1} {}`, ``} {
		require.Error(t, Members([]byte(doc), func([]byte, []byte) error { return nil }), doc)
	}
}

func TestSyntaxErrorSaysWhere(t *testing.T) {
	_, err := Value([]byte(`{"a": tru}`))
	var se *SyntaxError
	require.ErrorAs(t, err, &se)
	require.Equal(t, 6, se.Offset)
	require.Contains(t, err.Error(), "expected true")
}

func BenchmarkMembers(b *testing.B) {
	doc := []byte(`{"specversion":"1.0","id":"ev-1","source":"webhook","type":"deploy-failed","time":"2026-12-06T12:00:00Z",` +
		`"datacontenttype":"application/json","data":{"type":"deploy-failed","namespace":"shop","resourceName":"svc-1",` +
		`"message":"rollout of revision 42 is stuck: 2 of 3 replicas unavailable after 600s","reason":"ProgressDeadlineExceeded"}}`)
	b.Run("jsonscan", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(doc)))
		for b.Loop() {
			n := 0
			_ = Members(doc, func(name, _ []byte) error { n++; return nil })
		}
	})
	b.Run("encoding-json-map", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(doc)))
		for b.Loop() {
			var m map[string]json.RawMessage
			_ = json.Unmarshal(doc, &m)
		}
	})
}
