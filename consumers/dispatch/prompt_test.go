package dispatch

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/hook/hooktest"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams/deadletter"
)

// A prompt whose output for one event passes MaxPromptOutput fails that task permanently:
// it is dead-lettered with the reason, not sent cut short, and not retried.
func TestPromptOverOutputLimitIsDeadLettered(t *testing.T) {
	idx := hooktest.Index(t, hooktest.Doc("shop", "deploys", `      - eventType: deploy-failed
        agentRef: {name: sre, namespace: kagent}
        prompt: "{{range .Data.lines}}{{.}}{{end}}"
`))
	h := newHarness(t, testConfig(), "1.0")
	h.d.SetHooks(idx)
	lines := make([]string, 100)
	for i := range lines {
		lines[i] = strings.Repeat("x", 1000)
	}
	data, err := json.Marshal(map[string]any{"lines": lines})
	require.NoError(t, err)
	h.publish(t, mapping.Event{ID: "big", Type: "deploy-failed", Resource: mapping.Resource{Name: "cart"}, Data: data})
	h.publish(t, mapping.Event{ID: "small", Type: "deploy-failed", Resource: mapping.Resource{Name: "orders"},
		Data: json.RawMessage(`{"lines":["a","b"]}`)})
	h.settled(t, 2)
	dl := h.deadLetters(t)
	require.Len(t, dl, 1)
	require.Equal(t, "prompt-too-large", dl[0].Header.Get(deadletter.HeaderReason))
	require.Contains(t, dl[0].Header.Get(deadletter.HeaderError), "65536")
	got := h.agent.Received()
	require.Len(t, got, 1, "only the event whose prompt fits is sent")
	require.True(t, strings.HasPrefix(got[0].Text, "ab\n"), got[0].Text)
	require.Equal(t, int64(1), h.faults.requests.Load(), "the oversized prompt never reached the agent")
}
