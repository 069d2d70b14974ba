package strictyaml

import (
	"reflect"
	"strings"
	"testing"

	"github.com/goccy/go-yaml/ast"
	"github.com/stretchr/testify/require"
)

type inner struct {
	Port    int               `yaml:"port"`
	Enabled bool              `yaml:"enabled"`
	Labels  map[string]string `yaml:"labels"`
}

type outer struct {
	Name   string         `yaml:"name"`
	Inner  inner          `yaml:"inner"`
	Items  []inner        `yaml:"items"`
	Raw    ast.Node       `yaml:"raw"`
	Extra  map[string]any `yaml:",inline"`
	Ratio  float64        `yaml:"ratio"`
	Hidden string         `yaml:"-"`
}

type closed struct {
	Name  string `yaml:"name"`
	Inner inner  `yaml:"inner"`
}

// Syntax errors name the line and column where the problem is, not a line early as yaml.v3
// did, and show the lines around it.
func TestSyntaxErrorsPointAtTheirLine(t *testing.T) {
	_, err := Document([]byte("a: 1\nb: [1, 2\nc: 3\n"))
	require.ErrorContains(t, err, "line 3, column 1: ',' or ']' must be specified")
	require.ErrorContains(t, err, ">  3 | c: 3")

	_, err = Document([]byte("a: 1\nb: \"open\n"))
	require.ErrorContains(t, err, "line 2, column 4: ")

	_, err = Documents([]byte("a: 1\n---\nb: [\n"))
	require.ErrorContains(t, err, "line 3")

	// A tab says what it is, and what to do.
	_, err = Document([]byte("dispatcher:\n\tworkers: 4\n"))
	require.ErrorContains(t, err, "line 2, column 1: a tab: YAML does not allow tabs for indentation, indent with spaces")
}

// Every mistake of a document is reported at once, each with its line and column, and a
// mistyped key gets the nearest known one.
func TestDecodeReportsEveryMistake(t *testing.T) {
	doc, err := Document([]byte(`name: x
inner:
  prot: 1
  enabled: sometimes
items:
  - port: eighty
  - labels: [a, b]
ratio: high
`))
	require.NoError(t, err)
	var c closed
	err = Decode(doc, &c)
	require.Error(t, err)
	for _, want := range []string{
		`line 3, column 3: unknown key "prot" in inner (did you mean "port"?)`,
		`line 4, column 12: inner.enabled: want true or false, got the text "sometimes"`,
		`line 5, column 1: unknown key "items" (known keys: inner, name)`,
	} {
		require.ErrorContains(t, err, want)
	}

	var o outer
	err = Decode(doc, &o)
	require.Error(t, err)
	for _, want := range []string{
		`line 6, column 11: items[0].port: want a whole number, got the text "eighty"`,
		`line 7, column 13: items[1].labels: want a mapping, got a list`,
		`line 8, column 8: ratio: want a number, got the text "high"`,
	} {
		require.ErrorContains(t, err, want)
	}
}

// A struct with an inline map takes any other key; an ast.Node field is kept for its owner
// to decode; a valid document decodes.
func TestDecodeOpenStructsAndRawNodes(t *testing.T) {
	doc, err := Document([]byte("name: x\nsomething: else\nraw: {any: [thing]}\ninner: {port: 8080, enabled: true, labels: {a: b}}\nratio: 2\n"))
	require.NoError(t, err)
	var o outer
	require.NoError(t, Decode(doc, &o))
	require.Equal(t, "x", o.Name)
	require.Equal(t, "else", o.Extra["something"])
	require.Equal(t, inner{Port: 8080, Enabled: true, Labels: map[string]string{"a": "b"}}, o.Inner)
	require.Equal(t, 2.0, o.Ratio)
	require.IsType(t, &ast.MappingNode{}, o.Raw)
	require.Equal(t, 3, Line(o.Raw))

	// Only the keys are checked by CheckKeys: plugin settings take numbers as text.
	doc, err = Document([]byte("port: \"8080\"\nenabled: 'true'\n"))
	require.NoError(t, err)
	require.NoError(t, CheckKeys(doc, typeOf[inner]()))

	empty, err := Document([]byte("# nothing\n"))
	require.NoError(t, err)
	require.Nil(t, empty)
	require.NoError(t, Decode(empty, &o))
}

func TestNearest(t *testing.T) {
	keys := []string{"suppression_window", "workers", "max_attempts", "target"}
	require.Equal(t, "workers", Nearest("wokrers", keys), "a swap is one edit")
	require.Equal(t, "suppression_window", Nearest("suppressionWindow", keys), "case and underscores do not count")
	require.Equal(t, "max_attempts", Nearest("max_attempt", keys))
	require.Empty(t, Nearest("colour", keys), "nothing near")
}

func typeOf[T any]() reflect.Type { return reflect.TypeOf((*T)(nil)).Elem() }

// Anchors and aliases, and quoted keys, are ordinary YAML: a repeated value is checked where
// it is anchored, and a key is its text, quoted or not.
func TestDecodeAnchorsAliasesAndQuotedKeys(t *testing.T) {
	doc, err := Document([]byte("inner: &base {port: 8080, enabled: true}\nitems: [*base, {port: 1}]\n\"name\": x\n"))
	require.NoError(t, err)
	var o outer
	require.NoError(t, Decode(doc, &o))
	require.Equal(t, "x", o.Name)
	require.Equal(t, []inner{{Port: 8080, Enabled: true}, {Port: 1}}, o.Items)

	doc, err = Document([]byte("inner: &base {prot: 8080}\nitems: [*base]\n"))
	require.NoError(t, err)
	err = Decode(doc, &o)
	require.ErrorContains(t, err, `line 1, column 15: unknown key "prot" in inner (did you mean "port"?)`)
	require.Equal(t, 1, strings.Count(err.Error(), "unknown key"), "reported where it is anchored, once")
}
