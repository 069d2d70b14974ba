package hook

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"text/template"
	"time"

	"github.com/khook/khook/mapping"
)

// Hash is the key khook derives from parts: hex of the first 12 bytes of their SHA-256,
// joined by NUL so that ("ab", "c") and ("a", "bc") differ. Suppression claims, entry IDs and
// active-event records are keyed by it, in every replica alike.
func Hash(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:12])
}

// SuppressionKey identifies what one suppression window covers: one hook entry and one
// event key.
func SuppressionKey(entry string, ev EventKey) string {
	return Hash(ev.parts(entry)...)
}

// EventKey is an event's identity as khook tells events apart: its type and the resource it
// is about, in the cluster it is in. Suppression windows, agent contexts, the events of a
// group and a Hook's active events are all per event key. KeyOf is its one constructor from
// an event.
type EventKey struct{ Cluster, Type, Namespace, Kind, Name string }

// KeyOf returns ev's event key.
func KeyOf(ev *mapping.Event) EventKey {
	return EventKey{Cluster: ev.Cluster, Type: ev.Type, Namespace: ev.Namespace, Kind: ev.Resource.Kind, Name: ev.Resource.Name}
}

// Hash is the key's short, fixed-length form, for record keys.
func (k EventKey) Hash() string { return Hash(k.parts()...) }

// parts are the key's parts after prefix, for Hash. The cluster comes last and only when
// there is one, so that a single-cluster install's keys (claims, contexts, records already
// in the bucket) are what they were before clusters existed.
func (k EventKey) parts(prefix ...string) []string {
	p := make([]string, 0, len(prefix)+6)
	p = append(append(p, prefix...), k.Type, k.Namespace, k.Kind, k.Name)
	if k.Cluster != "" {
		p = append(p, "cluster", k.Cluster)
	}
	return p
}

// Task is one agent call: what one event configuration of one hook asks of its agent.
type Task struct {
	Hook  string // namespace/name
	Agent AgentRef
	// Text is the expanded prompt followed by the event context.
	Text string
	// MessageID is deterministic per (event key, hook entry), so a retried send is
	// recognisable by the agent and by khook's settled-task record.
	MessageID string
	// ContextID is stable per (hook, event type, namespace, resource), so related events
	// share one agent session.
	ContextID   string
	Event       *mapping.Event
	Traceparent string
	// SuppressionKey identifies the suppression window this task falls in.
	SuppressionKey string
}

// NewTask builds the task that m asks for ev: Identify, then Render.
func NewTask(m Match, ev *mapping.Event) (Task, error) {
	t := Identify(m, ev)
	err := t.Render(m)
	return t, err
}

// Identify returns the task's identity without its text: the ids and the suppression key,
// which is all a suppressed event needs. Rendering the prompt costs far more (the payload is
// decoded, the template run), so the dispatcher renders only the tasks it will send.
func Identify(m Match, ev *mapping.Event) Task {
	// The entry keeps two agents configured for one event type in one hook apart; for the
	// usual hook, with one entry per type, the key is khook's (hook, event type, namespace,
	// resource). ev.ID is the event's key, already scoped by its source.
	entry := m.Entry()
	key := KeyOf(ev)
	return Task{
		Hook:           m.Hook.Key(),
		Agent:          m.Agent,
		MessageID:      UUID("message", ev.ID, entry),
		ContextID:      UUID(key.parts("context", entry)...),
		Event:          ev,
		SuppressionKey: SuppressionKey(entry, key),
	}
}

// Render sets the task's text: m's prompt expanded for the task's event, followed by the
// event context. When the prompt template fails on this event (a .Data path the event
// lacks), the text has khook's placeholders expanded instead, and the returned error says
// why, for the caller to log and count. When the prompt renders past MaxPromptOutput the
// error wraps ErrPromptTooLarge and the task has no text: it cannot be sent.
func (t *Task) Render(m Match) error {
	ev := t.Event
	prompt, err := render(m.prompt, ev)
	if errors.Is(err, ErrPromptTooLarge) {
		// Not a missing field: the plain expansion would not help, and no retry will. The
		// task has no text; the caller dead-letters it.
		return fmt.Errorf("hook %s prompt: %w", m.Hook.Key(), err)
	}
	if err != nil {
		prompt = expandPlaceholders(m.Config().Prompt, ev)
		err = fmt.Errorf("hook %s prompt: %w", m.Hook.Key(), err)
	}
	t.Text = prompt + EventContext(ev)
	return err
}

// promptData is what a prompt template sees: khook's placeholders, plus the whole
// normalized event.
type promptData struct {
	EventType, ResourceName, ResourceKind, Namespace, Reason, Message, EventMessage string
	Timestamp, EventTime                                                            string
	ID, Source, SourceType, Severity                                                string
	// Cluster is the cluster the event came from; empty in a single-cluster install.
	Cluster string
	Tags    map[string]string
	// Data is the event's raw payload, decoded: {{ .Data.labels.pod }}.
	Data any
	// Events and Group are set for a grouped hook's task: every distinct event of the group
	// since its last task, and the group itself (see GroupTask). Both are empty otherwise.
	Events []GroupEvent
	Group  Group
}

func newPromptData(ev *mapping.Event) promptData {
	ts := ""
	if !ev.Time.IsZero() {
		ts = ev.Time.UTC().Format(time.RFC3339)
	}
	var data any
	if len(ev.Data) > 0 {
		_ = json.Unmarshal(ev.Data, &data)
	}
	return promptData{
		EventType: ev.Type, ResourceName: ev.Resource.Name, ResourceKind: ev.Resource.Kind, Namespace: ev.Namespace,
		Reason: ev.Reason, Message: ev.Message, EventMessage: ev.Message, Timestamp: ts, EventTime: ts,
		ID: ev.ID, Source: ev.Source, SourceType: ev.SourceType, Severity: ev.Severity, Tags: ev.Tags, Data: data,
		Cluster: ev.Cluster,
	}
}

// sandbox replaces the one built-in template function that can reach outside the event
// data: templates see only plain data, and may not call functions from it.
var sandbox = template.FuncMap{
	"call":     func(...any) (any, error) { return nil, errors.New("call is not allowed in prompts") },
	"get":      lookup,
	"printf":   boundedPrintf,
	"print":    boundedPrint,
	"println":  boundedPrintln,
	"html":     bounded(template.HTMLEscaper),
	"js":       bounded(template.JSEscaper),
	"urlquery": bounded(template.URLQueryEscaper),
	rangeFunc:  rangeable,
	// Replaced in every render by that render's budget (execute).
	stepFunc: func() string { return "" },
}

// lookup is the template function get: {{get .Data "labels.pod"}} reads a dotted path and
// yields "" where the path is absent, where {{.Data.labels.pod}} would fail.
func lookup(v any, path string) any {
	for _, key := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		if v, ok = m[key]; !ok {
			return ""
		}
	}
	if v == nil {
		return ""
	}
	return v
}

// compilePrompt parses a prompt as a text/template (khook's {{.EventType}} placeholders,
// spaced or not, are template fields) and runs it once on an empty event, so that broken
// syntax is a load error rather than a failure at delivery. Unknown placeholders are kept as
// written (see literalizeUnknown); the warnings name them.
func compilePrompt(text string) (*template.Template, []string, error) {
	if len(text) > MaxPromptSource {
		return nil, nil, fmt.Errorf("longer than %d characters", MaxPromptSource)
	}
	parse := func(text string) (*template.Template, error) {
		return template.New("prompt").Option("missingkey=zero").Funcs(sandbox).Parse(text)
	}
	t, err := parse(text)
	if err != nil {
		return nil, nil, err
	}
	var warnings []string
	if t.Tree != nil {
		var literal string
		if literal, warnings = literalizeUnknown(text, t.Tree.Root); len(warnings) > 0 {
			if t, err = parse(literal); err != nil {
				return nil, nil, err
			}
		}
	}
	if err := checkPrompt(t); err != nil {
		return nil, nil, err
	}
	if err := instrument(t); err != nil {
		return nil, nil, err
	}
	// Paths into .Data depend on each event's payload, not on the template, so only the
	// rest of the template must run cleanly on an empty event.
	if _, err := render(t, &mapping.Event{}); err != nil && !strings.Contains(err.Error(), "at <.Data") {
		return nil, nil, err
	}
	return t, warnings, nil
}

// placeholder matches khook's prompt placeholders, with or without spaces inside the braces.
var placeholder = regexp.MustCompile(`\{\{\s*\.(EventType|ResourceName|Namespace|Cluster|Reason|Message|EventMessage|Timestamp|EventTime)\s*\}\}`)

// expandPlaceholders is khook's own expansion, used when a template fails on an event: known
// placeholders are replaced and everything else is left as written.
func expandPlaceholders(prompt string, ev *mapping.Event) string {
	d := newPromptData(ev)
	return placeholder.ReplaceAllStringFunc(prompt, func(s string) string {
		switch placeholder.FindStringSubmatch(s)[1] {
		case "EventType":
			return d.EventType
		case "ResourceName":
			return d.ResourceName
		case "Namespace":
			return d.Namespace
		case "Cluster":
			return d.Cluster
		case "Reason":
			return d.Reason
		case "Message", "EventMessage":
			return d.Message
		default:
			return d.Timestamp
		}
	})
}

// render expands t for ev, failing with ErrPromptTooLarge past MaxPromptOutput and with
// ErrPromptTooSlow past the render's time and step bounds.
func render(t *template.Template, ev *mapping.Event) (string, error) {
	data := newPromptData(ev)
	out, err := execute(t, &data)
	if errors.Is(err, ErrPromptTooLarge) {
		return "", ErrPromptTooLarge
	}
	return out, err
}

// ExpandPrompt renders a prompt for an event; an invalid prompt is returned as written.
func ExpandPrompt(prompt string, ev *mapping.Event) string {
	t, _, err := compilePrompt(prompt)
	if err != nil {
		return prompt
	}
	s, err := render(t, ev)
	if err != nil {
		return prompt
	}
	return s
}

// EventContext is the text appended to every prompt, as khook appends it: namespace, reason
// and message, then the resource, the event's source and its time. An event from a named
// cluster begins with its cluster, which the agent needs to reach the right one.
func EventContext(ev *mapping.Event) string {
	var b strings.Builder
	line := func(k, v string) {
		if v != "" {
			b.WriteString("\n" + k + ": " + v)
		}
	}
	line("Cluster", ev.Cluster)
	line("Namespace", ev.Namespace)
	line("Reason", ev.Reason)
	line("Message", ev.Message)
	if ev.Resource.Name != "" {
		line("Resource", strings.TrimPrefix(ev.Resource.Kind+"/"+ev.Resource.Name, "/"))
	}
	line("Source", ev.Source+" ("+ev.SourceType+")")
	if !ev.Time.IsZero() {
		line("Time", ev.Time.UTC().Format(time.RFC3339))
	}
	return b.String()
}

// UUID derives a UUID-formatted id from parts, for A2A servers that expect UUIDs.
func UUID(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	b := h[:16]
	b[6] = (b[6] & 0x0f) | 0x80 // version 8: custom
	b[8] = (b[8] & 0x3f) | 0x80 // RFC 4122 variant
	s := hex.EncodeToString(b)
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32]
}
