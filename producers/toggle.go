package producers

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// SetEnabled returns plugins.yaml with one plugin's `enabled` set, every other entry, key
// and comment left as it was. It is the one-plugin rollback: the deployment guide's quick
// rollback replaces the whole file with a single disabled entry, which under khook's
// whole-file semantics stops every other plugin too.
//
// An unknown name is an error that lists the plugins the file has, and the result must
// still parse, so a rollback can never leave a file the producers would refuse.
func SetEnabled(b []byte, name string, enabled bool) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("plugins: %w", err)
	}
	if len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("plugins: not a mapping with a plugins list")
	}
	list := mapValue(doc.Content[0], "plugins")
	if list == nil || list.Kind != yaml.SequenceNode {
		return nil, errors.New("plugins: no plugins list")
	}
	var names []string
	var entry *yaml.Node
	for _, item := range list.Content {
		if item.Kind != yaml.MappingNode {
			continue
		}
		if n := mapValue(item, "name"); n != nil {
			names = append(names, n.Value)
			if n.Value == name {
				entry = item
			}
		}
	}
	if entry == nil {
		slices.Sort(names)
		return nil, fmt.Errorf("no plugin %q in plugins.yaml (it has: %s)", name, strings.Join(names, ", "))
	}
	value := fmt.Sprint(enabled)
	if v := mapValue(entry, "enabled"); v != nil {
		// A plain boolean, whatever it was before: the chart renders `enabled: 'true'`.
		v.Kind, v.Tag, v.Style, v.Value = yaml.ScalarNode, "!!bool", 0, value
	} else {
		entry.Content = append(entry.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "enabled"},
			&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: value})
	}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("plugins: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("plugins: %w", err)
	}
	// ${VAR} references stay as written; only the structure is checked here.
	if _, err := ParseSpecs(out.Bytes(), func(string) (string, bool) { return "set", true }); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// mapValue returns the value of key in a YAML mapping node, or nil.
func mapValue(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}
