package config

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/structs"
	"github.com/knadh/koanf/v2"
	"gopkg.in/yaml.v3"
)

// EnvPrefix prefixes every environment variable that sets a khook.yaml key: the key in upper
// case with dots as underscores, e.g. KHOOK_KAGENT_USER_ID sets kagent.user_id.
const EnvPrefix = "KHOOK_"

// legacyEnv are the environment variables khook read before khook.yaml existed.
var legacyEnv = map[string]string{
	"KAGENT_API_URL":     "kagent.url",
	"KAGENT_USER_ID":     "kagent.user_id",
	"KAGENT_API_TIMEOUT": "kagent.timeout",
	"LOG_LEVEL":          "log.level",
	"LOG_FORMAT":         "log.format",
}

// Load builds the configuration from, in increasing precedence: defaults, the file at path
// (skipped when path is empty), the legacy environment variables, KHOOK_ environment variables,
// and overrides (flags, by key). environ is os.Environ() in production.
//
// Unknown keys, in the file or the environment, are errors, and so is every invalid value;
// each error names the key and, for the file, its line.
func Load(path string, environ []string, overrides map[string]any) (Config, error) {
	known := knownKeys(reflect.TypeOf(Config{}), "")
	k := koanf.New(".")
	if err := k.Load(structs.Provider(Default(), "koanf"), nil); err != nil {
		return Config{}, fmt.Errorf("config defaults: %w", err)
	}

	lines := map[string]int{}
	if path != "" {
		m, l, err := readFile(path, known)
		if err != nil {
			return Config{}, err
		}
		lines = l
		if err := k.Load(confmap.Provider(m, "."), nil); err != nil {
			return Config{}, fmt.Errorf("%s: %w", path, err)
		}
	}

	var errs []error
	var ignored []string
	env := map[string]string{}
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		env[name] = value
		if key, ok := legacyEnv[name]; ok {
			errs = append(errs, k.Set(key, value))
		}
	}
	// Older kagent khook releases named the agent API's address KAGENT_API_BASE_URL; upstream
	// still reads it when KAGENT_API_URL is unset, and so does khook.
	if v, ok := env["KAGENT_API_BASE_URL"]; ok && env["KAGENT_API_URL"] == "" {
		errs = append(errs, k.Set("kagent.url", v))
	}
	envKeys := map[string]string{}
	for key, kind := range known {
		if kind.list != nil {
			continue // lists of settings are set in the file only
		}
		envKeys[EnvPrefix+strings.ToUpper(strings.ReplaceAll(key, ".", "_"))] = key
	}
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		key, ok := envKeys[name]
		if !ok && serviceLink.MatchString(name) {
			// The kubelet gives every pod variables for each Service in its namespace; a
			// release named khook has Services named khook-*, hence KHOOK_WEBHOOK_PORT and
			// the like. They are not settings, and not mistakes.
			ignored = append(ignored, name)
			continue
		}
		if !ok {
			errs = append(errs, fmt.Errorf("environment %s: no such setting", name))
			continue
		}
		errs = append(errs, k.Set(key, value))
	}
	for key, v := range overrides {
		if _, ok := known[key]; !ok {
			errs = append(errs, fmt.Errorf("override %s: no such setting", key))
			continue
		}
		errs = append(errs, k.Set(key, v))
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	if err := checkDurations(k, known); err != nil {
		return Config{}, withLines(path, lines, err)
	}

	var cfg Config
	if err := k.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{Tag: "koanf"}); err != nil {
		return Config{}, withLines(path, lines, err)
	}
	if path != "" {
		dir := filepath.Dir(path)
		for _, p := range []*string{&cfg.Files.Plugins, &cfg.Files.Mappings, &cfg.Files.Hooks} {
			if *p != "" && !filepath.IsAbs(*p) {
				*p = filepath.Join(dir, *p)
			}
		}
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, withLines(path, lines, err)
	}
	cfg.IgnoredEnv = ignored
	return cfg, nil
}

// serviceLink matches the variables the kubelet injects for a Service (Docker links style):
// <NAME>_SERVICE_HOST, <NAME>_SERVICE_PORT[_<PORT NAME>], <NAME>_PORT and
// <NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR].
var serviceLink = regexp.MustCompile(`^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT|PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$`)

// readFile parses khook.yaml, rejects unknown keys, and returns the values and the line of
// every key.
func readFile(path string, known map[string]keyKind) (map[string]any, map[string]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	m := map[string]any{}
	lines := map[string]int{}
	if doc.Kind == 0 {
		return m, lines, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, nil, fmt.Errorf("%s line %d: the file must be a mapping of settings", path, root.Line)
	}
	var errs []error
	var walk func(n *yaml.Node, prefix string, known map[string]keyKind)
	walk = func(n *yaml.Node, prefix string, known map[string]keyKind) {
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := prefix + n.Content[i].Value
			v := n.Content[i+1]
			lines[key] = n.Content[i].Line
			kind, isKey := known[key]
			switch {
			case isKey && kind.list != nil:
				if v.Kind != yaml.SequenceNode {
					errs = append(errs, fmt.Errorf("%s line %d: %s: expected a list", path, v.Line, key))
					continue
				}
				itemKeys := knownKeys(kind.list, "")
				for j, item := range v.Content {
					if item.Kind != yaml.MappingNode {
						errs = append(errs, fmt.Errorf("%s line %d: %s[%d]: expected a mapping", path, item.Line, key, j))
						continue
					}
					walk(item, "", itemKeys)
				}
			case isKey:
				if v.Kind == yaml.MappingNode || (v.Kind == yaml.SequenceNode && !kind.strings) {
					errs = append(errs, fmt.Errorf("%s line %d: %s: expected a single value", path, v.Line, key))
				}
			case v.Kind == yaml.MappingNode && hasPrefix(known, key+"."):
				walk(v, key+".", known)
			default:
				errs = append(errs, fmt.Errorf("%s line %d: unknown key %s", path, n.Content[i].Line, key))
			}
		}
	}
	walk(root, "", known)
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	if err := doc.Decode(&m); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, lines, nil
}

func hasPrefix(known map[string]keyKind, prefix string) bool {
	for k := range known {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}

// keyKind describes one settable key.
type keyKind struct {
	list     reflect.Type // for a list of structs: the struct type of its items
	strings  bool         // a list of scalars
	duration bool         // a time.Duration
}

// knownKeys lists the dotted keys of every leaf setting of t, by koanf tag.
func knownKeys(t reflect.Type, prefix string) map[string]keyKind {
	keys := map[string]keyKind{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("koanf")
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		switch {
		case f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Time{}):
			for k, v := range knownKeys(f.Type, key+".") {
				keys[k] = v
			}
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
			keys[key] = keyKind{list: f.Type.Elem()}
		case f.Type.Kind() == reflect.Slice:
			keys[key] = keyKind{strings: true}
		case f.Type == reflect.TypeOf(time.Duration(0)):
			keys[key] = keyKind{duration: true}
		default:
			keys[key] = keyKind{}
		}
	}
	return keys
}

// checkDurations makes every duration setting a duration string (10m, 30s, 7d), replacing it
// with its value. A bare number is refused: YAML reads 10 as an integer, which a plain
// decoder would take as 10 nanoseconds, silently turning a window off or a retry loop hot.
func checkDurations(k *koanf.Koanf, known map[string]keyKind) error {
	var errs []error
	for _, key := range slices.Sorted(maps.Keys(known)) {
		if !known[key].duration || !k.Exists(key) {
			continue
		}
		switch v := k.Get(key).(type) {
		case time.Duration: // a default, or a flag
		case string:
			d, err := ParseDuration(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: want a duration such as 30s, 10m or 7d, got %q", key, v))
				continue
			}
			errs = append(errs, k.Set(key, d))
		default:
			errs = append(errs, fmt.Errorf("%s: want a duration with its unit, such as 30s, 10m or 7d, got the bare number %v", key, v))
		}
	}
	return errors.Join(errs...)
}

// ParseDuration reads a Go duration (300ms, 1h30m), also accepting whole days first (7d,
// 1d12h), as retention settings are usually written.
func ParseDuration(s string) (time.Duration, error) {
	days, rest, found := strings.Cut(s, "d")
	if !found {
		return time.ParseDuration(s)
	}
	n, err := strconv.Atoi(days)
	if err != nil || n < 0 || n > 36500 {
		return 0, fmt.Errorf("time: invalid duration %q", s)
	}
	d := time.Duration(n) * 24 * time.Hour
	if rest == "" {
		return d, nil
	}
	more, err := time.ParseDuration(rest)
	if err != nil {
		return 0, fmt.Errorf("time: invalid duration %q", s)
	}
	return d + more, nil
}

// keyInError finds the setting an error is about: validation errors start with the key,
// decoding errors quote it.
var keyInError = regexp.MustCompile(`^'?([a-z0-9_]+(?:\.[a-z0-9_]+)+)'?[: ]|'([a-z0-9_]+(?:\.[a-z0-9_]+)+)'`)

// withLines prefixes each line of err that names a key set in the file with that key's line.
func withLines(path string, lines map[string]int, err error) error {
	var out []string
	for _, msg := range strings.Split(err.Error(), "\n") {
		if m := keyInError.FindStringSubmatch(msg); m != nil {
			key := m[1] + m[2]
			for k := key; k != ""; k = parent(k) {
				if line, ok := lines[k]; ok {
					msg = fmt.Sprintf("%s line %d: %s", path, line, msg)
					break
				}
			}
		}
		out = append(out, msg)
	}
	return errors.New(strings.Join(out, "\n"))
}

func parent(key string) string {
	i := strings.LastIndex(key, ".")
	if i < 0 {
		return ""
	}
	return key[:i]
}

// DurationHook is a mapstructure decode hook for plugin settings: a time.Duration field
// takes a duration string (ParseDuration), never a bare number, which a weakly typed decoder
// would read as nanoseconds.
func DurationHook(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeOf(time.Duration(0)) {
		return data, nil
	}
	if s, ok := data.(string); ok {
		d, err := ParseDuration(s)
		if err != nil {
			return nil, fmt.Errorf("want a duration such as 30s, 10m or 7d, got %q", s)
		}
		return d, nil
	}
	return nil, fmt.Errorf("want a duration with its unit, such as 30s, 10m or 7d, got the bare number %v", data)
}
