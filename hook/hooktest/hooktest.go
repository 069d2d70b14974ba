// Package hooktest builds Hook indexes for tests, from hooks.yaml text or from the fixtures
// in a package's testdata/ folder.
package hooktest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/khook/khook/hook"
)

// Doc is hooks.yaml with one Hook, namespace/name, whose eventConfigurations are entries
// (YAML list items indented six spaces).
func Doc(namespace, name, entries string) string {
	return "- apiVersion: kagent.dev/v1alpha2\n  kind: Hook\n  metadata: {name: " + name + ", namespace: " + namespace +
		"}\n  spec:\n    eventConfigurations:\n" + entries
}

// Index parses hooks.yaml text and indexes it, failing the test on any error.
func Index(t testing.TB, hooksYAML string) *hook.Index {
	t.Helper()
	hooks, err := hook.Parse([]byte(hooksYAML))
	if err != nil {
		t.Fatalf("parsing hooks: %v", err)
	}
	idx, err := hook.NewIndex(hooks)
	if err != nil {
		t.Fatalf("indexing hooks: %v", err)
	}
	return idx
}

// Fixture is the content of testdata/NAME in the calling package's folder, for a test file's
// package-level fixtures. A missing fixture panics with its path, before any test runs.
func Fixture(name string) string {
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		panic(fmt.Sprintf("fixture: %v", err))
	}
	return string(b)
}
