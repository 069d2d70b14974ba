// Package strictyaml is the one way khook reads its YAML files (khook.yaml, plugins.yaml,
// event-mappings.yaml, hooks.yaml), so that every mistake in any of them is reported the same
// way: with its line and column, all mistakes of a file at once, and a suggestion for a
// mistyped key. It parses with github.com/goccy/go-yaml, whose positions are exact (the
// archived gopkg.in/yaml.v3 reported many syntax errors a line early).
package strictyaml

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// Document parses b and returns its first document's top node, or nil for an empty file.
func Document(b []byte) (ast.Node, error) {
	docs, err := Documents(b)
	if err != nil || len(docs) == 0 {
		return nil, err
	}
	return docs[0], nil
}

// Documents parses b, which may hold several documents separated by ---, and returns each
// document's top node (nil for an empty document).
func Documents(b []byte) ([]ast.Node, error) {
	f, err := parser.ParseBytes(b, 0)
	if err != nil {
		return nil, positioned(err)
	}
	docs := make([]ast.Node, 0, len(f.Docs))
	for _, d := range f.Docs {
		body := d.Body
		if body != nil && body.Type() == ast.NullType {
			body = nil
		}
		docs = append(docs, body)
	}
	return docs, nil
}

// positioned rewrites goccy's "[3:1] message" with the source excerpt into
// "line 3, column 1: message", followed by the excerpt that points at the column.
func positioned(err error) error {
	var ye yaml.Error
	if !errors.As(err, &ye) || ye.GetToken() == nil {
		return err
	}
	pos := ye.GetToken().Position
	excerpt := ye.FormatError(false, true)
	if _, rest, ok := strings.Cut(excerpt, "\n"); ok {
		excerpt = strings.TrimRight(rest, "\n")
	} else {
		excerpt = ""
	}
	what := ye.GetMessage()
	if strings.Contains(what, "'\t'") {
		// The parser's words for a tab ("found character '\t' that cannot start any token")
		// do not say what to do about it.
		what = "a tab: YAML does not allow tabs for indentation, indent with spaces"
	}
	msg := fmt.Sprintf("line %d, column %d: %s", pos.Line, pos.Column, what)
	if excerpt != "" {
		msg += "\n" + excerpt
	}
	return errors.New(msg)
}

// LineOf returns the line of the key that path names below node ("spec.items[2].name": the
// line of that item's name key), or of the nearest part of the path that exists; 0 when
// node is nil.
func LineOf(node ast.Node, path string) int {
	line := Line(node)
	n := node
	for _, part := range strings.Split(path, ".") {
		name, index, hasIndex := strings.Cut(part, "[")
		m, ok := unwrap(n).(*ast.MappingNode)
		if !ok {
			return line
		}
		found := false
		for _, kv := range m.Values {
			if Text(kv.Key) == name {
				n, line, found = kv.Value, Line(kv.Key), true
				break
			}
		}
		if !found {
			return line
		}
		if hasIndex {
			i, err := strconv.Atoi(strings.TrimSuffix(index, "]"))
			seq, ok := unwrap(n).(*ast.SequenceNode)
			if err != nil || !ok || i < 0 || i >= len(seq.Values) {
				return line
			}
			n = seq.Values[i]
			line = Line(n)
		}
	}
	return line
}

// Line is the line node starts on (0 for a nil node).
func Line(n ast.Node) int {
	if n == nil || n.GetToken() == nil {
		return 0
	}
	return n.GetToken().Position.Line
}

// At is an error about node n: msg, prefixed with n's line and column.
func At(n ast.Node, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if n == nil || n.GetToken() == nil {
		return errors.New(msg)
	}
	p := n.GetToken().Position
	return fmt.Errorf("line %d, column %d: %s", p.Line, p.Column, msg)
}

// Decode decodes node into out (a pointer to a struct) after checking every key and value
// against out's type: unknown keys, and values of the wrong kind, are all reported at once,
// each with its line and column. A nil node leaves out as it is.
func Decode(node ast.Node, out any) error {
	if node == nil {
		return nil
	}
	if err := (checker{values: true}).check(node, reflect.TypeOf(out).Elem(), ""); err != nil {
		return err
	}
	if err := yaml.NodeToValue(node, out); err != nil {
		return positioned(err)
	}
	return nil
}

// CheckKeys reports every key of node, and of nested structs, that is not a field of t (by
// yaml tag), with the nearest known key as a suggestion, and every value whose shape cannot
// be its field's (a mapping where one value is wanted). Scalars are not checked: plugin
// settings take numbers and booleans as text too, because Helm templates render them so.
func CheckKeys(node ast.Node, t reflect.Type) error { return checker{}.check(node, t, "") }

// checker walks a node against a Go type. With values set, it also checks each scalar's
// kind (text where a number is wanted), as Decode does.
type checker struct{ values bool }

var (
	astNodeType  = reflect.TypeOf((*ast.Node)(nil)).Elem()
	unmarshalers = []reflect.Type{reflect.TypeOf((*yaml.NodeUnmarshaler)(nil)).Elem(), reflect.TypeOf((*yaml.BytesUnmarshaler)(nil)).Elem(), reflect.TypeOf((*yaml.InterfaceUnmarshaler)(nil)).Elem()}
)

// decodesItself reports whether t reads its own YAML, so its shape is its own business.
func decodesItself(t reflect.Type) bool {
	for _, u := range unmarshalers {
		if t.Implements(u) || reflect.PointerTo(t).Implements(u) {
			return true
		}
	}
	return false
}

// check walks node against t; key is the dotted path of node, for messages.
func (c checker) check(node ast.Node, t reflect.Type, key string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	node = unwrap(node)
	if _, alias := node.(*ast.AliasNode); alias {
		// *name repeats an anchored value, which is checked where it is defined.
		return nil
	}
	if node == nil || node.Type() == ast.NullType || t == astNodeType || t.Kind() == reflect.Interface || decodesItself(t) {
		// An ast.Node field is decoded later by its owner, with its own type; null is
		// the zero value of anything.
		return nil
	}
	name := key
	if name == "" {
		name = "the document"
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := node.(*ast.MappingNode)
		if !ok {
			if t.String() == "time.Time" {
				return nil
			}
			return At(node, "%s: want a mapping of keys, got %s", name, describe(node))
		}
		fields := yamlFields(t)
		_, open := fields[openKey]
		var errs []error
		for _, kv := range m.Values {
			k := Text(kv.Key)
			if k == "<<" {
				continue // a merge key: its mapping is checked where it is defined
			}
			ft, known := fields[k]
			switch {
			case !known && open:
			case !known:
				errs = append(errs, At(kv.Key, "unknown key %q%s%s", k, in(key), suggest(k, fields)))
			default:
				errs = append(errs, c.check(kv.Value, ft, join(key, k)))
			}
		}
		return errors.Join(errs...)
	case reflect.Map:
		m, ok := node.(*ast.MappingNode)
		if !ok {
			return At(node, "%s: want a mapping, got %s", name, describe(node))
		}
		var errs []error
		for _, kv := range m.Values {
			errs = append(errs, c.check(kv.Value, t.Elem(), join(key, Text(kv.Key))))
		}
		return errors.Join(errs...)
	case reflect.Slice, reflect.Array:
		s, ok := node.(*ast.SequenceNode)
		if !ok {
			return At(node, "%s: want a list, got %s", name, describe(node))
		}
		var errs []error
		for i, item := range s.Values {
			errs = append(errs, c.check(item, t.Elem(), fmt.Sprintf("%s[%d]", key, i)))
		}
		return errors.Join(errs...)
	}
	switch node.(type) {
	case *ast.MappingNode, *ast.SequenceNode:
		return At(node, "%s: want a single value, got %s", name, describe(node))
	}
	if !c.values {
		return nil
	}
	return checkScalar(node, t, name)
}

// checkScalar checks a value meant for a field of scalar kind t.
func checkScalar(node ast.Node, t reflect.Type, name string) error {
	switch t.Kind() {
	case reflect.Bool:
		if _, ok := node.(*ast.BoolNode); !ok {
			return At(node, "%s: want true or false, got %s", name, describe(node))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if t.String() == "time.Duration" {
			if _, ok := node.(*ast.StringNode); !ok {
				return At(node, "%s: want a duration with its unit, such as 30s or 10m, got %s", name, describe(node))
			}
			return nil
		}
		if _, ok := node.(*ast.IntegerNode); !ok {
			return At(node, "%s: want a whole number, got %s", name, describe(node))
		}
	case reflect.Float32, reflect.Float64:
		switch node.(type) {
		case *ast.IntegerNode, *ast.FloatNode:
		default:
			return At(node, "%s: want a number, got %s", name, describe(node))
		}
	}
	return nil
}

// unwrap is the value under an anchor (&name) or a tag (!!str).
func unwrap(n ast.Node) ast.Node {
	for {
		switch v := n.(type) {
		case *ast.AnchorNode:
			n = v.Value
		case *ast.TagNode:
			n = v.Value
		default:
			return n
		}
	}
}

// describe names what a node is, for "want X, got Y".
func describe(n ast.Node) string {
	switch v := n.(type) {
	case *ast.MappingNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.StringNode:
		return fmt.Sprintf("the text %q", v.Value)
	default:
		return Text(n)
	}
}

// Text is a scalar node as text: a string without its quotes, any other scalar (a number,
// a boolean, a mapping key) as written.
func Text(n ast.Node) string {
	if s, ok := n.(*ast.StringNode); ok {
		return s.Value
	}
	return strings.TrimSpace(n.String())
}

// in says where a key is, for messages about keys below the top level.
func in(key string) string {
	if key == "" {
		return ""
	}
	return " in " + key
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// openKey marks a struct with an inline map, which accepts any key. It cannot be a YAML key
// because it is not valid UTF-8 text a user would type.
const openKey = "\x00open"

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
			maps.Copy(fields, yamlFields(f.Type))
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fields[name] = f.Type
	}
	return fields
}

// suggest names the known key nearest to an unknown one, or lists the known keys when none
// is near: a typo gets "did you mean", a wrong guess gets the menu.
func suggest(key string, fields map[string]reflect.Type) string {
	known := slices.Sorted(maps.Keys(fields))
	known = slices.DeleteFunc(known, func(k string) bool { return k == openKey })
	if near := Nearest(key, known); near != "" {
		return fmt.Sprintf(" (did you mean %q?)", near)
	}
	return " (known keys: " + strings.Join(known, ", ") + ")"
}

// Nearest returns the candidate closest to s by edit distance, ignoring case, underscores
// and dashes, if it is close enough to be a typo (at most a third of its length away).
func Nearest(s string, candidates []string) string {
	norm := func(x string) string {
		return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(x))
	}
	best, bestDist := "", -1
	for _, c := range candidates {
		d := Distance(norm(s), norm(c))
		if bestDist < 0 || d < bestDist {
			best, bestDist = c, d
		}
	}
	if bestDist < 0 || bestDist > max(1, len(s)/3) {
		return ""
	}
	return best
}

// distance is the edit distance between a and b in which swapping two neighbouring letters,
// the commonest typo, counts as one edit (optimal string alignment).
// Distance is the Levenshtein distance between a and b: how many single-byte edits turn one
// into the other.
func Distance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
