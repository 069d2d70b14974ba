package mapping

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	"github.com/goccy/go-yaml/ast"

	"github.com/khook/khook/internal/strictyaml"
	"github.com/khook/khook/streams/subject"
)

// Wildcard matches any source or any event type in a rule.
const Wildcard = "*"

// Rule is one entry of event-mappings.yaml, in the plugin deployment guide's format, plus
// khook's optional field extraction.
type Rule struct {
	EventSource  string            `yaml:"eventSource"`
	EventType    string            `yaml:"eventType"`
	InternalType string            `yaml:"internalType"`
	Description  string            `yaml:"description"`
	Severity     string            `yaml:"severity"`
	Tags         map[string]string `yaml:"tags"`
	Enabled      *bool             `yaml:"enabled"`
	// Fields says where the event's namespace, resource, reason and message are in the event
	// data, for sources whose payloads do not use khook's well-known field names.
	Fields Fields `yaml:"fields"`

	line  int     // where the rule starts in its file, for error messages
	paths []field // Fields, compiled
}

// Fields are paths into the event data: dotted ("labels.namespace") or, starting with "/",
// JSON Pointer ("/labels/namespace").
type Fields struct {
	Namespace    string `yaml:"namespace"`
	ResourceKind string `yaml:"resourceKind"`
	ResourceName string `yaml:"resourceName"`
	Reason       string `yaml:"reason"`
	Message      string `yaml:"message"`
}

// IsEnabled reports whether the rule is on; a rule without `enabled` is on.
func (r Rule) IsEnabled() bool { return r.Enabled == nil || *r.Enabled }

// Line returns the line of the file the rule starts on (0 for built-in rules).
func (r Rule) Line() int { return r.line }

// UnmappedPolicy says what happens to an event no rule matches.
type UnmappedPolicy string

// The unmapped policies.
const (
	// Drop counts, logs and acknowledges the event.
	Drop UnmappedPolicy = "drop"
	// Passthrough maps the event with its own type as the internal type.
	Passthrough UnmappedPolicy = "passthrough"
	// DeadLetter stores the event in the dead-letter stream.
	DeadLetter UnmappedPolicy = "deadletter"
)

type ruleKey struct{ source, eventType string }

// Rules is a validated, immutable set of mapping rules, safe for concurrent use.
type Rules struct {
	byKey    map[ruleKey]*Rule
	unmapped UnmappedPolicy
	hash     string
}

type file struct {
	Unmapped UnmappedPolicy `yaml:"unmapped"`
	Mappings []ast.Node     `yaml:"mappings"`
}

// Parse reads event-mappings.yaml and adds the built-in Kubernetes rules that no rule of the
// file covers. Unknown keys, invalid values and duplicate rules are errors that name the
// file line, the key and, for duplicates, both rules.
func Parse(b []byte) (*Rules, error) {
	doc, err := strictyaml.Document(b)
	if err != nil {
		return nil, fmt.Errorf("event mappings: %w", err)
	}
	var f file
	if err := strictyaml.Decode(doc, &f); err != nil {
		return nil, fmt.Errorf("event mappings: %w", err)
	}
	sum := sha256.Sum256(b)
	rules := &Rules{byKey: make(map[ruleKey]*Rule, len(f.Mappings)), unmapped: f.Unmapped, hash: hex.EncodeToString(sum[:6])}
	var errs []error
	switch rules.unmapped {
	case "":
		rules.unmapped = Drop
	case Drop, Passthrough, DeadLetter:
	default:
		errs = append(errs, fmt.Errorf("unmapped: must be drop, passthrough or deadletter, got %q", f.Unmapped))
	}
	for i := range f.Mappings {
		node := f.Mappings[i]
		r := &Rule{}
		if err := strictyaml.Decode(node, r); err != nil {
			errs = append(errs, fmt.Errorf("mappings[%d]: %w", i, err))
			continue
		}
		r.line = strictyaml.Line(node)
		if err := r.complete(); err != nil {
			errs = append(errs, fmt.Errorf("mappings[%d] (line %d): %w", i, r.line, err))
			continue
		}
		key := ruleKey{r.EventSource, r.EventType}
		if prev, dup := rules.byKey[key]; dup {
			errs = append(errs, fmt.Errorf("mappings[%d] (line %d): duplicate rule for eventSource %q eventType %q, first defined at line %d",
				i, r.line, r.EventSource, r.EventType, prev.line))
			continue
		}
		rules.byKey[key] = r
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("event mappings: %w", err)
	}
	for _, d := range builtinRules() {
		if _, covered := rules.lookup(d.EventSource, d.EventType); !covered {
			rules.byKey[ruleKey{d.EventSource, d.EventType}] = d
		}
	}
	return rules, nil
}

// complete fills defaults, validates, and compiles the field paths.
func (r *Rule) complete() error {
	if r.InternalType == "" && r.EventType != Wildcard {
		r.InternalType = r.EventType
	}
	if r.Severity == "" {
		r.Severity = "warning"
	}
	var errs []error
	if r.EventSource != Wildcard {
		errs = append(errs, subject.CheckToken("eventSource", r.EventSource))
	}
	if r.EventType != Wildcard {
		errs = append(errs, subject.CheckToken("eventType", r.EventType))
	}
	// A wildcard rule without internalType keeps each event's own type.
	if r.InternalType != "" {
		errs = append(errs, subject.CheckToken("internalType", r.InternalType))
	}
	if !slices.Contains(Severities, r.Severity) {
		errs = append(errs, fmt.Errorf("severity %q: must be one of info, warning, error, critical", r.Severity))
	}
	paths, err := compileFields(r.Fields)
	errs = append(errs, err)
	r.paths = paths
	return errors.Join(errs...)
}

// lookup finds the most specific rule: exact source and type, then exact source with any
// type, then any source with the exact type, then the catch-all.
func (rs *Rules) lookup(source, eventType string) (*Rule, bool) {
	for _, k := range [...]ruleKey{{source, eventType}, {source, Wildcard}, {Wildcard, eventType}, {Wildcard, Wildcard}} {
		if r, ok := rs.byKey[k]; ok {
			return r, true
		}
	}
	return nil, false
}

// Lookup returns the rule that applies to a source and event type.
func (rs *Rules) Lookup(source, eventType string) (Rule, bool) {
	r, ok := rs.lookup(source, eventType)
	if !ok {
		return Rule{}, false
	}
	return *r, true
}

// Len returns the number of rules, built-in ones included.
func (rs *Rules) Len() int { return len(rs.byKey) }

// Unmapped returns the policy for events no rule matches.
func (rs *Rules) Unmapped() UnmappedPolicy { return rs.unmapped }

// Hash identifies the file the rules came from, for logs and the rules-info metric.
func (rs *Rules) Hash() string { return rs.hash }

// builtinRules keep the names of kagent's khook for Kubernetes events, so that existing
// Hooks match without any mapping file. A file rule covering the same source and type
// replaces the built-in one (the deployment guide's per-environment values do this).
func builtinRules() []*Rule {
	rule := func(t, severity, desc string) *Rule {
		return &Rule{EventSource: "kubernetes", EventType: t, InternalType: t, Severity: severity, Description: desc,
			Tags: map[string]string{"category": "kubernetes"}}
	}
	return []*Rule{
		rule("pod-restart", "warning", "A container restarted or is in back-off"),
		rule("pod-pending", "warning", "A pod cannot be scheduled or started"),
		rule("oom-kill", "error", "A container was killed for running out of memory"),
		rule("probe-failed", "warning", "A liveness, readiness or startup probe failed"),
		rule("node-not-ready", "critical", "A node stopped being ready"),
	}
}
