package mapping

import (
	"errors"
	"fmt"
	"slices"

	"gopkg.in/yaml.v3"

	"github.com/khook/khook/internal/strictyaml"
	"github.com/khook/khook/streams/subject"
)

// Rule is one entry of event-mappings.yaml, in the plugin deployment guide's format.
type Rule struct {
	EventSource  string            `yaml:"eventSource"`
	EventType    string            `yaml:"eventType"`
	InternalType string            `yaml:"internalType"`
	Description  string            `yaml:"description"`
	Severity     string            `yaml:"severity"`
	Tags         map[string]string `yaml:"tags"`
	Enabled      *bool             `yaml:"enabled"`

	line int // where the rule starts in its file, for error messages
}

// IsEnabled reports whether the rule is on; a rule without `enabled` is on.
func (r Rule) IsEnabled() bool { return r.Enabled == nil || *r.Enabled }

type ruleKey struct{ source, eventType string }

// Rules is a validated, immutable set of mapping rules, safe for concurrent use.
type Rules struct {
	byKey map[ruleKey]Rule
}

type file struct {
	Mappings []yaml.Node `yaml:"mappings"`
}

// Parse reads event-mappings.yaml. Unknown keys, invalid values and duplicate rules are
// errors that name the file line, the key and, for duplicates, both rules.
func Parse(b []byte) (*Rules, error) {
	doc, err := strictyaml.Document(b)
	if err != nil {
		return nil, fmt.Errorf("event mappings: %w", err)
	}
	var f file
	if err := strictyaml.Decode(doc, &f); err != nil {
		return nil, fmt.Errorf("event mappings: %w", err)
	}
	rules := &Rules{byKey: make(map[ruleKey]Rule, len(f.Mappings))}
	var errs []error
	for i := range f.Mappings {
		node := &f.Mappings[i]
		var r Rule
		if err := strictyaml.Decode(node, &r); err != nil {
			errs = append(errs, fmt.Errorf("mappings[%d]: %w", i, err))
			continue
		}
		r.line = node.Line
		if r.InternalType == "" {
			r.InternalType = r.EventType
		}
		if r.Severity == "" {
			r.Severity = "warning"
		}
		if err := r.validate(); err != nil {
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
	return rules, nil
}

func (r Rule) validate() error {
	var errs []error
	if err := subject.CheckToken("eventSource", r.EventSource); err != nil {
		errs = append(errs, err)
	}
	if err := subject.CheckToken("eventType", r.EventType); err != nil {
		errs = append(errs, err)
	}
	if err := subject.CheckToken("internalType", r.InternalType); err != nil {
		errs = append(errs, err)
	}
	if !slices.Contains(Severities, r.Severity) {
		errs = append(errs, fmt.Errorf("severity %q: must be one of info, warning, error, critical", r.Severity))
	}
	return errors.Join(errs...)
}

// Len returns the number of rules.
func (rs *Rules) Len() int { return len(rs.byKey) }

// Lookup returns the rule for a source and event type.
func (rs *Rules) Lookup(source, eventType string) (Rule, bool) {
	r, ok := rs.byKey[ruleKey{source, eventType}]
	return r, ok
}
