package dispatch

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/khook/khook/mapping"
)

// Task is one agent call: what one event configuration of one hook asks of its agent.
type Task struct {
	Hook  string // namespace/name
	Agent AgentRef
	// Text is the expanded prompt followed by the event context.
	Text string
	// MessageID is deterministic per (event, hook entry), so a retried send is recognisable
	// by the agent and by khook's delivery record.
	MessageID string
	// ContextID is stable per (hook, event type, namespace, resource), so related events
	// share one agent session.
	ContextID   string
	Event       *mapping.Event
	Traceparent string
}

// NewTask builds the task that m asks for ev.
func NewTask(m Match, ev *mapping.Event) Task {
	cfg := m.Config()
	return Task{
		Hook:      m.Hook.Key(),
		Agent:     m.Agent,
		Text:      ExpandPrompt(cfg.Prompt, ev) + EventContext(ev),
		MessageID: uuidFrom("message", ev.ID, m.Hook.Key(), fmt.Sprint(m.Index)),
		ContextID: uuidFrom("context", m.Hook.Key(), ev.Type, ev.Namespace, ev.Resource.Kind, ev.Resource.Name),
		Event:     ev,
	}
}

// placeholder matches khook's prompt placeholders, with or without spaces inside the braces.
var placeholder = regexp.MustCompile(`\{\{\s*\.(EventType|ResourceName|Namespace|Reason|Message|EventMessage|Timestamp|EventTime)\s*\}\}`)

// ExpandPrompt replaces khook's placeholders in prompt with the event's values. Anything
// else in the prompt is left as written.
func ExpandPrompt(prompt string, ev *mapping.Event) string {
	return placeholder.ReplaceAllStringFunc(prompt, func(s string) string {
		switch placeholder.FindStringSubmatch(s)[1] {
		case "EventType":
			return ev.Type
		case "ResourceName":
			return ev.Resource.Name
		case "Namespace":
			return ev.Namespace
		case "Reason":
			return ev.Reason
		case "Message", "EventMessage":
			return ev.Message
		default: // Timestamp, EventTime
			return ev.Time.UTC().Format(time.RFC3339)
		}
	})
}

// EventContext is the text appended to every prompt, as khook appends it: namespace, reason
// and message, then the event's source and time.
func EventContext(ev *mapping.Event) string {
	var b strings.Builder
	line := func(k, v string) {
		if v != "" {
			b.WriteString("\n" + k + ": " + v)
		}
	}
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

// uuidFrom derives a UUID-formatted id from parts, for A2A servers that expect UUIDs.
func uuidFrom(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	b := h[:16]
	b[6] = (b[6] & 0x0f) | 0x80 // version 8: custom
	b[8] = (b[8] & 0x3f) | 0x80 // RFC 4122 variant
	s := hex.EncodeToString(b)
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32]
}
