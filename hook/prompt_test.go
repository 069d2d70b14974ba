package hook

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/mapping"
)

// Prompts that would run forever, allocate without bound or recurse are refused when the
// Hook is loaded, with a reason, in bounded time; prompts that only read the event load.
func TestHostilePromptsAreRefusedAtLoad(t *testing.T) {
	for _, tc := range []struct{ name, prompt, err string }{
		{"range over a huge literal", `{{range 1000000000000}}{{end}}`, "must range over a field"},
		{"range over a literal with output", `{{range 3000000}}0123456789012345678901234567890123456789{{end}}`, "must range over a field"},
		{"hidden behind data", `{{if .Data.x}}{{range 100000000000}}{{end}}{{end}}`, "must range over a field"},
		{"range over a function", `{{range len .Data.items}}x{{end}}`, "must range over a field"},
		{"nested ranges", `{{range .Data.a}}{{range $.Data.a}}{{end}}{{end}}`, "nested {{range}}"},
		{"recursion", `{{define "x"}}{{template "x"}}{{end}}{{template "x"}}`, "not allowed"},
		{"a huge printf width", `{{printf "%0999999999d" 1}}`, "width or precision"},
		{"printf width from an argument", `{{printf "%*d" 999999999 1}}`, "not allowed"},
		{"too long", strings.Repeat("a", MaxPromptSource+1), "longer than"},
		// A variable or a method chain can hold an integer, which text/template ranges over:
		// the check is made on the value, when the prompt renders (at load, on an empty
		// event, and for every task).
		{"range over a variable holding a number", `{{$n := 1000000000000}}{{range $n}}{{end}}`, "lists and maps only"},
		{"range over a method's number", `{{range .Group.FirstSeen.UnixNano}}{{end}}`, "lists and maps only"},
		{"range over a group count", `{{range .Group.Count}}x{{end}}`, "lists and maps only"},
		{"escapers chained to grow", `{{"\\" ` + strings.Repeat("| js ", 40) + `}}`, "renders to more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := compilePrompt(tc.prompt)
			require.ErrorContains(t, err, tc.err)
		})
	}
	for _, ok := range []string{
		`Pod {{.ResourceName}} in {{ .Namespace }}: {{.Message}}`,
		`{{range .Data.alerts}}- {{.labels.alertname}}{{"\n"}}{{end}}`,
		`{{range $i, $a := .Data.alerts}}{{$i}}{{end}}`,
		`{{with .Data.x}}{{printf "%5.2f" .}}{{end}}`,
		`{{get .Data "labels.pod"}} {{printf "%d%%" 5}}`,
	} {
		_, _, err := compilePrompt(ok)
		require.NoError(t, err, ok)
	}
}

// A prompt that is cheap on an empty event but whose cost grows with the event (a long
// range body over a large payload) is stopped by the render's bounds, and the task is sent
// with khook's plain placeholders instead.
func TestExpensivePromptIsStoppedAndFallsBack(t *testing.T) {
	prompt := `Pod {{.ResourceName}}{{range .Data.items}}` + strings.Repeat(`{{if .}}{{end}}`, 600) + `{{end}}`
	tmpl, _, err := compilePrompt(prompt)
	require.NoError(t, err, "cheap on an empty event")
	items := make([]int, 200000)
	data, _ := json.Marshal(map[string]any{"items": items})
	ev := &mapping.Event{Type: "pod-restart", Namespace: "shop", Resource: mapping.Resource{Name: "cart-1"}, Data: data}
	_, err = render(tmpl, ev)
	require.ErrorIs(t, err, ErrPromptTooSlow)

	h := Hook{APIVersion: APIVersion, Kind: Kind, Metadata: ObjectMeta{Name: "h", Namespace: "shop"},
		Spec: HookSpec{EventConfigurations: []EventConfiguration{{EventType: "pod-restart", AgentRef: AgentRef{Name: "a"}, Prompt: prompt}}}}
	idx, err := NewIndex([]Hook{h})
	require.NoError(t, err)
	task, err := NewTask(idx.Match(ev)[0], ev)
	require.ErrorIs(t, err, ErrPromptTooSlow)
	require.True(t, strings.HasPrefix(task.Text, "Pod cart-1{{range"), "sent with plain placeholders: %.40q", task.Text)
}

// The step bound holds on every machine, whatever the clock says: a render that keeps
// stepping stops after maxRenderSteps.
func TestRenderStopsAfterItsSteps(t *testing.T) {
	defer func(d time.Duration) { MaxRenderTime = d }(MaxRenderTime)
	MaxRenderTime = time.Hour
	tmpl, _, err := compilePrompt(`{{range .Data.items}}{{if .}}{{end}}{{end}}`)
	require.NoError(t, err)
	data, _ := json.Marshal(map[string]any{"items": make([]int, maxRenderSteps)})
	_, err = render(tmpl, &mapping.Event{Data: data})
	require.ErrorIs(t, err, ErrPromptTooSlow)
	require.ErrorContains(t, err, "steps")
}

// Placeholders kagent's khook did not know were sent as written; a migrated Hook keeps that,
// with a warning per placeholder, while fields under {{range}} and {{with}}, whose dot is
// the payload, are left to the template.
func TestUnknownPlaceholdersAreSentAsWritten(t *testing.T) {
	ev := &mapping.Event{Type: "pod-restart", Namespace: "shop", Resource: mapping.Resource{Name: "cart-1"},
		Data: json.RawMessage(`{"alerts":[{"pod":"a"},{"pod":"b"}],"x":{"y":"z"}}`)}
	for _, tc := range []struct {
		name, prompt, want string
		warnings           []string
	}{
		{"upstream style", "Pod {{.ResourceName}} ({{ .PodUID }}) restarted", "Pod cart-1 ({{ .PodUID }}) restarted",
			[]string{"{{ .PodUID }} is not a field khook knows, so it is sent as written"}},
		{"several, and a chain", "{{.A}}-{{.B.C}}-{{.Namespace}}", "{{.A}}-{{.B.C}}-shop",
			[]string{"{{.A}} is not", "{{.B.C}} is not"}},
		{"inside if", "{{if .Namespace}}{{.Region}}{{end}}", "{{.Region}}", []string{"{{.Region}} is not"}},
		// As written means the spaces too: the trim markers belong to the unknown action.
		{"trim markers", "a {{- .Who -}} b", "a {{- .Who -}} b", []string{"{{- .Who -}} is not"}},
		{"range keeps its fields", "{{range .Data.alerts}}{{.pod}}{{end}}", "ab", nil},
		{"with keeps its fields", "{{with .Data.x}}{{.y}}{{end}}", "z", nil},
		{"known fields only", "{{.EventType}} {{.Data.x.y}}", "pod-restart z", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl, warnings, err := compilePrompt(tc.prompt)
			require.NoError(t, err)
			require.Len(t, warnings, len(tc.warnings))
			for i, w := range tc.warnings {
				require.Contains(t, warnings[i], w)
			}
			got, err := render(tmpl, ev)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
	// Broken syntax and unknown functions are still refused: they are khook templates gone
	// wrong, not placeholders.
	for _, bad := range []string{"{{.A", "{{ nosuchfunc }}", "{{if .A}}"} {
		_, _, err := compilePrompt(bad)
		require.Error(t, err, bad)
	}
	h := Hook{Spec: HookSpec{EventConfigurations: []EventConfiguration{{Prompt: "ok {{.ResourceName}}"}, {Prompt: "{{.PodName}}"}}}}
	require.Equal(t, []string{"spec.eventConfigurations[1].prompt: {{.PodName}} is not a field khook knows, so it is sent as written"}, h.Warnings())
}

// One action can pass thousands of arguments: print, printf and the escapers refuse them
// before formatting them all, so the render fails with a bounded allocation instead of
// building gigabytes first. The prompt builds a 64 KiB string itself, and hides the call
// behind the payload so that it loads.
func TestOneActionCannotAllocateWithoutBound(t *testing.T) {
	build := `{{$s := "` + strings.Repeat("&", 64) + `"}}` + strings.Repeat(`{{$s = print $s $s}}`, 10)
	for _, fn := range []string{"print", "println", "html", "js", "urlquery", `printf "%s"`} {
		t.Run(fn, func(t *testing.T) {
			args := strings.Repeat(" $s", (MaxPromptSource-len(build)-60)/3)
			tmpl, _, err := compilePrompt(`{{if .Data}}` + build + `{{` + fn + args + `}}{{end}}`)
			require.NoError(t, err, "it loads: the payload gate skips the call at load")
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, err = render(tmpl, &mapping.Event{Data: json.RawMessage(`{"x":1}`)})
			runtime.ReadMemStats(&after)
			require.ErrorIs(t, err, ErrPromptTooLarge)
			require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(64<<20), "allocated %d MiB", (after.TotalAlloc-before.TotalAlloc)>>20)
		})
	}
}
