package producers

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/goccy/go-yaml/ast"

	"github.com/khook/khook/internal/strictyaml"
)

// SetEnabled returns plugins.yaml with one plugin's `enabled` set, every other entry, key
// and comment left as it was. It is the one-plugin rollback: the deployment guide's quick
// rollback replaces the whole file with a single disabled entry, which under khook's
// whole-file semantics stops every other plugin too.
//
// The file is edited as text at the positions the parser found, rather than re-rendered, so
// that nothing but the one value changes: not the quoting, not the comments, not the blank
// lines. An unknown name is an error that lists the plugins the file has, and the result must
// still parse, so a rollback can never leave a file the producers would refuse.
func SetEnabled(b []byte, name string, enabled bool) ([]byte, error) {
	root, err := strictyaml.Document(b)
	if err != nil {
		return nil, fmt.Errorf("plugins: %w", err)
	}
	doc, ok := root.(*ast.MappingNode)
	if !ok {
		return nil, errors.New("plugins: not a mapping with a plugins list")
	}
	list, ok := mapValue(doc, "plugins").(*ast.SequenceNode)
	if !ok {
		return nil, errors.New("plugins: no plugins list")
	}
	var names []string
	var entry *ast.MappingNode
	var nameKey *ast.MappingValueNode
	for _, item := range list.Values {
		m, ok := item.(*ast.MappingNode)
		if !ok {
			continue
		}
		for _, kv := range m.Values {
			if strictyaml.Text(kv.Key) != "name" {
				continue
			}
			n := strictyaml.Text(kv.Value)
			names = append(names, n)
			if n == name {
				entry, nameKey = m, kv
			}
		}
	}
	if entry == nil {
		slices.Sort(names)
		return nil, fmt.Errorf("no plugin %q in plugins.yaml (it has: %s)", name, strings.Join(names, ", "))
	}

	lines := strings.SplitAfter(string(b), "\n")
	value := fmt.Sprint(enabled)
	if v := mapValue(entry, "enabled"); v != nil {
		// A plain boolean, whatever it was before: the chart renders `enabled: 'true'`.
		pos := v.GetToken().Position
		line := lines[pos.Line-1]
		start := pos.Column - 1
		lines[pos.Line-1] = line[:start] + value + line[start+scalarLen(line[start:]):]
	} else if entry.IsFlowStyle {
		// {name: x, config: {...}}: the key goes before the closing brace.
		pos := entry.End.Position
		line := lines[pos.Line-1]
		lines[pos.Line-1] = line[:pos.Column-1] + ", enabled: " + value + line[pos.Column-1:]
	} else {
		// A new line under `name:`, at its indentation.
		pos := nameKey.Key.GetToken().Position
		added := strings.Repeat(" ", pos.Column-1) + "enabled: " + value + "\n"
		if !strings.HasSuffix(lines[pos.Line-1], "\n") {
			lines[pos.Line-1] += "\n"
		}
		lines = slices.Insert(lines, pos.Line, added)
	}
	out := []byte(strings.Join(lines, ""))
	// ${VAR} references stay as written; only the structure is checked here.
	if _, err := ParseSpecs(out, func(string) (string, bool) { return "set", true }); err != nil {
		return nil, err
	}
	return out, nil
}

// scalarLen is the length of the scalar at the start of s, with its quotes.
func scalarLen(s string) int {
	if s != "" && (s[0] == '\'' || s[0] == '"') {
		if end := strings.IndexByte(s[1:], s[0]); end >= 0 {
			return end + 2
		}
	}
	if end := strings.IndexAny(s, " \t\r\n#,}"); end >= 0 {
		return end
	}
	return len(s)
}

// mapValue returns the value of key in a YAML mapping, or nil.
func mapValue(m *ast.MappingNode, key string) ast.Node {
	for _, kv := range m.Values {
		if strictyaml.Text(kv.Key) == key {
			return kv.Value
		}
	}
	return nil
}
