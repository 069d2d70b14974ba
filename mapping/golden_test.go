package mapping

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams/cloudevent"
)

var update = flag.Bool("update", false, "rewrite the golden files from the current output")

// goldenResult is what a golden file records for one input.
type goldenResult struct {
	Outcome Outcome `json:"outcome"`
	Event   *Event  `json:"event,omitempty"`
}

// TestGolden maps every testdata/*.in.json (a raw CloudEvent) with testdata/event-mappings.yaml
// and compares the result with testdata/*.golden.json. Run with -update to accept changes.
func TestGolden(t *testing.T) {
	b, err := os.ReadFile("testdata/event-mappings.yaml")
	require.NoError(t, err)
	rules, err := Parse(b)
	require.NoError(t, err)
	inputs, err := filepath.Glob("testdata/*.in.json")
	require.NoError(t, err)
	require.NotEmpty(t, inputs)
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".in.json")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(in)
			require.NoError(t, err)
			ce, err := cloudevent.Decode(raw)
			require.NoError(t, err)
			ev, outcome := Map(rules, Raw{ID: ce.ID, Source: ce.Source, Type: ce.Type, Subject: ce.Subject, Time: ce.Time, Data: ce.Data})
			res := goldenResult{Outcome: outcome}
			if outcome.HasEvent() {
				res.Event = &ev
			}
			got, err := json.MarshalIndent(res, "", "  ")
			require.NoError(t, err)
			goldenPath := filepath.Join("testdata", name+".golden.json")
			if *update {
				require.NoError(t, os.WriteFile(goldenPath, append(got, '\n'), 0o644))
			}
			want, err := os.ReadFile(goldenPath)
			require.NoError(t, err, "missing golden file: run go test ./mapping -run TestGolden -update")
			require.JSONEq(t, string(want), string(got))
		})
	}
}
