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
		{name: "unmapped", raw: Raw{ID: "4", Source: "webhook", Type: "other"}, outcome: Unmapped},
		{name: "disabled", raw: Raw{ID: "5", Source: "webhook", Type: "noisy"}, outcome: Disabled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, outcome := Map(rules, tt.raw)
			require.Equal(t, tt.outcome, outcome)
			if outcome != Mapped {
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

func TestParseEmptyFileHasNoRules(t *testing.T) {
	rules, err := Parse(nil)
	require.NoError(t, err)
	require.Equal(t, 0, rules.Len())
}
