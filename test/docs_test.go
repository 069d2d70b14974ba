package test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
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
