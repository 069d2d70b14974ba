package mapping

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/khook/khook/internal/jsonscan"
)

// Outcome says what became of one raw event. Every outcome is a metric label value.
type Outcome string

// The outcomes of mapping one raw event.
const (
	Mapped          Outcome = "mapped"
	PassedThrough   Outcome = "passthrough"         // no rule; mapped with its own type (unmapped: passthrough)
	Dropped         Outcome = "unmapped"            // no rule; counted and acknowledged (unmapped: drop)
	UnmappedDead    Outcome = "unmapped_deadletter" // no rule; dead-lettered (unmapped: deadletter)
	DisabledOutcome Outcome = "disabled"            // the rule has enabled: false
)

// Outcomes lists every Outcome, for pre-creating metric labels.
var Outcomes = []Outcome{Mapped, PassedThrough, Dropped, UnmappedDead, DisabledOutcome}

// HasEvent reports whether the outcome produces a normalized event.
func (o Outcome) HasEvent() bool { return o == Mapped || o == PassedThrough }

// passthrough is the rule an unmapped event gets under the passthrough policy.
var passthrough = &Rule{Severity: "warning"}

// Map normalizes raw with rules. The event is meaningful only when outcome.HasEvent().
//
// The namespace, resource, reason and message come from the rule's field paths when it has
// them, else from well-known fields of the event data (namespace, resourceKind or kind,
// resourceName or name, reason, message; also under "resource" and "metadata"), else from a
// CloudEvents subject of the form "namespace/kind/name".
func Map(rules *Rules, raw Raw) (Event, Outcome) {
	rule, ok := rules.lookup(raw.Source, raw.Type)
	outcome := Mapped
	if !ok {
		switch rules.unmapped {
		case Passthrough:
			rule, outcome = passthrough, PassedThrough
		case DeadLetter:
			return Event{}, UnmappedDead
		default:
			return Event{}, Dropped
		}
	}
	if !rule.IsEnabled() {
		return Event{}, DisabledOutcome
	}
	internalType := rule.InternalType
	if internalType == "" {
		internalType = raw.Type
	}
	f := extract(raw.Data, rule.paths)
	ns, kind, name := splitSubject(raw.Subject)
	return Event{
		ID:         raw.ID,
		Source:     raw.Source,
		Cluster:    raw.Cluster,
		SourceType: raw.Type,
		Type:       internalType,
		Severity:   rule.Severity,
		Tags:       rule.Tags,
		Namespace:  first(f.namespace, ns),
		Resource:   Resource{Kind: first(f.kind, kind), Name: first(f.name, name)},
		Reason:     f.reason,
		Message:    f.message,
		Time:       raw.Time,
		Data:       raw.Data,
	}, outcome
}

type fields struct {
	namespace, kind, name, reason, message string
	// resourceKind and resourceName are the well-known members of those names, read
	// before kind and name.
	resourceKind, resourceName string
}

// field is one compiled path of a rule's Fields.
type field struct {
	set    func(*fields, string)
	tokens []string
}

func compileFields(f Fields) ([]field, error) {
	var out []field
	var errs []error
	for _, spec := range []struct {
		key, path string
		set       func(*fields, string)
	}{
		{"namespace", f.Namespace, func(x *fields, v string) { x.namespace = v }},
		{"resourceKind", f.ResourceKind, func(x *fields, v string) { x.kind = v }},
		{"resourceName", f.ResourceName, func(x *fields, v string) { x.name = v }},
		{"reason", f.Reason, func(x *fields, v string) { x.reason = v }},
		{"message", f.Message, func(x *fields, v string) { x.message = v }},
	} {
		if spec.path == "" {
			continue
		}
		tokens, err := parsePath(spec.path)
		if err != nil {
			errs = append(errs, fmt.Errorf("fields.%s: %w", spec.key, err))
			continue
		}
		out = append(out, field{set: spec.set, tokens: tokens})
	}
	return out, errors.Join(errs...)
}

// parsePath reads a dotted path ("labels.namespace") or a JSON Pointer ("/labels/namespace",
// RFC 6901, where ~1 is "/" and ~0 is "~").
func parsePath(p string) ([]string, error) {
	if strings.HasPrefix(p, "/") {
		tokens := strings.Split(p[1:], "/")
		for i, t := range tokens {
			tokens[i] = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
		}
		return tokens, nil
	}
	tokens := strings.Split(p, ".")
	for _, t := range tokens {
		if t == "" {
			return nil, fmt.Errorf("path %q has an empty segment", p)
		}
	}
	return tokens, nil
}

// resolve walks tokens through the JSON value v; array elements are addressed by index, and
// of duplicate member names the last counts.
func resolve(v []byte, tokens []string) ([]byte, bool) {
	for _, t := range tokens {
		var ok bool
		switch jsonscan.KindOf(v) {
		case jsonscan.Object:
			v, ok = jsonscan.Lookup(v, t)
		case jsonscan.Array:
			i, err := strconv.Atoi(t)
			if err != nil {
				return nil, false
			}
			v, ok = jsonscan.Index(v, i)
		}
		if !ok {
			return nil, false
		}
	}
	return v, true
}

// text renders a JSON value as prompt text: strings as they are, numbers as the shortest
// decimal of their float64 value, booleans as true or false, null as nothing, objects and
// arrays as compact JSON with sorted keys.
func text(v []byte) string {
	switch jsonscan.KindOf(v) {
	case jsonscan.String:
		s, _ := jsonscan.Unquote(v)
		return s
	case jsonscan.Null:
		return ""
	case jsonscan.Bool:
		return string(v)
	case jsonscan.Number:
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil {
			return string(v) // out of float64's range: the number as written
		}
		return strconv.FormatFloat(f, 'f', -1, 64)
	default:
		// Rare (a rule that points at an object), so encoding/json's canonical form is
		// worth its cost here.
		var x any
		if json.Unmarshal(v, &x) != nil {
			return string(v)
		}
		b, _ := json.Marshal(x)
		return string(b)
	}
}

// extract reads the rule's field paths and the well-known fields from the event data, which
// the envelope's decoder has validated. It walks the data's bytes (jsonscan) instead of
// decoding it: the mapper reads five fields of every event and carries the rest as bytes.
//
// The well-known fields are the data's top-level members namespace, resourceKind or kind,
// resourceName or name, reason and message, and kind, name and namespace under "resource",
// name and namespace under "metadata". Each counts only when it is a string (under an
// object, for the two nested ones); names match exactly; of duplicates the last counts.
func extract(data json.RawMessage, paths []field) fields {
	var f fields
	v, err := jsonscan.Value(data)
	if err != nil {
		return f
	}
	for _, p := range paths {
		if x, ok := resolve(v, p.tokens); ok {
			p.set(&f, text(x))
		}
	}
	if jsonscan.KindOf(v) != jsonscan.Object {
		return f
	}
	var w, res, meta fields
	_ = jsonscan.Members(v, func(name, x []byte) error {
		switch string(name) {
		case "namespace":
			w.namespace = str(x)
		case "resourceKind":
			w.resourceKind = str(x)
		case "kind":
			w.kind = str(x)
		case "resourceName":
			w.resourceName = str(x)
		case "name":
			w.name = str(x)
		case "reason":
			w.reason = str(x)
		case "message":
			w.message = str(x)
		case "resource":
			res = nested(x)
		case "metadata":
			meta = nested(x)
		}
		return nil
	})
	f.namespace = first(f.namespace, w.namespace)
	f.kind = first(f.kind, w.resourceKind, w.kind)
	f.name = first(f.name, w.resourceName, w.name)
	f.reason = first(f.reason, w.reason)
	f.message = first(f.message, w.message)
	f.kind, f.name, f.namespace = first(f.kind, res.kind), first(f.name, res.name), first(f.namespace, res.namespace)
	f.name, f.namespace = first(f.name, meta.name), first(f.namespace, meta.namespace)
	return f
}

// str is a JSON string's text, and nothing for any other value.
func str(v []byte) string {
	s, _ := jsonscan.Unquote(v)
	return s
}

// nested reads kind, name and namespace from an object.
func nested(v []byte) fields {
	var f fields
	if jsonscan.KindOf(v) != jsonscan.Object {
		return f
	}
	_ = jsonscan.Members(v, func(name, x []byte) error {
		switch string(name) {
		case "kind":
			f.kind = str(x)
		case "name":
			f.name = str(x)
		case "namespace":
			f.namespace = str(x)
		}
		return nil
	})
	return f
}

// splitSubject reads a CloudEvents subject of the form namespace/kind/name.
func splitSubject(s string) (ns, kind, name string) {
	parts := strings.SplitN(s, "/", 3)
	if len(parts) != 3 {
		return "", "", ""
	}
	return parts[0], parts[1], parts[2]
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
