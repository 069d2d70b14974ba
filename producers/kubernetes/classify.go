package kubernetes

import (
	"fmt"
	"regexp"
	"strings"

	eventsv1 "k8s.io/api/events/v1"

	"github.com/khook/khook/streams/subject"
)

// The event types khook has always classified Kubernetes events into.
const (
	PodRestart   = "pod-restart"
	PodPending   = "pod-pending"
	OOMKill      = "oom-kill"
	ProbeFailed  = "probe-failed"
	NodeNotReady = "node-not-ready"
)

// Rule adds a classification: events whose reason and note match the patterns (Go regular
// expressions, case-insensitive; empty matches anything), about objects of Kind (empty:
// any), of EventType Warning or Normal (empty: Warning), become Type.
type Rule struct {
	Reason    string `yaml:"reason"`
	Note      string `yaml:"note"`
	Kind      string `yaml:"kind"`
	EventType string `yaml:"eventType"`
	Type      string `yaml:"type"`

	reason, note *regexp.Regexp
}

func (r *Rule) compile() error {
	var err error
	if r.reason, err = regexp.Compile("(?i)" + r.Reason); err != nil {
		return fmt.Errorf("reason: %w", err)
	}
	if r.note, err = regexp.Compile("(?i)" + r.Note); err != nil {
		return fmt.Errorf("note: %w", err)
	}
	if r.EventType == "" {
		r.EventType = "Warning"
	}
	if r.EventType != "Warning" && r.EventType != "Normal" {
		return fmt.Errorf("eventType: must be Warning or Normal, got %q", r.EventType)
	}
	return subject.CheckToken("type", r.Type)
}

func (r *Rule) match(e *eventsv1.Event) bool {
	return (r.Kind == "" || strings.EqualFold(r.Kind, e.Regarding.Kind)) &&
		strings.EqualFold(r.EventType, e.Type) &&
		r.reason.MatchString(e.Reason) && r.note.MatchString(e.Note)
}

// Classify returns the khook event type of a Kubernetes event, or "" to drop it. Extra
// rules are tried first, in order; then khook's table:
//
//	node-not-ready  Node events with reason NodeNotReady (of either type)
//	(drop)          every other Normal event
//	oom-kill        Pod: reason OOMKilling or OOMKilled; or Killing/Killed with "oom" or
//	                "out of memory" in the note
//	pod-restart     Pod: other Killing/Killed; BackOff; Failed with "container" in the note
//	pod-pending     Pod: FailedScheduling; Pending; a Warning whose note mentions "pending"
//	probe-failed    Pod: Unhealthy with liveness, readiness or startup in the note; a
//	                Warning whose reason mentions "probe"
func Classify(e *eventsv1.Event, extra []Rule) string {
	for i := range extra {
		if extra[i].match(e) {
			return extra[i].Type
		}
	}
	if e.Regarding.Kind == "Node" && strings.EqualFold(e.Reason, "NodeNotReady") {
		return NodeNotReady
	}
	if strings.EqualFold(e.Type, "Normal") || e.Regarding.Kind != "Pod" {
		return ""
	}
	reason, note := strings.ToLower(e.Reason), strings.ToLower(e.Note)
	warning := strings.EqualFold(e.Type, "Warning")
	switch {
	case reason == "oomkilling" || reason == "oomkilled":
		return OOMKill
	case reason == "killing" || reason == "killed":
		if strings.Contains(note, "oom") || strings.Contains(note, "out of memory") {
			return OOMKill
		}
		return PodRestart
	case reason == "backoff":
		return PodRestart
	case reason == "failed" && strings.Contains(note, "container"):
		return PodRestart
	case reason == "failedscheduling", reason == "pending", warning && strings.Contains(note, "pending"):
		return PodPending
	case reason == "unhealthy" && (strings.Contains(note, "liveness") || strings.Contains(note, "readiness") || strings.Contains(note, "startup")):
		return ProbeFailed
	case warning && strings.Contains(reason, "probe"):
		return ProbeFailed
	}
	return ""
}
