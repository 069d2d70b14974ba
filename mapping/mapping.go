package mapping

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
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

// resolve walks tokens through decoded JSON; array elements are addressed by index.
func resolve(v any, tokens []string) (any, bool) {
	for _, t := range tokens {
		switch node := v.(type) {
		case map[string]any:
			next, ok := node[t]
			if !ok {
				return nil, false
			}
			v = next
		case []any:
			i, err := strconv.Atoi(t)
			if err != nil || i < 0 || i >= len(node) {
				return nil, false
			}
			v = node[i]
		default:
			return nil, false
		}
	}
	return v, true
}

// text renders a JSON value as prompt text: strings as they are, other scalars in their JSON
// form, objects and arrays as compact JSON.
func text(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	default:
		b, _ := json.Marshal(x)
		return string(b)
	}
}

// wellKnown is the shape of the event data fields khook reads without configuration.
type wellKnown struct {
	Namespace    string `json:"namespace"`
	ResourceKind string `json:"resourceKind"`
	ResourceName string `json:"resourceName"`
	Kind         string `json:"kind"`
	Name         string `json:"name"`
	Reason       string `json:"reason"`
	Message      string `json:"message"`
	Resource     *struct {
		Kind      string `json:"kind"`
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"resource"`
	Metadata *struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

func extract(data json.RawMessage, paths []field) fields {
	var f fields
	if len(paths) > 0 {
		var doc any
		if err := json.Unmarshal(data, &doc); err == nil {
			for _, p := range paths {
				if v, ok := resolve(doc, p.tokens); ok {
					p.set(&f, text(v))
				}
			}
		}
	}
	var w wellKnown
	// Data that is not an object, or has fields of other types, simply yields no fields:
	// the rule still applies and the raw data travels with the event.
	if err := json.Unmarshal(data, &w); err != nil {
		return f
	}
	f.namespace = first(f.namespace, w.Namespace)
	f.kind = first(f.kind, w.ResourceKind, w.Kind)
	f.name = first(f.name, w.ResourceName, w.Name)
	f.reason = first(f.reason, w.Reason)
	f.message = first(f.message, w.Message)
	if r := w.Resource; r != nil {
		f.kind, f.name, f.namespace = first(f.kind, r.Kind), first(f.name, r.Name), first(f.namespace, r.Namespace)
	}
	if m := w.Metadata; m != nil {
		f.name, f.namespace = first(f.name, m.Name), first(f.namespace, m.Namespace)
	}
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
