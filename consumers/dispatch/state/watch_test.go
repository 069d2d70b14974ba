package state

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/mapping"
)

// A watcher reads a group record without its events and counted sequences: everything else
// must read as decoding the whole record would, and a record that is not valid JSON must
// not pass for one.
func TestDecodeGroupHeaderReadsAllButTheEvents(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	r := GroupRecord{Entry: "e", Hook: "ns/h", Agent: "ns/a", Labels: map[string]string{"namespace": "shop", "q\"": "<&>"},
		Severity: "error", Wait: time.Second, Interval: time.Minute, MaxEvents: 100, Incarnation: "i-1", FirstSeen: now,
		LastSeen: now.Add(time.Second), Due: now.Add(time.Minute), Notified: now, Sent: 2, Total: 30, Pending: 3, Omitted: 1,
		Events:    []hook.GroupEvent{{Event: mapping.Event{ID: "webhook/1", Type: "t", Data: json.RawMessage(`{"events":[1]}`)}, Count: 2, FirstSeen: now}},
		Recent:    []string{"a", "b"},
		Forgotten: 4, Lease: &GroupLease{Holder: "replica-1", Until: now, Pending: 3, Counts: map[string]int{"x": 1}}, Attempts: 1,
		Single: true, Task: "task", Context: "ctx", Claim: "claim"}
	for seq := range uint64(5000) {
		r.Counted.Add(seq * 3)
	}
	b, err := json.Marshal(r)
	require.NoError(t, err)

	got, err := decodeGroupHeader(b)
	require.NoError(t, err)
	want := r
	want.Events, want.Counted, want.Recent = nil, SeqSet{}, nil
	wantJSON, _ := json.Marshal(want)
	gotJSON, _ := json.Marshal(got)
	require.JSONEq(t, string(wantJSON), string(gotJSON))

	for _, bad := range []string{``, `[]`, `{"entry":"e",}`, `{"entry":"e","events":[1,}`, `{"wait":"soon"}`} {
		_, err := decodeGroupHeader([]byte(bad))
		require.Error(t, err, bad)
	}
}
