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

// A waiting group or queued task belongs to its entry's stable identity (Hook, event type,
// agent): editing the prompt keeps it, so the waiting work is sent with the new prompt;
// changing the agent, or deleting the entry, does not.
func TestStableEntryOutlivesPromptEdits(t *testing.T) {
	ev := &mapping.Event{ID: "kubernetes/uid-1", Type: "oom-kill", Namespace: "ns", Resource: mapping.Resource{Kind: "Pod", Name: "p"}}
	only := func(entries string) hook.Match {
		t.Helper()
		ms := hooktest.Index(t, hooktest.Doc("ns", "h", entries)).Match(ev)
		require.Len(t, ms, 1)
		return ms[0]
	}
	before := only("      - {eventType: oom-kill, agentRef: {name: a}, prompt: \"A {{.ResourceName}}\"}\n")
	edited := only("      - {eventType: oom-kill, agentRef: {name: a}, prompt: \"Look at {{.ResourceName}}\"}\n")
	moved := only("      - {eventType: oom-kill, agentRef: {name: b}, prompt: \"A {{.ResourceName}}\"}\n")
	require.NotEqual(t, before.Entry(), edited.Entry(), "a task's ids follow what it says")
	require.Equal(t, before.StableEntry(), edited.StableEntry(), "waiting work follows what it is for")
	require.NotEqual(t, before.StableEntry(), moved.StableEntry())

	idx := hooktest.Index(t, hooktest.Doc("ns", "h", "      - {eventType: oom-kill, agentRef: {name: a}, prompt: \"Look at {{.ResourceName}}\"}\n"))
	m, ok := idx.Entry(before.StableEntry())
	require.True(t, ok)
	require.Equal(t, "Look at {{.ResourceName}}", m.Config().Prompt, "found with the prompt of now")
	_, ok = idx.Entry(before.Entry())
	require.False(t, ok, "the old prompt's entry is gone")

	two := hooktest.Index(t, hooktest.Doc("ns", "h", "      - {eventType: oom-kill, agentRef: {name: a}, prompt: \"one\"}\n"+
		"      - {eventType: oom-kill, agentRef: {name: a}, prompt: \"two\"}\n")).Match(ev)
	require.Len(t, two, 2)
	require.NotEqual(t, two[0].StableEntry(), two[1].StableEntry(), "two entries for one agent stay apart")
}
