// Package hooktest builds Hook indexes for tests, from hooks.yaml text or from the fixtures
// in a package's testdata/ folder.
package hooktest

import (
	"os"
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

// File reads a hooks.yaml fixture, typically testdata/NAME.yaml, failing the test when it
// cannot.
func File(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
