package hook

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/goccy/go-yaml/ast"

	"github.com/khook/khook/internal/strictyaml"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/subject"
)

// APIVersion and Kind identify a Hook, the same resource kagent's khook defines, so existing
// Hook objects work unchanged.
const (
	APIVersion = "kagent.dev/v1alpha2"
	Kind       = "Hook"
)

// Hook is the kagent.dev/v1alpha2 Hook resource.
type Hook struct {
	APIVersion string     `yaml:"apiVersion" json:"apiVersion"`
	Kind       string     `yaml:"kind" json:"kind"`
	Metadata   ObjectMeta `yaml:"metadata" json:"metadata"`
	Spec       HookSpec   `yaml:"spec" json:"spec"`
	// Status is accepted so that `kubectl get -o yaml` output loads; it is not read.
	Status map[string]any `yaml:"status,omitempty" json:"status,omitempty"`
}

// ObjectMeta holds the metadata khook reads; other Kubernetes metadata is accepted and ignored.
type ObjectMeta struct {
	Name      string         `yaml:"name" json:"name"`
	Namespace string         `yaml:"namespace" json:"namespace,omitempty"`
	Other     map[string]any `yaml:",inline" json:"-"`
}

// HookSpec lists which events call which agents with which prompt.
type HookSpec struct {
	EventConfigurations []EventConfiguration `yaml:"eventConfigurations" json:"eventConfigurations"`
	// SuppressionWindow (khook extension) overrides dispatcher.suppression_window for this
	// hook, e.g. "5m".
	SuppressionWindow string `yaml:"suppressionWindow,omitempty" json:"suppressionWindow,omitempty"`
	// GroupBy, GroupWait, GroupInterval and MaxEventsPerTask (khook extensions) gather the
	// hook's events into one task per group, as Alertmanager groups alerts: see Grouping.
	GroupBy          []string `yaml:"groupBy,omitempty" json:"groupBy,omitempty"`
	GroupWait        string   `yaml:"groupWait,omitempty" json:"groupWait,omitempty"`
	GroupInterval    string   `yaml:"groupInterval,omitempty" json:"groupInterval,omitempty"`
	MaxEventsPerTask int      `yaml:"maxEventsPerTask,omitempty" json:"maxEventsPerTask,omitempty"`
	// Clusters (khook extension) limits the hook to events from these clusters, by the
	// names their edges stamp; empty means every cluster, and events without one.
	Clusters []string `yaml:"clusters,omitempty" json:"clusters,omitempty"`
}

// EventConfiguration fires its agent for every event of EventType in the hook's namespace.
type EventConfiguration struct {
	EventType string   `yaml:"eventType" json:"eventType"`
	AgentRef  AgentRef `yaml:"agentRef" json:"agentRef"`
	Prompt    string   `yaml:"prompt" json:"prompt"`
	// MinSeverity (khook extension) fires only for events at least this severe.
	MinSeverity string `yaml:"minSeverity,omitempty" json:"minSeverity,omitempty"`
	// TagSelector (khook extension) fires only for events carrying every one of these tags.
	TagSelector map[string]string `yaml:"tagSelector,omitempty" json:"tagSelector,omitempty"`
}

// MinWindow is the shortest suppression window: JetStream's shortest per-key TTL.
const MinWindow = time.Second

// Window returns the hook's own suppression window, or def when it sets none; never less
// than MinWindow.
func (h *Hook) Window(def time.Duration) time.Duration {
	if d, err := time.ParseDuration(h.Spec.SuppressionWindow); err == nil && d > 0 {
		def = d
	}
	return max(def, MinWindow)
}

// AgentRef names a kagent agent. An empty namespace means the hook's namespace.
type AgentRef struct {
	Name      string `yaml:"name" json:"name"`
	Namespace string `yaml:"namespace,omitempty" json:"namespace,omitempty"`
}

// Key returns the agent's namespace/name, as budgets, routes and outcome records name it.
func (a AgentRef) Key() string { return a.Namespace + "/" + a.Name }

// Key returns the hook's namespace/name.
func (h *Hook) Key() string { return h.Metadata.Namespace + "/" + h.Metadata.Name }

// Warnings reports what loads but may not be what the hook's author meant: prompt
// placeholders that name no field, which are sent as written (see literalizeUnknown).
func (h *Hook) Warnings() []string {
	var out []string
	for i, ec := range h.Spec.EventConfigurations {
		if _, warnings, err := compilePrompt(ec.Prompt); err == nil {
			for _, w := range warnings {
				out = append(out, fmt.Sprintf("spec.eventConfigurations[%d].prompt: %s", i, w))
			}
		}
	}
	return out
}

// Validate reports every problem with the hook, naming the field.
func (h *Hook) Validate() error {
	var errs []error
	if h.APIVersion != APIVersion || h.Kind != Kind {
		errs = append(errs, fmt.Errorf("apiVersion/kind: want %s %s, got %q %q", APIVersion, Kind, h.APIVersion, h.Kind))
	}
	if h.Metadata.Name == "" {
		errs = append(errs, errors.New("metadata.name: required"))
	}
	if len(h.Spec.EventConfigurations) == 0 {
		errs = append(errs, errors.New("spec.eventConfigurations: at least one is required"))
	}
	for i, ec := range h.Spec.EventConfigurations {
		if err := subject.CheckToken("eventType", ec.EventType); err != nil {
			errs = append(errs, fmt.Errorf("spec.eventConfigurations[%d].%w", i, err))
		}
		if ec.AgentRef.Name == "" {
			errs = append(errs, fmt.Errorf("spec.eventConfigurations[%d].agentRef.name: required", i))
		}
		if ec.Prompt == "" {
			errs = append(errs, fmt.Errorf("spec.eventConfigurations[%d].prompt: required", i))
		} else if _, _, err := compilePrompt(ec.Prompt); err != nil {
			errs = append(errs, fmt.Errorf("spec.eventConfigurations[%d].prompt: %w", i, err))
		}
		if ec.MinSeverity != "" && !slices.Contains(mapping.Severities, ec.MinSeverity) {
			errs = append(errs, fmt.Errorf("spec.eventConfigurations[%d].minSeverity: must be one of info, warning, error, critical, got %q", i, ec.MinSeverity))
		}
	}
	for i, c := range h.Spec.Clusters {
		if err := cloudevent.CheckCluster(c); err != nil {
			errs = append(errs, fmt.Errorf("spec.clusters[%d]: %w", i, err))
		}
	}
	if w := h.Spec.SuppressionWindow; w != "" {
		// JetStream refuses per-key TTLs under a second: a shorter window could never be
		// claimed, and every matching event would come back forever.
		if d, err := time.ParseDuration(w); err != nil || d < MinWindow {
			errs = append(errs, fmt.Errorf("spec.suppressionWindow: want a duration of at least 1s such as 10m, got %q", w))
		}
	}
	errs = append(errs, h.Spec.validateGrouping()...)
	return errors.Join(errs...)
}

// Parse reads hooks.yaml: Hook objects as a YAML list, as documents separated by ---,
// or as a Kubernetes List with items. A hook without a namespace is in "default", as
// kubectl would put it.
func Parse(b []byte) ([]Hook, error) {
	var hooks []Hook
	docs, err := strictyaml.Documents(b)
	if err != nil {
		return nil, fmt.Errorf("hooks: %w", err)
	}
	for doc, n := range docs {
		items, err := hookNodes(n)
		if err != nil {
			return nil, fmt.Errorf("hooks: document %d: %w", doc, err)
		}
		for _, item := range items {
			var h Hook
			if err := strictyaml.Decode(item, &h); err != nil {
				return nil, fmt.Errorf("hooks: %w", err)
			}
			if h.Metadata.Namespace == "" {
				h.Metadata.Namespace = "default"
			}
			if err := h.Validate(); err != nil {
				return nil, atLines(h.Key(), item, err)
			}
			hooks = append(hooks, h)
		}
	}
	seen := map[string]bool{}
	for _, h := range hooks {
		if seen[h.Key()] {
			return nil, fmt.Errorf("hooks: %s is defined twice", h.Key())
		}
		seen[h.Key()] = true
	}
	return hooks, nil
}

// problemPath finds the field a Validate problem names ("spec.eventConfigurations[0].prompt").
var problemPath = regexp.MustCompile(`^((?:spec|metadata)(?:\.[A-Za-z]+|\[\d+\])+)`)

// atLines says, for each of a Hook's problems, the line of hooks.yaml it is on: the field it
// names, else the Hook's first line.
func atLines(key string, item ast.Node, err error) error {
	var out []string
	for _, problem := range strings.Split(err.Error(), "\n") {
		line := strictyaml.Line(item)
		if m := problemPath.FindStringSubmatch(problem); m != nil {
			line = strictyaml.LineOf(item, m[1])
		}
		out = append(out, fmt.Sprintf("hooks: %s (line %d): %s", key, line, problem))
	}
	return errors.New(strings.Join(out, "\n"))
}

func hookNodes(n ast.Node) ([]ast.Node, error) {
	switch v := n.(type) {
	case nil:
		return nil, nil
	case *ast.SequenceNode:
		return v.Values, nil
	case *ast.MappingNode:
		for _, kv := range v.Values {
			if items, ok := kv.Value.(*ast.SequenceNode); ok && strictyaml.Text(kv.Key) == "items" {
				return items.Values, nil
			}
		}
		return []ast.Node{v}, nil
	}
	return nil, fmt.Errorf("line %d: expected a Hook, a list of Hooks or a List", strictyaml.Line(n))
}

// Match is one event configuration of one hook that an event fires.
type Match struct {
	Hook   *Hook
	Index  int // which eventConfigurations entry
	Agent  AgentRef
	prompt *template.Template
	entry  string
	stable string
}

// Entry identifies the matched event configuration by what it is (its hook, event type,
// agent and prompt), not by its position, so that reordering a Hook's entries changes no
// task id, context id or suppression key, and in-flight events are not called again.
func (m Match) Entry() string { return m.entry }

// StableEntry identifies the matched event configuration by its hook, event type and agent
// only: what it is for, not what it says. Work that waits (a group gathering events, a task
// queued for its agent's budget) belongs to it, so that editing the prompt meanwhile sends
// that work with the new prompt instead of dropping it. Two entries of one Hook for the same
// event type and agent are told apart by their order among themselves.
func (m Match) StableEntry() string { return m.stable }

func entryID(hook string, ec EventConfiguration, agent AgentRef) string {
	return hook + "#" + Hash(ec.EventType, agent.Namespace, agent.Name, ec.Prompt)
}

func stableEntryID(hook string, ec EventConfiguration, agent AgentRef, nth int) string {
	return hook + "#" + Hash("stable", ec.EventType, agent.Namespace, agent.Name, strconv.Itoa(nth))
}

// Config returns the matched event configuration.
func (m Match) Config() EventConfiguration { return m.Hook.Spec.EventConfigurations[m.Index] }

// Index finds the hooks an event fires. It is immutable and safe for concurrent use; a new
// set of hooks means a new Index.
type Index struct {
	byKey   map[indexKey][]Match
	byEntry map[string]Match
	count   int
	hooks   []*Hook
}

type indexKey struct{ namespace, eventType string }

// Empty is an index of no hooks: what a dispatcher matches against before its hooks load.
func Empty() *Index { return &Index{byKey: map[indexKey][]Match{}, byEntry: map[string]Match{}} }

// NewIndex validates hooks, compiles their prompts and indexes them by namespace and event
// type. Invalid hooks are an error naming each one.
func NewIndex(hooks []Hook) (*Index, error) {
	idx := &Index{byKey: map[indexKey][]Match{}, byEntry: map[string]Match{}, count: len(hooks)}
	var errs []error
	for i := range hooks {
		h := &hooks[i]
		if err := h.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("hook %s: %w", h.Key(), err))
			continue
		}
		entries := map[string]bool{}
		nth := map[[3]string]int{}
		for j, ec := range h.Spec.EventConfigurations {
			agent := ec.AgentRef
			if agent.Namespace == "" {
				agent.Namespace = h.Metadata.Namespace
			}
			// Two identical entries are one task: calling the same agent twice with the same
			// prompt for one event would only double the cost.
			entry := entryID(h.Key(), ec, agent)
			if entries[entry] {
				continue
			}
			entries[entry] = true
			tmpl, _, _ := compilePrompt(ec.Prompt) // validated above
			k := indexKey{h.Metadata.Namespace, ec.EventType}
			same := [3]string{ec.EventType, agent.Namespace, agent.Name}
			stable := stableEntryID(h.Key(), ec, agent, nth[same])
			nth[same]++
			m := Match{Hook: h, Index: j, Agent: agent, prompt: tmpl, entry: entry, stable: stable}
			idx.byKey[k] = append(idx.byKey[k], m)
			idx.byEntry[entry] = m
			idx.byEntry[stable] = m
		}
		idx.hooks = append(idx.hooks, h)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return idx, nil
}

// Match returns every event configuration, of every hook in the event's namespace, whose
// event type is the event's internal type (khook's matching rule) and whose optional
// severity floor, tag selector and clusters the event meets.
func (idx *Index) Match(ev *mapping.Event) []Match {
	all := idx.byKey[indexKey{ev.Namespace, ev.Type}]
	out := all[:0:0]
	for _, m := range all {
		if m.accepts(ev) {
			out = append(out, m)
		}
	}
	return out
}

func (m Match) accepts(ev *mapping.Event) bool {
	ec := m.Config()
	if cs := m.Hook.Spec.Clusters; len(cs) > 0 && !slices.Contains(cs, ev.Cluster) {
		return false
	}
	if ec.MinSeverity != "" && slices.Index(mapping.Severities, ev.Severity) < slices.Index(mapping.Severities, ec.MinSeverity) {
		return false
	}
	for k, v := range ec.TagSelector {
		if ev.Tags[k] != v {
			return false
		}
	}
	return true
}

// Entry returns the event configuration whose Entry or StableEntry is entry, if a hook
// still has it: a group's task is built from the entry of the group, as it is now.
func (idx *Index) Entry(entry string) (Match, bool) {
	m, ok := idx.byEntry[entry]
	return m, ok
}

// Hooks returns the valid hooks, in the order given.
func (idx *Index) Hooks() []*Hook { return idx.hooks }

// Len returns the number of hooks indexed.
func (idx *Index) Len() int { return idx.count }
