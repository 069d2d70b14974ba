package mapping

import (
	"encoding/json"
	"os"
	"testing"
)

func BenchmarkMap(b *testing.B) {
	file, err := os.ReadFile("testdata/event-mappings.yaml")
	if err != nil {
		b.Fatal(err)
	}
	rules, err := Parse(file)
	if err != nil {
		b.Fatal(err)
	}
	cases := map[string]Raw{
		"webhook-well-known-fields": {ID: "1", Source: "webhook", Type: "deploy-failed",
			Data: json.RawMessage(`{"type":"deploy-failed","namespace":"shop","resourceName":"cart","message":"rollout stuck"}`)},
		"alertmanager-field-paths": {ID: "2", Source: "alertmanager", Type: "firing",
			Data: json.RawMessage(`{"status":"firing","labels":{"alertname":"KubePodCrashLooping","namespace":"payments","pod":"ledger-0","kind":"Pod"},"annotations":{"summary":"crash looping"}}`)},
		"kubernetes-builtin-subject": {ID: "3", Source: "kubernetes", Type: "pod-restart", Subject: "prod/Pod/api-1",
			Data: json.RawMessage(`{"reason":"BackOff","message":"Back-off restarting failed container"}`)},
	}
	for name, raw := range cases {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, o := Map(rules, raw); !o.HasEvent() {
					b.Fatal(o)
				}
			}
		})
	}
}
