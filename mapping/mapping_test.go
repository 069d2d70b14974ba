package mapping

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const sample = `
mappings:
  - eventSource: webhook
    eventType: deploy-failed
    description: "A deployment failed"
    severity: error
    tags:
      category: delivery
  - eventSource: webhook
    eventType: noisy
    enabled: false
  - eventSource: kubernetes
    eventType: pod-restart
    internalType: pod-restart
    severity: info
`

func TestMap(t *testing.T) {
	rules, err := Parse([]byte(sample))
	require.NoError(t, err)
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

	tests := []struct {
		name    string
		raw     Raw
		outcome Outcome
		want    Event
	}{
		{
			name: "webhook fields from data",
			raw: Raw{ID: "1", Source: "webhook", Type: "deploy-failed", Time: at,
				Data: json.RawMessage(`{"type":"deploy-failed","namespace":"shop","resourceName":"cart","message":"rollout stuck","reason":"Timeout"}`)},
			outcome: Mapped,
			want: Event{ID: "1", Source: "webhook", SourceType: "deploy-failed", Type: "deploy-failed", Severity: "error",
				Tags: map[string]string{"category": "delivery"}, Namespace: "shop", Resource: Resource{Name: "cart"},
				Reason: "Timeout", Message: "rollout stuck", Time: at},
		},
		{
			name: "fields from subject and nested resource",
			raw: Raw{ID: "2", Source: "kubernetes", Type: "pod-restart", Subject: "prod/Pod/api-1", Time: at,
				Data: json.RawMessage(`{"resource":{"kind":"Pod"},"message":"Back-off"}`)},
			outcome: Mapped,
			want: Event{ID: "2", Source: "kubernetes", SourceType: "pod-restart", Type: "pod-restart", Severity: "info",
				Namespace: "prod", Resource: Resource{Kind: "Pod", Name: "api-1"}, Message: "Back-off", Time: at},
		},
		{
			name:    "data that is not an object still maps",
			raw:     Raw{ID: "3", Source: "webhook", Type: "deploy-failed", Data: json.RawMessage(`[1,2]`)},
			outcome: Mapped,
			want: Event{ID: "3", Source: "webhook", SourceType: "deploy-failed", Type: "deploy-failed", Severity: "error",
				Tags: map[string]string{"category": "delivery"}},
		},
		{name: "unmapped", raw: Raw{ID: "4", Source: "webhook", Type: "other"}, outcome: Dropped},
		{name: "disabled", raw: Raw{ID: "5", Source: "webhook", Type: "noisy"}, outcome: DisabledOutcome},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, outcome := Map(rules, tt.raw)
			require.Equal(t, tt.outcome, outcome)
			if !outcome.HasEvent() {
				return
			}
			tt.want.Data = tt.raw.Data
			require.Equal(t, tt.want, got)
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"unknown top-level key", "mapping:\n  - eventSource: a\n", []string{"line 1", `unknown key "mapping"`}},
		{"unknown rule key", "mappings:\n  - eventSource: webhook\n    eventType: a\n    severty: info\n", []string{"line 4", `unknown key "severty"`}},
		{"bad severity", "mappings:\n  - eventSource: webhook\n    eventType: a\n    severity: fatal\n", []string{"mappings[0] (line 2)", `severity "fatal"`}},
		{"camel-case internal type", "mappings:\n  - eventSource: webhook\n    eventType: a\n    internalType: PodRestart\n", []string{"internalType \"PodRestart\"", "[a-z0-9-_]"}},
		{"missing source", "mappings:\n  - eventType: a\n", []string{"eventSource \"\""}},
		{"duplicate", "mappings:\n  - eventSource: w\n    eventType: a\n  - eventSource: w\n    eventType: a\n", []string{"line 4", "duplicate rule", "first defined at line 2"}},
		{"wrong type", "mappings:\n  - eventSource: w\n    eventType: a\n    enabled: maybe\n", []string{"line 4"}},
		{"not yaml", "mappings: [", []string{"event mappings"}},
		{"bad field path", "mappings:\n  - eventSource: w\n    eventType: a\n    fields: {message: a..b}\n", []string{"fields.message", "empty segment"}},
		{"unknown field key", "mappings:\n  - eventSource: w\n    eventType: a\n    fields:\n      msg: a\n", []string{"line 5", `unknown key "msg"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			require.Error(t, err)
			for _, w := range tt.want {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestBuiltinKubernetesRules(t *testing.T) {
	rules, err := Parse(nil)
	require.NoError(t, err)
	for _, typ := range []string{"pod-restart", "pod-pending", "oom-kill", "probe-failed", "node-not-ready"} {
		ev, outcome := Map(rules, Raw{ID: "1", Source: "kubernetes", Type: typ})
		require.Equal(t, Mapped, outcome, typ)
		require.Equal(t, typ, ev.Type, "khook's names are kept, so existing Hooks match")
	}

	// The guide's values-dev lowers pod-restart to info with a partial entry.
	rules, err = Parse([]byte("mappings:\n  - eventSource: kubernetes\n    eventType: pod-restart\n    severity: info\n    enabled: true\n"))
	require.NoError(t, err)
	ev, _ := Map(rules, Raw{Source: "kubernetes", Type: "pod-restart"})
	require.Equal(t, "info", ev.Severity)
	require.Equal(t, "pod-restart", ev.Type)
	ev, _ = Map(rules, Raw{Source: "kubernetes", Type: "oom-kill"})
	require.Equal(t, "error", ev.Severity, "other built-ins stay")

	// A file rule covering kubernetes/* replaces every built-in it covers.
	rules, err = Parse([]byte("mappings:\n  - eventSource: kubernetes\n    eventType: \"*\"\n    enabled: false\n"))
	require.NoError(t, err)
	_, outcome := Map(rules, Raw{Source: "kubernetes", Type: "oom-kill"})
	require.Equal(t, DisabledOutcome, outcome)
}

func TestWildcardsMostSpecificWins(t *testing.T) {
	rules, err := Parse([]byte(`
mappings:
  - {eventSource: "*", eventType: "*", severity: info, tags: {rule: any}}
  - {eventSource: "*", eventType: deploy-failed, severity: warning, tags: {rule: any-source}}
  - {eventSource: ci, eventType: "*", severity: error, tags: {rule: ci-any}}
  - {eventSource: ci, eventType: deploy-failed, internalType: ci-deploy-failed, severity: critical, tags: {rule: exact}}
`))
	require.NoError(t, err)
	tests := []struct{ source, typ, rule, internal string }{
		{"ci", "deploy-failed", "exact", "ci-deploy-failed"},
		{"ci", "test-failed", "ci-any", "test-failed"},
		{"webhook", "deploy-failed", "any-source", "deploy-failed"},
		{"webhook", "other", "any", "other"},
	}
	for _, tt := range tests {
		ev, outcome := Map(rules, Raw{Source: tt.source, Type: tt.typ})
		require.Equal(t, Mapped, outcome)
		require.Equal(t, tt.rule, ev.Tags["rule"], "%s/%s", tt.source, tt.typ)
		require.Equal(t, tt.internal, ev.Type, "a wildcard rule without internalType keeps the event's type")
	}
}

func TestFieldExtraction(t *testing.T) {
	rules, err := Parse([]byte(`
mappings:
  - eventSource: alertmanager
    eventType: alert
    fields:
      namespace: labels.namespace
      resourceKind: /labels/kind
      resourceName: "/labels/pod~1name"
      reason: labels.alertname
      message: annotations.summary
  - eventSource: ci
    eventType: build
    fields:
      resourceName: steps.1.name
      message: exitCode
`))
	require.NoError(t, err)
	ev, _ := Map(rules, Raw{Source: "alertmanager", Type: "alert", Data: json.RawMessage(
		`{"labels":{"namespace":"prod","kind":"Pod","pod/name":"api-1","alertname":"KubePodCrashLooping"},"annotations":{"summary":"crash looping"}}`)})
	require.Equal(t, "prod", ev.Namespace)
	require.Equal(t, Resource{Kind: "Pod", Name: "api-1"}, ev.Resource)
	require.Equal(t, "KubePodCrashLooping", ev.Reason)
	require.Equal(t, "crash looping", ev.Message)

	ev, _ = Map(rules, Raw{Source: "ci", Type: "build", Subject: "ci/Pipeline/main", Data: json.RawMessage(
		`{"steps":[{"name":"lint"},{"name":"test"}],"exitCode":2,"message":"fallback unused"}`)})
	require.Equal(t, "test", ev.Resource.Name, "array elements by index")
	require.Equal(t, "2", ev.Message, "numbers render as JSON")
	require.Equal(t, "ci", ev.Namespace, "unset fields fall back to the CloudEvents subject")
	require.Equal(t, "Pipeline", ev.Resource.Kind)
}

func TestUnmappedPolicies(t *testing.T) {
	for policy, want := range map[string]Outcome{"": Dropped, "drop": Dropped, "passthrough": PassedThrough, "deadletter": UnmappedDead} {
		rules, err := Parse([]byte("unmapped: " + policy + "\nmappings: []\n"))
		require.NoError(t, err)
		ev, outcome := Map(rules, Raw{ID: "1", Source: "webhook", Type: "new-thing", Data: json.RawMessage(`{"namespace":"shop"}`)})
		require.Equal(t, want, outcome, "policy %q", policy)
		if outcome == PassedThrough {
			require.Equal(t, "new-thing", ev.Type)
			require.Equal(t, "shop", ev.Namespace)
		}
	}
	_, err := Parse([]byte("unmapped: ignore\n"))
	require.ErrorContains(t, err, "unmapped: must be drop, passthrough or deadletter")
}

func TestRulesHashFollowsContent(t *testing.T) {
	a, err := Parse([]byte(sample))
	require.NoError(t, err)
	b, err := Parse([]byte(sample + "\n"))
	require.NoError(t, err)
	c, err := Parse([]byte(sample))
	require.NoError(t, err)
	require.NotEqual(t, a.Hash(), b.Hash())
	require.Equal(t, a.Hash(), c.Hash())
}
