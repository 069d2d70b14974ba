package test

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/stretchr/testify/require"
)

var updateValues = flag.Bool("update-values", false, "rewrite helm/khook/README.md's values reference from values.yaml")

// The values reference in helm/khook/README.md sits between these markers; the rest of the
// README is written by hand.
const (
	valuesBegin = "<!-- values reference: generated from values.yaml by TestChartValuesReference; do not edit -->"
	valuesEnd   = "<!-- end of values reference -->"
)

// TestChartValuesReference keeps the chart README's table of values (key, type, default,
// description) what values.yaml and its comments say, and every value described: a value
// added without a comment fails here. Run with -update-values to rewrite the table.
func TestChartValuesReference(t *testing.T) {
	values, err := os.ReadFile(filepath.Join("..", "helm", "khook", "values.yaml"))
	require.NoError(t, err)
	table, undescribed, err := valuesReference(values)
	require.NoError(t, err)
	require.Empty(t, undescribed, "values without a comment in values.yaml")
	readme := filepath.Join("..", "helm", "khook", "README.md")
	b, err := os.ReadFile(readme)
	require.NoError(t, err)
	before, rest, ok := strings.Cut(string(b), valuesBegin)
	require.True(t, ok, "helm/khook/README.md has the marker %q", valuesBegin)
	_, after, ok := strings.Cut(rest, valuesEnd)
	require.True(t, ok, "helm/khook/README.md has the marker %q", valuesEnd)
	want := before + valuesBegin + "\n" + table + valuesEnd + after
	if *updateValues {
		require.NoError(t, os.WriteFile(readme, []byte(want), 0o644))
		return
	}
	require.Equal(t, want, string(b), "helm/khook/README.md's values reference is stale: go test ./test -run TestChartValuesReference -update-values")
}

// valuesReference renders values.yaml as a Markdown table: one row per value (a mapping is
// its values, unless it is empty), with the comment right above its key as its description.
// It also returns the keys that have no comment.
func valuesReference(values []byte) (table string, undescribed []string, err error) {
	f, err := parser.ParseBytes(values, parser.ParseComments)
	if err != nil {
		return "", nil, err
	}
	var b strings.Builder
	b.WriteString("| key | type | default | description |\n| --- | --- | --- | --- |\n")
	var walk func(n ast.Node, prefix string) error
	walk = func(n ast.Node, prefix string) error {
		m, ok := n.(*ast.MappingNode)
		if !ok {
			return fmt.Errorf("%s: want a mapping", prefix)
		}
		for _, kv := range m.Values {
			key := prefix + kv.Key.String()
			if sub, ok := kv.Value.(*ast.MappingNode); ok && len(sub.Values) > 0 {
				if err := walk(sub, key+"."); err != nil {
					return err
				}
				continue
			}
			desc := description(kv)
			if desc == "" {
				undescribed = append(undescribed, key)
			}
			typ, def, err := typeAndDefault(kv.Value)
			if err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", key, typ, def, markdownText(desc))
		}
		return nil
	}
	if len(f.Docs) == 0 {
		return "", nil, fmt.Errorf("values.yaml is empty")
	}
	if err := walk(f.Docs[0].Body, ""); err != nil {
		return "", nil, err
	}
	return b.String(), undescribed, nil
}

// description is the comment right above a key: its comment lines that run without a gap
// to the key's own line (a paragraph above a blank line is about the file or a section),
// joined into one line.
func description(kv *ast.MappingValueNode) string {
	group := kv.GetComment()
	if group == nil {
		return ""
	}
	var lines []string
	next := kv.Key.GetToken().Position.Line
	for i := len(group.Comments) - 1; i >= 0; i-- {
		c := group.Comments[i]
		if c.Token.Position.Line != next-1 {
			break
		}
		next = c.Token.Position.Line
		lines = append([]string{strings.TrimSpace(strings.TrimPrefix(c.Token.Value, "#"))}, lines...)
	}
	return strings.Join(lines, " ")
}

// typeAndDefault names a value's type and renders its default for the table.
func typeAndDefault(n ast.Node) (string, string, error) {
	var v any
	if err := yaml.NodeToValue(n, &v); err != nil {
		return "", "", err
	}
	typ := "string"
	switch v.(type) {
	case bool:
		typ = "bool"
	case int, int64, uint64:
		typ = "int"
	case float64:
		typ = "number"
	case []any:
		typ = "list"
	case map[string]any:
		typ = "map"
	}
	j, err := json.Marshal(v)
	if err != nil {
		return "", "", err
	}
	def := "`" + string(j) + "`"
	if len(j) > 60 {
		def = "see values.yaml"
	}
	return typ, def, nil
}

// markdownText escapes what Markdown would not show as written outside code spans: a pipe
// ends a table cell, and <release> would be taken for an HTML tag.
func markdownText(s string) string {
	var b strings.Builder
	code := false
	for _, r := range s {
		switch {
		case r == '`':
			code = !code
			b.WriteRune(r)
		case r == '|':
			b.WriteString(`\|`)
		case r == '<' && !code:
			b.WriteString("&lt;")
		case r == '>' && !code:
			b.WriteString("&gt;")
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
