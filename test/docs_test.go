package test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/internal/config"
)

// codeMetrics returns every khook_ metric name defined in the non-test Go sources.
func codeMetrics(t *testing.T) map[string]bool {
	t.Helper()
	defined := map[string]bool{}
	name := regexp.MustCompile(`"(khook_[a-z_]+)"`)
	require.NoError(t, filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		b, err := os.ReadFile(path)
		for _, m := range name.FindAllSubmatch(b, -1) {
			defined[string(m[1])] = true
		}
		return err
	}))
	return defined
}

// TestMetricsReferenceIsComplete keeps docs/metrics.md and the code in step: a metric added
// without a row, or a row for a metric that is gone, fails.
func TestMetricsReferenceIsComplete(t *testing.T) {
	defined := codeMetrics(t)
	require.Greater(t, len(defined), 30)
	doc, err := os.ReadFile("../docs/metrics.md")
	require.NoError(t, err)
	documented := map[string]bool{}
	row := regexp.MustCompile("(?m)^\\| `(khook_[a-z_]+)` \\|")
	for _, m := range row.FindAllSubmatch(doc, -1) {
		documented[string(m[1])] = true
	}
	var missing, stale []string
	for n := range defined {
		if !documented[n] {
			missing = append(missing, n)
		}
	}
	for n := range documented {
		if !defined[n] {
			stale = append(stale, n)
		}
	}
	slices.Sort(missing)
	slices.Sort(stale)
	require.Empty(t, missing, "metrics without a row in docs/metrics.md")
	require.Empty(t, stale, "rows in docs/metrics.md for metrics the code does not define")
}

// Every relative link in the README and docs/ names a file that exists and, when it has an
// #anchor, a heading of that file (GitHub's slugs), so the pages a new user follows from the
// README never end in a 404.
func TestDocLinksResolve(t *testing.T) {
	pages := []string{"../README.md", "../CONTRIBUTING.md"}
	require.NoError(t, filepath.WalkDir("../docs", func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".md") {
			pages = append(pages, path)
		}
		return err
	}))
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	var broken []string
	for _, page := range pages {
		b, err := os.ReadFile(page)
		require.NoError(t, err)
		for _, m := range link.FindAllStringSubmatch(stripCode(string(b)), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			path := page
			if file != "" {
				path = filepath.Join(filepath.Dir(page), file)
			}
			if _, err := os.Stat(path); err != nil {
				broken = append(broken, page+": "+target)
				continue
			}
			if anchor != "" && strings.HasSuffix(path, ".md") && !slices.Contains(anchors(t, path), anchor) {
				broken = append(broken, page+": "+target+" (no such heading)")
			}
		}
	}
	require.Empty(t, broken)
}

var fence = regexp.MustCompile("(?s)```.*?```")

func stripCode(s string) string { return fence.ReplaceAllString(s, "") }

// anchors lists the GitHub anchors of a Markdown file's headings.
func anchors(t *testing.T, path string) []string {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var out []string
	drop := regexp.MustCompile(`[^a-z0-9 _-]`)
	for _, line := range strings.Split(stripCode(string(b)), "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		slug := strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(title), ""), " ", "-")
		out = append(out, slug)
	}
	return out
}

// TestGroupingDocExamplesLoad parses every Hook and khook.yaml example of docs/grouping.md
// as khook would load it, so the documented fields cannot drift from the code.
func TestGroupingDocExamplesLoad(t *testing.T) {
	doc, err := os.ReadFile("../docs/grouping.md")
	require.NoError(t, err)
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(doc), -1)
	var hooks, configs int
	for _, b := range blocks {
		switch body := b[1]; {
		case strings.Contains(body, "kind: Hook"):
			parsed, err := hook.Parse([]byte(body))
			require.NoError(t, err, body)
			g, ok := parsed[0].Grouping()
			require.True(t, ok, "the example groups:\n%s", body)
			require.NotEmpty(t, g.By)
			hooks++
		case strings.HasPrefix(body, "dispatcher:"):
			dir := t.TempDir()
			path := filepath.Join(dir, "khook.yaml")
			require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
			cfg, err := config.Load(path, nil, nil)
			require.NoError(t, err, body)
			require.NotEmpty(t, cfg.Dispatcher.Budgets)
			configs++
		}
	}
	require.Equal(t, [2]int{2, 1}, [2]int{hooks, configs}, "the Kubernetes and Alertmanager Hooks and the budgets")
}
