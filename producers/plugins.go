package producers

import (
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"

	"github.com/khook/khook/internal/duration"
	"github.com/khook/khook/internal/strictyaml"
)

// Spec is one entry of plugins.yaml, in the deployment guide's format:
//
//	plugins:
//	  - name: webhook
//	    enabled: true
//	    config: {port: 8090, path: /webhook}
type Spec struct {
	Name    string   `yaml:"name"`
	Enabled flexBool `yaml:"enabled"`
	Config  ast.Node `yaml:"config"`
}

// IsEnabled reports whether the plugin should run; a plugin without `enabled` runs.
func (s Spec) IsEnabled() bool { return !s.Enabled.set || s.Enabled.value }

// flexBool accepts true/false and their string forms, because Helm's tpl renders the
// guide's `enabled: "{{ .Values.webhook.enabled }}"` as a string.
type flexBool struct{ set, value bool }

func (b *flexBool) UnmarshalYAML(n ast.Node) error {
	v, err := strconv.ParseBool(strings.TrimSpace(strictyaml.Text(n)))
	if err != nil {
		return fmt.Errorf("line %d: enabled: want true or false, got %s", strictyaml.Line(n), strictyaml.Text(n))
	}
	b.set, b.value = true, v
	return nil
}

type pluginsFile struct {
	Plugins []Spec `yaml:"plugins"`
}

// ParseSpecs reads plugins.yaml. Every `${VAR}` in a plugin's config is replaced by the
// environment variable VAR, read through lookup; an unset variable is an error naming the
// plugin and line, so a missing secret fails at start rather than at first use.
func ParseSpecs(b []byte, lookup func(string) (string, bool)) ([]Spec, error) {
	doc, err := strictyaml.Document(b)
	if err != nil {
		return nil, fmt.Errorf("plugins: %w", err)
	}
	var f pluginsFile
	if err := strictyaml.Decode(doc, &f); err != nil {
		return nil, fmt.Errorf("plugins: %w", err)
	}
	seen := map[string]bool{}
	for i := range f.Plugins {
		s := &f.Plugins[i]
		if s.Name == "" {
			return nil, fmt.Errorf("plugins[%d]: name: required", i)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("plugins[%d]: plugin %q is listed twice", i, s.Name)
		}
		seen[s.Name] = true
		if err := expandEnv(s.Config, lookup); err != nil {
			return nil, fmt.Errorf("plugins.%s.config: %w", s.Name, err)
		}
	}
	return f.Plugins, nil
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

func expandEnv(n ast.Node, lookup func(string) (string, bool)) error {
	switch v := n.(type) {
	case *ast.StringNode:
		var missing []string
		refs := envRef.FindAllString(v.Value, -1)
		v.Value = envRef.ReplaceAllStringFunc(v.Value, func(ref string) string {
			name := envRef.FindStringSubmatch(ref)[1]
			value, ok := lookup(name)
			if !ok {
				missing = append(missing, name)
			}
			return value
		})
		if len(missing) > 0 {
			return fmt.Errorf("line %d: environment variable %s is not set", strictyaml.Line(v), strings.Join(missing, ", "))
		}
		if len(refs) > 0 && strings.TrimSpace(v.Value) == "" {
			// ${VAR} is how secrets reach plugins.yaml; one that is set but empty would turn
			// the check it feeds off (an endpoint with no token), so it fails closed here.
			return fmt.Errorf("line %d: %s is set but empty", strictyaml.Line(v), strings.Join(refs, ""))
		}
	case *ast.LiteralNode:
		return expandEnv(v.Value, lookup)
	case *ast.AnchorNode:
		return expandEnv(v.Value, lookup)
	case *ast.TagNode:
		return expandEnv(v.Value, lookup)
	case *ast.MappingNode:
		for _, kv := range v.Values {
			if err := expandEnv(kv.Value, lookup); err != nil {
				return err
			}
		}
	case *ast.SequenceNode:
		for _, item := range v.Values {
			if err := expandEnv(item, lookup); err != nil {
				return err
			}
		}
	}
	return nil
}

// DecodeConfig decodes the plugin's config into out, a pointer to a struct with yaml tags.
// Unknown keys are errors naming their line. Numbers, booleans and durations may also be
// given as strings, as Helm templates render them.
func (s Spec) DecodeConfig(out any) error {
	if s.Config == nil {
		return nil
	}
	if err := strictyaml.CheckKeys(s.Config, reflect.TypeOf(out).Elem()); err != nil {
		return fmt.Errorf("plugins.%s.config: %w", s.Name, err)
	}
	var m map[string]any
	if err := yaml.NodeToValue(s.Config, &m); err != nil {
		return fmt.Errorf("plugins.%s.config: %w", s.Name, err)
	}
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		TagName:          "yaml",
		WeaklyTypedInput: true,
		// Embedded structs (`yaml:",inline"`) share their parent's keys.
		Squash:     true,
		DecodeHook: duration.DecodeHook,
		Result:     out,
	})
	if err != nil {
		return err
	}
	if err := dec.Decode(m); err != nil {
		return fmt.Errorf("plugins.%s.config (line %d): %w", s.Name, strictyaml.Line(s.Config), err)
	}
	return nil
}
