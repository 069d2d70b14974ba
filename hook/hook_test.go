package hook

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/mapping"
)

const hookYAML = `apiVersion: kagent.dev/v1alpha2
kind: Hook
metadata:
  name: pods
  namespace: prod
  uid: 1234            # kubectl output carries extra metadata; it is ignored
  resourceVersion: "7"
spec:
  eventConfigurations:
    - eventType: pod-restart
      agentRef: {name: k8s-agent}
      prompt: "Pod {{.ResourceName}} restarted"
    - eventType: oom-kill
      agentRef: {name: k8s-agent, namespace: kagent}
      prompt: "OOM {{ .ResourceName }}"
status:
  lastUpdated: "2026-01-01T00:00:00Z"
`

func TestParseHooksForms(t *testing.T) {
	list := "- " + indent(hookYAML)
	multi := hookYAML + "---\n" + replace(hookYAML, "name: pods", "name: pods-2")
	kubeList := "apiVersion: v1\nkind: List\nitems:\n- " + indent(hookYAML)
	for name, in := range map[string]string{"single": hookYAML, "list": list, "documents": multi, "kubernetes list": kubeList} {
		t.Run(name, func(t *testing.T) {
			hooks, err := Parse([]byte(in))
			require.NoError(t, err)
			require.NotEmpty(t, hooks)
			require.Equal(t, "prod/pods", hooks[0].Key())
		})
	}
}

func TestMatchFollowsKhook(t *testing.T) {
	hooks, err := Parse([]byte(hookYAML))
	require.NoError(t, err)
	idx, err := NewIndex(hooks)
	require.NoError(t, err)

	restart := &mapping.Event{Type: "pod-restart", Namespace: "prod"}
	m := idx.Match(restart)
	require.Len(t, m, 1)
	require.Equal(t, AgentRef{Name: "k8s-agent", Namespace: "prod"}, m[0].Agent, "agent namespace defaults to the hook's")

	oom := idx.Match(&mapping.Event{Type: "oom-kill", Namespace: "prod"})
	require.Equal(t, "kagent", oom[0].Agent.Namespace, "the agent may live in another namespace")

	require.Empty(t, idx.Match(&mapping.Event{Type: "pod-restart", Namespace: "staging"}), "hooks match their own namespace only")
	require.Empty(t, idx.Match(&mapping.Event{Type: "pod-pending", Namespace: "prod"}))
}

func TestParseHooksErrors(t *testing.T) {
	tests := []struct {
		name, in string
		wants    []string
	}{
		{"wrong kind", replace(hookYAML, "kind: Hook", "kind: Hooks"), []string{"prod/pods", "apiVersion/kind"}},
		{"unknown spec key", replace(hookYAML, "      prompt: \"OOM", "      promt: \"OOM"), []string{"line 15", `unknown key "promt"`}},
		{"camel-case event type", replace(hookYAML, "eventType: pod-restart", "eventType: PodRestart"), []string{"eventConfigurations[0].eventType", "PodRestart"}},
		{"no agent", replace(hookYAML, "agentRef: {name: k8s-agent}", "agentRef: {}"), []string{"eventConfigurations[0].agentRef.name: required"}},
		{"defined twice", hookYAML + "---\n" + hookYAML, []string{"prod/pods is defined twice"}},
		{"not a hook", "42\n", []string{"expected a Hook"}},
		// An unknown field is sent as written (TestUnknownPlaceholdersAreSentAsWritten); an
		// unknown function is a broken template.
		{"unknown function", replace(hookYAML, "restarted", "restarted {{pod}}"), []string{"prod/pods", "eventConfigurations[0].prompt", `function "pod" not defined`}},
		{"broken template", replace(hookYAML, "restarted", "restarted {{if}}"), []string{"prod/pods", "eventConfigurations[0].prompt"}},
		{"call is sandboxed", replace(hookYAML, "restarted", "{{call .Data}}"), []string{"prod/pods", "call is not allowed"}},
		{"bad severity floor", replace(hookYAML, "agentRef: {name: k8s-agent}", "agentRef: {name: k8s-agent}\n      minSeverity: fatal"), []string{"minSeverity"}},
		{"bad window", replace(hookYAML, "spec:\n", "spec:\n  suppressionWindow: soon\n"), []string{"spec.suppressionWindow", "soon"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			require.Error(t, err)
			for _, w := range tt.wants {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestExpandPrompt(t *testing.T) {
	at := time.Date(2026, 11, 27, 9, 30, 0, 0, time.UTC)
	ev := &mapping.Event{ID: "e1", Type: "pod-restart", Namespace: "prod", Resource: mapping.Resource{Kind: "Pod", Name: "api-1"},
		Reason: "BackOff", Message: "Back-off restarting", Time: at, Source: "kubernetes", SourceType: "pod-restart"}
	tests := []struct{ in, want string }{
		{"{{.EventType}} {{.ResourceName}} {{.Namespace}}", "pod-restart api-1 prod"},
		{"{{ .EventType }}|{{  .Reason}}|{{.Message }}", "pod-restart|BackOff|Back-off restarting"},
		{"{{.EventMessage}} at {{.Timestamp}} / {{.EventTime}}", "Back-off restarting at 2026-11-27T09:30:00Z / 2026-11-27T09:30:00Z"},
		{"unknown {{.Other}} stays", "unknown {{.Other}} stays"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, ExpandPrompt(tt.in, ev), tt.in)
	}
	require.Equal(t, "\nNamespace: prod\nReason: BackOff\nMessage: Back-off restarting\nResource: Pod/api-1\nSource: kubernetes (pod-restart)\nTime: 2026-11-27T09:30:00Z",
		EventContext(ev))
}

func TestTaskIDs(t *testing.T) {
	hooks, err := Parse([]byte(hookYAML))
	require.NoError(t, err)
	idx, err := NewIndex(hooks)
	require.NoError(t, err)
	ev := &mapping.Event{ID: "e1", Type: "pod-restart", Namespace: "prod", Resource: mapping.Resource{Kind: "Pod", Name: "api-1"}}
	m := idx.Match(ev)[0]

	a, b := task(t, m, ev), task(t, m, ev)
	require.Equal(t, a.MessageID, b.MessageID, "message id is deterministic per event and hook entry")
	require.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`, a.MessageID)

	other := *ev
	other.ID = "e2"
	c := task(t, m, &other)
	require.NotEqual(t, a.MessageID, c.MessageID, "another event is another message")
	require.Equal(t, a.ContextID, c.ContextID, "same hook, type, namespace and resource share a context")

	other.Resource.Name = "api-2"
	require.NotEqual(t, a.ContextID, task(t, m, &other).ContextID)
	require.NotEqual(t, a.SuppressionKey, task(t, m, &other).SuppressionKey)
}

func task(t *testing.T, m Match, ev *mapping.Event) Task {
	t.Helper()
	task, err := NewTask(m, ev)
	require.NoError(t, err)
	return task
}

func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n  ") }

func replace(s, old, new string) string { return strings.Replace(s, old, new, 1) }

func TestExtensionsAndTemplateData(t *testing.T) {
	hooks, err := Parse([]byte(`apiVersion: kagent.dev/v1alpha2
kind: Hook
metadata: {name: alerts, namespace: prod}
spec:
  eventConfigurations:
    - eventType: prometheus-alert
      agentRef: {name: sre}
      tagSelector: {team: payments}
      prompt: "{{.Severity}} {{.Tags.team}} {{.Data.labels.pod}}{{with .Data.missing}}never{{end}}"
`))
	require.NoError(t, err)
	idx, err := NewIndex(hooks)
	require.NoError(t, err)
	ev := &mapping.Event{ID: "1", Type: "prometheus-alert", Namespace: "prod", Severity: "critical",
		Tags: map[string]string{"team": "payments", "tier": "1"}, Data: []byte(`{"labels":{"pod":"ledger-0"}}`)}
	m := idx.Match(ev)
	require.Len(t, m, 1)
	require.True(t, strings.HasPrefix(task(t, m[0], ev).Text, "critical payments ledger-0\n"))

	other := *ev
	other.Tags = map[string]string{"team": "search"}
	require.Empty(t, idx.Match(&other), "the tag selector needs every tag")

	// An event without the .Data path still gets its task, with khook's placeholders.
	noPod := *ev
	noPod.Data = []byte(`{}`)
	tk, err := NewTask(m[0], &noPod)
	require.ErrorContains(t, err, "prod/alerts")
	require.True(t, strings.HasPrefix(tk.Text, "{{.Severity}} {{.Tags.team}}"), tk.Text)
}

func TestGetIsLenient(t *testing.T) {
	hooks, err := Parse([]byte(strings.Replace(hookYAML, "restarted", "restarted on {{get .Data `spec.nodeName`}}!", 1)))
	require.NoError(t, err)
	idx, err := NewIndex(hooks)
	require.NoError(t, err)
	ev := &mapping.Event{Type: "pod-restart", Namespace: "prod", Resource: mapping.Resource{Name: "p"}, Data: []byte(`{"spec":{"nodeName":"n1"}}`)}
	require.True(t, strings.HasPrefix(task(t, idx.Match(ev)[0], ev).Text, "Pod p restarted on n1!"))
	ev.Data = []byte(`{}`)
	require.True(t, strings.HasPrefix(task(t, idx.Match(ev)[0], ev).Text, "Pod p restarted on !"))
}

// Each problem of a Hook points at its own line of hooks.yaml: a prompt with an unclosed
// action names the prompt's line and says so.
func TestProblemsNameTheirLine(t *testing.T) {
	doc := "- apiVersion: kagent.dev/v1alpha2\n  kind: Hook\n  metadata: {name: h, namespace: ns}\n  spec:\n    eventConfigurations:\n" +
		"      - eventType: x\n        agentRef: {name: a}\n        prompt: \"fine {{.ResourceName}}\"\n" +
		"      - eventType: y\n        agentRef: {name: a}\n        prompt: \"hello {{.ResourceName\"\n        minSeverity: loud\n"
	_, err := Parse([]byte(doc))
	require.ErrorContains(t, err, "hooks: ns/h (line 11): spec.eventConfigurations[1].prompt: template: prompt:1: unclosed action")
	require.ErrorContains(t, err, "hooks: ns/h (line 12): spec.eventConfigurations[1].minSeverity: must be one of")
}
