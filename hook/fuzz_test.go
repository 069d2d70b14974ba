package hook

import (
	"encoding/json"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/khook/khook/mapping"
)

// FuzzHooks feeds hooks.yaml documents through the Hook parser, the index and the prompt
// renderer together, as the dispatcher does. Whatever the input, every render (the load
// render of each prompt, and each task's) ends by itself, under the sandbox's bounds: the
// test fails if one outlives MaxRenderTime by more than a hang detector's margin. Memory is
// bounded, and no prompt renders past MaxPromptOutput. The seeds are the hostile cases of
// the prompt sandbox; `make fuzz` runs it for FUZZTIME and prints the slowest input's time.
func FuzzHooks(f *testing.F) {
	hook := func(prompt, window string) string {
		p, _ := json.Marshal(prompt)
		w, _ := json.Marshal(window)
		return "apiVersion: kagent.dev/v1alpha2\nkind: Hook\nmetadata: {name: h, namespace: ns}\nspec:\n  suppressionWindow: " + string(w) +
			"\n  eventConfigurations:\n    - eventType: pod-restart\n      agentRef: {name: a}\n      tagSelector: {team: x}\n      prompt: " + string(p) + "\n"
	}
	for _, seed := range []struct{ prompt, window string }{
		{"Pod {{.ResourceName}} in {{ .Namespace }}", "10m"},
		{"{{range 1000000000000}}{{end}}", "1s"},
		{"{{range 3000000}}0123456789012345678901234567890123456789{{end}}", "1m"},
		{"{{if .Data.x}}{{range 100000000000}}{{end}}{{end}}", "5m"},
		{"{{range .Data.items}}{{range $.Data.items}}x{{end}}{{end}}", "1h"},
		{`{{define "x"}}{{template "x"}}{{end}}{{template "x"}}`, "1h"},
		{`{{printf "%0999999999d" 1}}`, "1h"},
		{"{{range .Data.items}}{{printf \"%1000s\" .}}{{end}}", "1h"},
		{"{{$n := 1000000000000}}{{range $n}}{{end}}", "1m"},
		{"{{range .Group.FirstSeen.UnixNano}}{{end}}", "1m"},
		{"{{range .Data.items}}" + strings.Repeat("{{if .}}{{end}}", 300) + "{{end}}", "1m"},
		// Found by the fuzzer: a render that overran its time between two reads of the
		// clock.
		{"{{range .Data.items}}" + strings.Repeat("{{if .}}{{end}}", 420) + "{{end}}", "1m"},
		{`{{"\\" | js | js | js | js | js | js | js | js | js | js | js | js | js | js | js | js | js | js | js | js | js | js | js | js | js}}`, "1m"},
		{"{{.Message}}", "500ms"},
		{"{{.Message}}", "0s"},
		{"{{.Message}}", "10"},
	} {
		f.Add([]byte(hook(seed.prompt, seed.window)))
	}
	items := make([]string, 2000)
	for i := range items {
		items[i] = "item"
	}
	data, _ := json.Marshal(map[string]any{"x": true, "items": items})
	ev := &mapping.Event{ID: "kubernetes/u-1", Type: "pod-restart", Namespace: "ns", Severity: "warning",
		Tags: map[string]string{"team": "x"}, Resource: mapping.Resource{Kind: "Pod", Name: "p"}, Message: "m", Data: data}

	f.Fuzz(func(t *testing.T, doc []byte) {
		// Each step is held to the bound: parsing and indexing (one load render per
		// prompt), then each task's render. Every render stops itself at MaxRenderTime; the
		// default bound makes this a hang detector on a loaded machine, not a speed test,
		// and `make fuzz` sets KHOOK_FUZZ_BOUND to hold each step to a render's time.
		bound := 10 * time.Second
		if b, err := time.ParseDuration(os.Getenv("KHOOK_FUZZ_BOUND")); err == nil {
			bound = b
		}
		done := make(chan struct{})
		var took []time.Duration
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		go func() {
			defer close(done)
			began := time.Now()
			hooks, err := Parse(doc)
			if err != nil {
				return
			}
			idx, err := NewIndex(hooks)
			took = append(took, time.Since(began))
			if err != nil {
				return
			}
			for _, h := range idx.Hooks() {
				if w := h.Window(time.Minute); w < MinWindow {
					t.Errorf("window %s under the minimum", w)
				}
			}
			for _, m := range idx.Match(ev) {
				began := time.Now()
				task, err := NewTask(m, ev)
				took = append(took, time.Since(began))
				if err == nil && len(task.Text) > MaxPromptOutput+len(EventContext(ev)) {
					t.Errorf("prompt rendered to %d bytes", len(task.Text))
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(10 * bound):
			t.Fatalf("parsing and rendering did not end within %s for %q", 10*bound, doc)
		}
		for i, d := range took {
			if d > bound {
				t.Fatalf("step %d (0: parse and index, then each task's render) took %s, over %s, for %q", i, d, bound, doc)
			}
		}
		runtime.ReadMemStats(&after)
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 256<<20 {
			t.Errorf("parsing and rendering allocated %d MiB for %q", grew>>20, doc)
		}
	})
}
