package mapping

import (
	"encoding/json"
	"strings"
)

// Outcome says what became of one raw event. Every outcome is a metric label value.
type Outcome string

// The outcomes of mapping one raw event.
const (
	Mapped   Outcome = "mapped"
	Unmapped Outcome = "unmapped" // no rule for the event's source and type
	Disabled Outcome = "disabled" // the rule exists with enabled: false
)

// Outcomes lists every Outcome, for pre-creating metric labels.
var Outcomes = []Outcome{Mapped, Unmapped, Disabled}

// Map normalizes raw with rules. The event is meaningful only when the outcome is Mapped.
//
// The namespace, resource, reason and message come from well-known fields of the event data
// (namespace, resourceKind or kind, resourceName or name, reason, message; also under
// "resource" and "metadata"), falling back to the CloudEvents subject "namespace/kind/name".
func Map(rules *Rules, raw Raw) (Event, Outcome) {
	rule, ok := rules.Lookup(raw.Source, raw.Type)
	if !ok {
		return Event{}, Unmapped
	}
	if !rule.IsEnabled() {
		return Event{}, Disabled
	}
	f := extract(raw.Data)
	ns, kind, name := splitSubject(raw.Subject)
	ev := Event{
		ID:         raw.ID,
		Source:     raw.Source,
		SourceType: raw.Type,
		Type:       rule.InternalType,
		Severity:   rule.Severity,
		Tags:       rule.Tags,
		Namespace:  first(f.namespace, ns),
		Resource:   Resource{Kind: first(f.kind, kind), Name: first(f.name, name)},
		Reason:     f.reason,
		Message:    f.message,
		Time:       raw.Time,
		Data:       raw.Data,
	}
	return ev, Mapped
}

type fields struct {
	namespace, kind, name, reason, message string
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

func extract(data json.RawMessage) fields {
	var w wellKnown
	// Data that is not an object, or has fields of other types, simply yields no fields:
	// the rule still applies and the raw data travels with the event.
	if err := json.Unmarshal(data, &w); err != nil {
		return fields{}
	}
	f := fields{
		namespace: w.Namespace,
		kind:      first(w.ResourceKind, w.Kind),
		name:      first(w.ResourceName, w.Name),
		reason:    w.Reason,
		message:   w.Message,
	}
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
