package hook

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/mapping"
)

var update = flag.Bool("update", false, "rewrite testdata/prompts/*.golden from what the code renders")

// TestPromptsGolden renders each testdata/prompts/NAME.yaml (a Hook and an event) into the
// task an agent would receive, and compares it with NAME.golden: the prompt text, the event
// context khook appends, and the warnings and error the render reports. A change to prompt
// rendering shows up as a diff a reviewer reads. Run with -update to accept a change.
func TestPromptsGolden(t *testing.T) {
	cases, err := filepath.Glob("testdata/prompts/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, cases)
	for _, path := range cases {
		name := strings.TrimSuffix(filepath.Base(path), ".yaml")
		t.Run(name, func(t *testing.T) {
			got := renderFixture(t, path)
			golden := strings.TrimSuffix(path, ".yaml") + ".golden"
			if *update {
				require.NoError(t, os.WriteFile(golden, []byte(got), 0o644))
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err, "run go test ./hook -run TestPromptsGolden -update to create it")
			require.Equal(t, string(want), got)
		})
	}
}

// renderFixture builds the one task the fixture's Hook asks for its event, and prints it.
func renderFixture(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var fx struct {
		Hook  any `yaml:"hook"`
		Event any `yaml:"event"`
	}
	require.NoError(t, yaml.Unmarshal(b, &fx))
	hookDoc, err := yaml.Marshal(fx.Hook)
	require.NoError(t, err)
	hooks, err := Parse(hookDoc)
	require.NoError(t, err)
	idx, err := NewIndex(hooks)
	require.NoError(t, err)
	evJSON, err := json.Marshal(fx.Event)
	require.NoError(t, err)
	var ev mapping.Event
	require.NoError(t, json.Unmarshal(evJSON, &ev))

	matches := idx.Match(&ev)
	require.Len(t, matches, 1, "the fixture's Hook matches its event once")
	task, err := NewTask(matches[0], &ev)
	var out strings.Builder
	for _, w := range hooks[0].Warnings() {
		out.WriteString("warning: " + w + "\n")
	}
	if err != nil {
		out.WriteString("error: " + err.Error() + "\n")
	}
	out.WriteString("agent: " + task.Agent.Namespace + "/" + task.Agent.Name + "\n---\n")
	out.WriteString(task.Text + "\n")
	return out.String()
}
