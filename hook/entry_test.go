package hook_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/hook/hooktest"
	"github.com/khook/khook/mapping"
)

// Entry ids, and so message ids, context ids and suppression keys, do not depend on an
// entry's position; two identical entries are one task.
func TestEntryIdentityIsItsContent(t *testing.T) {
	index := func(entries string) *hook.Index {
		t.Helper()
		return hooktest.Index(t, hooktest.Doc("ns", "h", entries))
	}
	a := "      - {eventType: oom-kill, agentRef: {name: a}, prompt: \"A {{.ResourceName}}\"}\n"
	b := "      - {eventType: oom-kill, agentRef: {name: b}, prompt: \"B {{.ResourceName}}\"}\n"
	ev := &mapping.Event{ID: "kubernetes/uid-1", Type: "oom-kill", Namespace: "ns", Resource: mapping.Resource{Kind: "Pod", Name: "p"}}
	tasks := func(idx *hook.Index) map[string]hook.Task {
		out := map[string]hook.Task{}
		for _, m := range idx.Match(ev) {
			task, err := hook.NewTask(m, ev)
			require.NoError(t, err)
			out[m.Agent.Name] = task
		}
		return out
	}
	ab, ba := tasks(index(a+b)), tasks(index(b+a))
	require.Len(t, ab, 2)
	for _, agent := range []string{"a", "b"} {
		require.Equal(t, ab[agent].MessageID, ba[agent].MessageID)
		require.Equal(t, ab[agent].ContextID, ba[agent].ContextID)
		require.Equal(t, ab[agent].SuppressionKey, ba[agent].SuppressionKey)
	}
	require.NotEqual(t, ab["a"].MessageID, ab["b"].MessageID)
	require.Len(t, index(a+a+b).Match(ev), 2, "an entry written twice is one task")
}
