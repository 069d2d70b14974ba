package config

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/structs"
	"github.com/knadh/koanf/v2"

	"github.com/khook/khook/internal/duration"
	"github.com/khook/khook/internal/strictyaml"
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
	defaults := koanf.New(".")
	if err := defaults.Load(structs.Provider(Default(), "koanf"), nil); err != nil {
		return Config{}, fmt.Errorf("config defaults: %w", err)
	}
	k := defaults.Copy()

	// Every problem is collected, so that one run reports them all: a value that cannot be
	// used is reported and left at its default, and the rest is still checked.
	var errs []error
	lines := map[string]int{}
	if path != "" {
		m, l, err := readFile(path, known)
		var fileErr *fileError
		if err != nil && !errors.As(err, &fileErr) {
			return Config{}, err
		}
		errs = append(errs, err)
		lines = l
		if err := k.Load(confmap.Provider(m, "."), nil); err != nil {
			return Config{}, fmt.Errorf("%s: %w", path, err)
		}
	}

	var ignored []string
	env := map[string]string{}
	// origin names where a key's value came from when it was not the file, so that a
	// problem with it points there and not at the file's line for the same key.
	origin := map[string]string{}
	set := func(source, key, value string) {
		if err := known[key].parse(value); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", source, key, err))
			return
		}
		origin[key] = source
		errs = append(errs, k.Set(key, value))
	}
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		env[name] = value
		if key, ok := legacyEnv[name]; ok {
			set("environment "+name, key, value)
		}
	}
	// Older kagent khook releases named the agent API's address KAGENT_API_BASE_URL; upstream
	// still reads it when KAGENT_API_URL is unset, and so does khook.
	if v, ok := env["KAGENT_API_BASE_URL"]; ok && env["KAGENT_API_URL"] == "" {
		set("environment KAGENT_API_BASE_URL", "kagent.url", v)
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
			hint := ""
			if near := strictyaml.Nearest(name, slices.Collect(maps.Keys(envKeys))); near != "" {
				hint = fmt.Sprintf(" (did you mean %s?)", near)
			}
			errs = append(errs, fmt.Errorf("environment %s: no such setting%s", name, hint))
			continue
		}
		set("environment "+name, key, value)
	}
	for key, v := range overrides {
		if _, ok := known[key]; !ok {
			errs = append(errs, fmt.Errorf("override %s: no such setting", key))
			continue
		}
		origin[key] = "the command line"
		errs = append(errs, k.Set(key, v))
	}
	at := func(err error) error { return withLines(path, lines, origin, err) }
	errs = append(errs, at(checkDurations(k, defaults, known)))

	var cfg Config
	if err := k.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{Tag: "koanf"}); err != nil {
		// Values are checked above, so this is not expected; it is reported, not hidden.
		return Config{}, at(errors.Join(append(errs, err)...))
	}
	if path != "" {
		dir := filepath.Dir(path)
		for _, p := range []*string{&cfg.Files.Plugins, &cfg.Files.Mappings, &cfg.Files.Hooks} {
			if *p != "" && !filepath.IsAbs(*p) {
				*p = filepath.Join(dir, *p)
			}
		}
	}
	for _, c := range cfg.Clusters {
		cfg.Streams.Edges = append(cfg.Streams.Edges, c.Name)
	}
	errs = append(errs, at(cfg.Validate()))
	if err := inLineOrder(errs); err != nil {
		return Config{}, err
	}
	cfg.IgnoredEnv = ignored
	return cfg, nil
}

// serviceLink matches the variables the kubelet injects for a Service (Docker links style):
// <NAME>_SERVICE_HOST, <NAME>_SERVICE_PORT[_<PORT NAME>], <NAME>_PORT and
// <NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR].
var serviceLink = regexp.MustCompile(`^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT|PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$`)

// fileError is a problem with a value or key of khook.yaml, after which the rest of the
// configuration is still checked.
type fileError struct{ error }

func (e *fileError) Unwrap() error { return e.error }

// readFile parses khook.yaml and returns the values that can be used and the line of every
// key. Unknown keys and values of the wrong kind are left out and reported together, each
// with its line and column, as a *fileError; a file that cannot be read or parsed is any
// other error.
func readFile(path string, known map[string]keyKind) (map[string]any, map[string]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	root, err := strictyaml.Document(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	m := map[string]any{}
	lines := map[string]int{}
	if root == nil {
		return m, lines, nil
	}
	top, ok := root.(*ast.MappingNode)
	if !ok {
		return nil, nil, fmt.Errorf("%s line %d: the file must be a mapping of settings", path, strictyaml.Line(root))
	}
	var errs []error
	problem := func(n ast.Node, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s %w", path, strictyaml.At(n, format, args...)))
	}
	var walk func(n *ast.MappingNode, prefix string, known map[string]keyKind, out map[string]any)
	walk = func(n *ast.MappingNode, prefix string, known map[string]keyKind, out map[string]any) {
		for _, kv := range n.Values {
			key := prefix + strictyaml.Text(kv.Key)
			v := kv.Value
			lines[key] = strictyaml.Line(kv.Key)
			kind, isKey := known[key]
			switch {
			case isKey && kind.list != nil:
				seq, ok := v.(*ast.SequenceNode)
				if !ok {
					problem(v, "%s: want a list", key)
					continue
				}
				itemKeys := knownKeys(kind.list, "")
				var items []any
				good := true
				for j, item := range seq.Values {
					mi, ok := item.(*ast.MappingNode)
					if !ok {
						problem(item, "%s[%d]: want a mapping", key, j)
						good = false
						continue
					}
					before := len(errs)
					fields := map[string]any{}
					walk(mi, "", itemKeys, fields)
					// Validation names an item's keys by their index (budgets[0].agent).
					lines[fmt.Sprintf("%s[%d]", key, j)] = strictyaml.Line(mi)
					for _, f := range mi.Values {
						lines[fmt.Sprintf("%s[%d].%s", key, j, strictyaml.Text(f.Key))] = strictyaml.Line(f.Key)
					}
					good = good && len(errs) == before
					items = append(items, fields)
				}
				if good {
					out[key] = items
				}
			case isKey:
				if _, isNull := v.(*ast.NullNode); isNull {
					continue // key: with no value keeps the default
				}
				switch v.(type) {
				case *ast.MappingNode:
					problem(v, "%s: want a single value, got a mapping", key)
					continue
				case *ast.SequenceNode:
					if !kind.strings {
						problem(v, "%s: want a single value, got a list", key)
						continue
					}
				}
				var value any
				if err := yaml.NodeToValue(v, &value); err != nil {
					problem(v, "%s: %v", key, err)
					continue
				}
				if s, ok := value.(string); ok && !kind.duration {
					if err := kind.parse(s); err != nil {
						problem(v, "%s: %v", key, err)
						continue
					}
				} else if err := kind.accepts(value); err != nil {
					problem(v, "%s: %v", key, err)
					continue
				}
				out[key] = value
			case hasPrefix(known, key+"."):
				mv, ok := v.(*ast.MappingNode)
				if !ok {
					problem(v, "%s: want a mapping of settings", key)
					continue
				}
				walk(mv, key+".", known, out)
			default:
				problem(kv.Key, "unknown key %s%s", key, didYouMean(key, prefix, known))
			}
		}
	}
	walk(top, "", known, m)
	if len(errs) > 0 {
		return m, lines, &fileError{errors.Join(errs...)}
	}
	return m, lines, nil
}

// didYouMean suggests the known key at the same level nearest to a mistyped one.
func didYouMean(key, prefix string, known map[string]keyKind) string {
	var here []string
	for k := range known {
		if rest, ok := strings.CutPrefix(k, prefix); ok {
			first, _, _ := strings.Cut(rest, ".")
			here = append(here, prefix+first)
		}
	}
	if near := strictyaml.Nearest(key, here); near != "" {
		return fmt.Sprintf(" (did you mean %s?)", near)
	}
	return ""
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
	scalar   reflect.Kind // the kind of any other setting
}

// parse checks a setting given as text (an environment variable, or a quoted value in the
// file, as Helm templates render them) against the setting's kind. Durations are checked
// with the other values, by checkDurations.
func (k keyKind) parse(s string) error {
	switch k.scalar {
	case reflect.Bool:
		if _, err := strconv.ParseBool(s); err != nil {
			return fmt.Errorf("want true or false, got %q", s)
		}
	case reflect.Int, reflect.Int64, reflect.Int32:
		if _, err := strconv.Atoi(strings.TrimSpace(s)); err != nil {
			return fmt.Errorf("want a whole number, got %q", s)
		}
	case reflect.Float64:
		if _, err := strconv.ParseFloat(strings.TrimSpace(s), 64); err != nil {
			return fmt.Errorf("want a number, got %q", s)
		}
	}
	return nil
}

// accepts checks a value read from the file that is not text.
func (k keyKind) accepts(v any) error {
	if k.duration || k.strings {
		return nil // checkDurations explains a bare number; lists take any scalars
	}
	ok := true
	switch v.(type) {
	case bool:
		ok = k.scalar == reflect.Bool || k.scalar == reflect.String
	case int, int64, uint64:
		ok = k.scalar != reflect.Bool
	case float64:
		ok = k.scalar == reflect.Float64 || k.scalar == reflect.String
	}
	if ok {
		return nil
	}
	switch k.scalar {
	case reflect.Bool:
		return fmt.Errorf("want true or false, got %v", v)
	case reflect.Int, reflect.Int64, reflect.Int32:
		return fmt.Errorf("want a whole number, got %v", v)
	}
	return fmt.Errorf("want a %s, got %v", k.scalar, v)
}

// knownKeys lists the dotted keys of every leaf setting of t, by koanf tag.
func knownKeys(t reflect.Type, prefix string) map[string]keyKind {
	keys := map[string]keyKind{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, opts, _ := strings.Cut(f.Tag.Get("koanf"), ",")
		if tag == "" && strings.Contains(opts, "squash") {
			// An embedded struct whose keys sit in its parent (dispatcher's dispatch.Config).
			maps.Copy(keys, knownKeys(f.Type, prefix))
			continue
		}
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
			keys[key] = keyKind{scalar: f.Type.Kind()}
		}
	}
	return keys
}

// checkDurations makes every duration setting a duration string (10m, 30s, 7d), replacing it
// with its value. A bare number is refused: YAML reads 10 as an integer, which a plain
// decoder would take as 10 nanoseconds, silently turning a window off or a retry loop hot.
//
// A refused value is put back to its default (from defaults), so that the rest of the
// configuration can still be decoded and checked, and every problem reported at once.
func checkDurations(k, defaults *koanf.Koanf, known map[string]keyKind) error {
	var errs []error
	for _, key := range slices.Sorted(maps.Keys(known)) {
		if !known[key].duration || !k.Exists(key) {
			continue
		}
		switch v := k.Get(key).(type) {
		case time.Duration: // a default, or a flag
		case string:
			d, err := duration.Parse(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: want a duration such as 30s, 10m or 7d, got %q", key, v))
				errs = append(errs, k.Set(key, defaults.Duration(key)))
				continue
			}
			errs = append(errs, k.Set(key, d))
		default:
			errs = append(errs, fmt.Errorf("%s: want a duration with its unit, such as 30s, 10m or 7d, got the bare number %v", key, v))
			errs = append(errs, k.Set(key, defaults.Duration(key)))
		}
	}
	return errors.Join(errs...)
}

// keyInError finds the setting an error is about: validation errors start with the key,
// decoding errors quote it. A top-level key (cluster) counts only before a colon.
var keyInError = regexp.MustCompile(`^'?([a-z0-9_]+(?:\.[a-z0-9_]+|\[[0-9]+\])+)'?[: ]|'([a-z0-9_]+(?:\.[a-z0-9_]+)+)'|^([a-z0-9_]+):`)

// withLines prefixes each line of err that names a key with where its value came from: the
// environment variable or the command line that set it, else the key's line in the file.
func withLines(path string, lines map[string]int, origin map[string]string, err error) error {
	if err == nil {
		return nil
	}
	var out []string
	for _, msg := range strings.Split(err.Error(), "\n") {
		if m := keyInError.FindStringSubmatch(msg); m != nil {
			key := m[1] + m[2] + m[3] // a dotted key, a quoted one, or a top-level key (cluster)
			if src, ok := origin[key]; ok {
				out = append(out, src+": "+msg)
				continue
			}
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

// lineOf finds the file line a problem names ("khook.yaml line 12:", "line 3, column 5:").
var lineOf = regexp.MustCompile(`(?:^|\s)line (\d+)[,:]`)

// inLineOrder joins every problem into one error, those that name a line of the file in the
// order of their lines, then the others (the environment, the command line) as found. A
// problem of several lines (a YAML excerpt) stays whole.
func inLineOrder(errs []error) error {
	type problem struct {
		text string
		line int
	}
	var all []problem
	for _, err := range errs {
		if err == nil {
			continue
		}
		var parts []error
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			parts = j.Unwrap()
		} else {
			parts = []error{err}
		}
		for _, p := range parts {
			for _, text := range splitProblems(p.Error()) {
				line := math.MaxInt
				if m := lineOf.FindStringSubmatch(text); m != nil {
					line, _ = strconv.Atoi(m[1])
				}
				all = append(all, problem{text, line})
			}
		}
	}
	if len(all) == 0 {
		return nil
	}
	slices.SortStableFunc(all, func(a, b problem) int { return cmp.Compare(a.line, b.line) })
	texts := make([]string, len(all))
	for i, p := range all {
		texts[i] = p.text
	}
	return errors.New(strings.Join(texts, "\n"))
}

// splitProblems splits one error's text into its problems: a line that starts a problem,
// with the lines of its excerpt (indented, or a "|" gutter) kept with it.
func splitProblems(text string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if len(out) > 0 && (strings.HasPrefix(l, " ") || strings.HasPrefix(l, ">") || strings.HasPrefix(l, "\t")) {
			out[len(out)-1] += "\n" + l
			continue
		}
		out = append(out, l)
	}
	return out
}

func parent(key string) string {
	i := strings.LastIndexAny(key, ".[")
	if i < 0 {
		return ""
	}
	return key[:i]
}
