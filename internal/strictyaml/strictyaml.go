// Package strictyaml decodes YAML files so that every mistake names its line: unknown keys
// are errors (yaml.v3 reports them only at the decoder level, and without the file's line
// once a node is decoded on its own), and type errors keep the file's line numbers.
package strictyaml

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// Decode decodes node into out (a pointer to a struct) after checking that every key of
// node, and of nested structs, is a field of out. Map-typed fields accept any keys.
func Decode(node *yaml.Node, out any) error {
	if err := checkKeys(node, reflect.TypeOf(out).Elem()); err != nil {
		return err
	}
	if err := node.Decode(out); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return errors.New(strings.Join(te.Errors, "; "))
		}
		return err
	}
	return nil
}

// CheckKeys reports every key of node, and of nested structs, that is not a field of t (by
// yaml tag), naming each key's line.
func CheckKeys(node *yaml.Node, t reflect.Type) error { return checkKeys(node, t) }

// Document parses b into its top-level node, with the file's line numbers.
func Document(b []byte) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	if doc.Kind == 0 {
		return &yaml.Node{Kind: yaml.MappingNode}, nil
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		return doc.Content[0], nil
	}
	return &doc, nil
}

var nodeType = reflect.TypeOf(yaml.Node{})

// openKey marks a struct with an inline map, which accepts any key. It cannot be a YAML key
// because it is not valid UTF-8 text a user would type.
const openKey = "\x00open"

func checkKeys(node *yaml.Node, t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nodeType {
		// A yaml.Node field is decoded later by its owner, with its own type.
		return nil
	}
	if node.Kind == yaml.AliasNode {
		node = node.Alias
	}
	switch {
	case t.Kind() == reflect.Struct && node.Kind == yaml.MappingNode:
		fields := yamlFields(t)
		_, open := fields[openKey]
		var errs []error
		for i := 0; i+1 < len(node.Content); i += 2 {
			k, v := node.Content[i], node.Content[i+1]
			ft, ok := fields[k.Value]
			if !ok && open {
				continue
			}
			if !ok {
				errs = append(errs, fmt.Errorf("line %d: unknown key %q (known: %s)", k.Line, k.Value, knownKeys(fields)))
				continue
			}
			errs = append(errs, checkKeys(v, ft))
		}
		return errors.Join(errs...)
	case (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) && node.Kind == yaml.SequenceNode:
		var errs []error
		for _, item := range node.Content {
			errs = append(errs, checkKeys(item, t.Elem()))
		}
		return errors.Join(errs...)
	}
	// Maps, scalars and mismatched kinds are left to yaml's own type checks.
	return nil
}

func yamlFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if strings.Contains(opts, "inline") && f.Type.Kind() == reflect.Map {
			// An inline map collects every other key: the struct is open.
			fields[openKey] = f.Type
			continue
		}
		if strings.Contains(opts, "inline") {
			for k, v := range yamlFields(f.Type) {
				fields[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fields[name] = f.Type
	}
	return fields
}

func knownKeys(fields map[string]reflect.Type) string {
	delete(fields, openKey)
	return strings.Join(slices.Sorted(maps.Keys(fields)), ", ")
}
