package hook

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/mapping"
)

func groupedHook(spec string) string {
	return replace(hookYAML, "spec:\n", "spec:\n"+spec)
}

func TestGroupingFieldsParseAndDefault(t *testing.T) {
	hooks, err := Parse([]byte(hookYAML))
	require.NoError(t, err)
	_, ok := hooks[0].Grouping()
	require.False(t, ok, "without groupBy or groupWait a hook does not group")

	hooks, err = Parse([]byte(groupedHook("  groupBy: [owner]\n")))
	require.NoError(t, err)
	g, ok := hooks[0].Grouping()
	require.True(t, ok)
	require.Equal(t, Grouping{By: []string{"owner"}, Wait: 30 * time.Second, Interval: 5 * time.Minute, MaxEvents: 100}, g)

	hooks, err = Parse([]byte(groupedHook("  groupBy: [namespace, tags.team]\n  groupWait: 5s\n  groupInterval: 1m\n  maxEventsPerTask: 7\n")))
	require.NoError(t, err)
	g, _ = hooks[0].Grouping()
	require.Equal(t, Grouping{By: []string{"namespace", "tags.team"}, Wait: 5 * time.Second, Interval: time.Minute, MaxEvents: 7}, g)
}

func TestGroupingErrorsNameTheField(t *testing.T) {
	for spec, want := range map[string]string{
		"  groupBy: [pod]\n":                          `spec.groupBy[0]: must be one of cluster, eventType, namespace, resourceKind, resourceName, owner, reason, severity or tags.<name>, got "pod"`,
		"  groupBy: [tags.]\n":                        `spec.groupBy[0]`,
		"  groupWait: soon\n":                         `spec.groupWait: want a duration`,
		"  groupWait: 1s\n  groupInterval: 10ms\n":    `spec.groupInterval: want a duration of at least 1s`,
		"  groupWait: 1s\n  maxEventsPerTask: 5000\n": `spec.maxEventsPerTask: must be 1 to 1000, got 5000`,
		"  groupInterval: 1m\n":                       `spec.groupInterval and spec.maxEventsPerTask need spec.groupBy or spec.groupWait`,
	} {
		doc := groupedHook(spec)
		_, err := Parse([]byte(doc))
		require.ErrorContains(t, err, want, spec)
		// The line is the field's own.
		field := strings.TrimPrefix(strings.FieldsFunc(want, func(r rune) bool { return r == ':' || r == '[' || r == ' ' })[0], "spec.")
		line := strings.Count(doc[:strings.Index(doc, "  "+field+":")], "\n") + 1
		require.ErrorContains(t, err, fmt.Sprintf("prod/pods (line %d): ", line), spec)
	}
}

func TestGroupLabelsAndKeys(t *testing.T) {
	owned := func(pod, owner string) *mapping.Event {
		data, _ := json.Marshal(map[string]any{"owner": map[string]string{"kind": "Deployment", "name": owner}})
		return &mapping.Event{Type: "pod-restart", Namespace: "prod", Severity: "warning", Tags: map[string]string{"team": "web"},
			Resource: mapping.Resource{Kind: "Pod", Name: pod}, Data: data}
	}
	g := Grouping{By: []string{"owner", "namespace", "tags.team", "severity"}}
	require.Equal(t, map[string]string{"owner": "Deployment/web", "namespace": "prod", "tags.team": "web", "severity": "warning"},
		g.Labels(owned("web-1", "web")))
	// Pods of one owner share a key; another owner, or another hook entry, does not.
	k1 := GroupKey("entry", g.Labels(owned("web-1", "web")))
	require.Equal(t, k1, GroupKey("entry", g.Labels(owned("web-2", "web"))))
	require.NotEqual(t, k1, GroupKey("entry", g.Labels(owned("api-1", "api"))))
	require.NotEqual(t, k1, GroupKey("other-entry", g.Labels(owned("web-1", "web"))))
	// Without an owner, the resource is its own owner: unrelated pods never merge.
	bare := &mapping.Event{Resource: mapping.Resource{Kind: "Pod", Name: "bare"}, Data: json.RawMessage(`{"reason":"x"}`)}
	require.Equal(t, "Pod/bare", Owner(bare))
	require.Equal(t, "Pod/bare", Owner(&mapping.Event{Resource: mapping.Resource{Kind: "Pod", Name: "bare"}, Data: json.RawMessage(`{"owner":"not an object"}`)}))
}

func TestGroupTaskListsTheGroup(t *testing.T) {
	idx := mustIndex(t, groupedHook("  groupBy: [owner]\n  groupWait: 5s\n"))
	ev := &mapping.Event{Type: "pod-restart", Namespace: "prod", Resource: mapping.Resource{Kind: "Pod", Name: "web-0"}}
	m := idx.Match(ev)[0]
	m.prompt = mustTemplate(t, "{{.Group.Count}} events, {{len .Events}} pods of {{.Group.Labels.owner}}:{{range .Events}} {{.Resource.Name}}x{{.Count}}{{end}}")
	at := time.Date(2026, 11, 29, 5, 0, 0, 0, time.UTC)
	var events []GroupEvent
	for i := range 3 {
		e := *ev
		e.Resource.Name = fmt.Sprint("web-", i)
		e.Reason, e.Message, e.Time = "BackOff", strings.Repeat("m", 300), at.Add(time.Duration(i)*time.Second)
		events = append(events, GroupEvent{Event: e, Count: i + 1, FirstSeen: at})
	}
	g := Group{Key: "k", Labels: map[string]string{"owner": "Deployment/web"}, Count: 6, Total: 9, Omitted: 2, Resources: 3,
		FirstSeen: at, LastSeen: at.Add(2 * time.Second), Sent: 1}
	task, err := GroupTask(m, g, events)
	require.NoError(t, err)
	first, rest, _ := strings.Cut(task.Text, "\n")
	require.Equal(t, "6 events, 3 pods of Deployment/web: web-0x1 web-1x2 web-2x3", first)
	require.True(t, strings.HasPrefix(rest, "Group: owner=Deployment/web\nEvents: 6 on 3 resources since the last task (1 tasks, 9 events in all), from 2026-11-29T05:00:00Z to 2026-11-29T05:00:02Z\nAffected:\n- prod Pod/web-0: BackOff mmm"), rest)
	require.Contains(t, rest, "\n- prod Pod/web-2 ×3: BackOff ")
	require.Contains(t, rest, strings.Repeat("m", maxListedMessage)+"…\n", "messages are cut in the listing")
	require.True(t, strings.HasSuffix(rest, "\n- and 2 more events not listed (maxEventsPerTask)"), rest)
	require.Equal(t, "web-2", task.Event.Resource.Name, "the task's event is the latest")
	// One message id per task of the group, one context for all of them.
	g.Sent = 2
	next, err := GroupTask(m, g, events)
	require.NoError(t, err)
	require.NotEqual(t, task.MessageID, next.MessageID)
	require.Equal(t, task.ContextID, next.ContextID)
}

func mustIndex(t *testing.T, hooksYAML string) *Index {
	t.Helper()
	hooks, err := Parse([]byte(hooksYAML))
	require.NoError(t, err)
	idx, err := NewIndex(hooks)
	require.NoError(t, err)
	return idx
}

func mustTemplate(t *testing.T, text string) *template.Template {
	t.Helper()
	tmpl, _, err := compilePrompt(text)
	require.NoError(t, err)
	return tmpl
}

// However many events a group lists, the listing stays near MaxPromptOutput, and says how
// many it leaves out.
func TestGroupListingIsBounded(t *testing.T) {
	var events []GroupEvent
	for i := range MaxGroupEvents {
		events = append(events, GroupEvent{Event: mapping.Event{Namespace: "prod", Reason: "BackOff", Message: strings.Repeat("x", 500),
			Resource: mapping.Resource{Kind: "Pod", Name: fmt.Sprintf("pod-%04d", i)}}, Count: 2})
	}
	text := GroupContext(Group{Count: 2 * MaxGroupEvents, Resources: MaxGroupEvents}, events)
	require.Less(t, len(text), MaxPromptOutput+1000)
	listed := strings.Count(text, "\n- prod Pod/")
	require.Less(t, listed, MaxGroupEvents)
	require.True(t, strings.HasSuffix(text, fmt.Sprintf("\n- and %d more events not listed (maxEventsPerTask)", 2*(MaxGroupEvents-listed))), text[len(text)-100:])
}

// A storm's prompt that lists every event's message passes the prompt limit (100 pods with
// a kilobyte each): the task lists as many as fit, says how many it leaves out, and is sent.
// Only a prompt that does not fit with one event fails, as too large.
func TestGroupTaskDegradesPastThePromptLimit(t *testing.T) {
	idx := mustIndex(t, groupedHook("  groupBy: [owner]\n"))
	ev := &mapping.Event{Type: "pod-restart", Namespace: "prod", Resource: mapping.Resource{Kind: "Pod", Name: "web-0"}}
	m := idx.Match(ev)[0]
	m.prompt = mustTemplate(t, "{{.Group.Resources}} of {{len .Events}} listed, {{.Group.Unlisted}} not:{{range .Events}}\n{{.Resource.Name}}: {{.Message}}{{end}}")
	var events []GroupEvent
	for i := range 100 {
		e := *ev
		e.Resource.Name = fmt.Sprintf("web-%02d", i)
		e.Message = strings.Repeat("m", 1024)
		events = append(events, GroupEvent{Event: e, Count: 2})
	}
	g := Group{Key: "k", Labels: map[string]string{"owner": "Deployment/web"}, Count: 200, Total: 200, Resources: 100}
	task, err := GroupTask(m, g, events)
	require.NoError(t, err)
	first, _, _ := strings.Cut(task.Text, "\n")
	require.Equal(t, "50 of 50 listed, 100 not:", first, "halved until it fits; the prompt sees what it lists")
	require.Contains(t, task.Text, "\n- and 100 more events not listed, to keep the task within the prompt limit")
	require.Contains(t, task.Text, "\nEvents: 200 on 100 resources", "the counts are the group's")
	require.Less(t, len(task.Text), 2*MaxPromptOutput)

	m.prompt = mustTemplate(t, "{{range .Events}}{{.Message}}{{.Message}}{{end}}")
	events = events[:1]
	events[0].Message = strings.Repeat("m", MaxPromptOutput/2+1)
	_, err = GroupTask(m, g, events)
	require.ErrorIs(t, err, ErrPromptTooLarge)
}

// A group's task ids belong to one incarnation of the group: the same incident recurring
// after its group ended is a new task, never taken for the earlier one's.
func TestGroupMessageIDsArePerIncarnation(t *testing.T) {
	require.NotEqual(t, GroupMessageID("k", "a", 0), GroupMessageID("k", "b", 0))
	require.NotEqual(t, GroupMessageID("k", "a", 0), GroupMessageID("k", "a", 1))
	require.Equal(t, UUID("group-message", "k", "0"), GroupMessageID("k", "", 0), "a group stored before incarnations keeps its ids")
}

// A group whose pending events are all past maxEventsPerTask lists none of them: its task
// still renders, and counts them.
func TestGroupTaskWithNoListedEvents(t *testing.T) {
	idx := mustIndex(t, groupedHook("  groupBy: [owner]\n"))
	m := idx.Match(&mapping.Event{Type: "pod-restart", Namespace: "prod"})[0]
	task, err := GroupTask(m, Group{Key: "k", Count: 5, Omitted: 5}, nil)
	require.NoError(t, err)
	require.Contains(t, task.Text, "\n- and 5 more events not listed (maxEventsPerTask)")
}
