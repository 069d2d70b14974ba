package hook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/khook/khook/mapping"
)

// Grouping defaults, Alertmanager's where it has one.
const (
	DefaultGroupWait     = 30 * time.Second
	DefaultGroupInterval = 5 * time.Minute
	// DefaultMaxEventsPerTask bounds the distinct events one task lists; the rest are
	// counted, not listed.
	DefaultMaxEventsPerTask = 100
	// MaxGroupEvents is the most a hook may ask for: a group's state is one KV value, rewritten
	// on every event, and an agent's context is the real bound anyway.
	MaxGroupEvents = 1000
)

// GroupLabels are what groupBy may name: the event's fields, its owning workload, and tags.
var GroupLabels = []string{"cluster", "eventType", "namespace", "resourceKind", "resourceName", "owner", "reason", "severity"}

// inCluster are the labels whose values name something inside one cluster: the same
// namespace or workload name in two clusters is two things, so grouping by any of them
// groups by cluster too.
var inCluster = []string{"namespace", "resourceName", "owner"}

// tagLabel prefixes a tag in groupBy: "tags.team" groups by the event's team tag.
const tagLabel = "tags."

// Grouping is a hook's grouping, resolved: what to group by and the timers.
type Grouping struct {
	By        []string
	Wait      time.Duration
	Interval  time.Duration
	MaxEvents int
}

// Grouping returns the hook's grouping and whether it groups at all: a hook groups when it
// sets groupBy or groupWait. Without either, each event is its own task, as in khook.
func (h *Hook) Grouping() (Grouping, bool) {
	s := h.Spec
	if len(s.GroupBy) == 0 && s.GroupWait == "" {
		return Grouping{}, false
	}
	g := Grouping{By: s.GroupBy, Wait: DefaultGroupWait, Interval: DefaultGroupInterval, MaxEvents: DefaultMaxEventsPerTask}
	if d, err := time.ParseDuration(s.GroupWait); err == nil {
		g.Wait = d
	}
	if d, err := time.ParseDuration(s.GroupInterval); err == nil {
		g.Interval = d
	}
	if s.MaxEventsPerTask > 0 {
		g.MaxEvents = s.MaxEventsPerTask
	}
	return g, true
}

func (s HookSpec) validateGrouping() []error {
	var errs []error
	for i, by := range s.GroupBy {
		if !slices.Contains(GroupLabels, by) && (!strings.HasPrefix(by, tagLabel) || len(by) == len(tagLabel)) {
			errs = append(errs, fmt.Errorf("spec.groupBy[%d]: must be one of %s or tags.<name>, got %q", i, strings.Join(GroupLabels, ", "), by))
		}
	}
	for _, f := range []struct {
		name, value string
		min         time.Duration
	}{{"groupWait", s.GroupWait, 0}, {"groupInterval", s.GroupInterval, MinWindow}} {
		if f.value == "" {
			continue
		}
		if d, err := time.ParseDuration(f.value); err != nil || d < f.min {
			errs = append(errs, fmt.Errorf("spec.%s: want a duration of at least %s such as 5m, got %q", f.name, f.min, f.value))
		}
	}
	if s.MaxEventsPerTask < 0 || s.MaxEventsPerTask > MaxGroupEvents {
		errs = append(errs, fmt.Errorf("spec.maxEventsPerTask: must be 1 to %d, got %d", MaxGroupEvents, s.MaxEventsPerTask))
	}
	if s.GroupInterval != "" || s.MaxEventsPerTask != 0 {
		if len(s.GroupBy) == 0 && s.GroupWait == "" {
			errs = append(errs, errors.New("spec.groupInterval and spec.maxEventsPerTask need spec.groupBy or spec.groupWait, which turn grouping on"))
		}
	}
	return errs
}

// Owner is the workload an event's resource belongs to, as the Kubernetes producer resolved
// it through ownerReferences ("Deployment/web"); the resource itself when the event carries
// no owner, so that grouping by owner never merges unrelated resources.
func Owner(ev *mapping.Event) string {
	if bytes.Contains(ev.Data, []byte(`"owner"`)) {
		var d struct {
			Owner struct{ Kind, Name string } `json:"owner"`
		}
		if json.Unmarshal(ev.Data, &d) == nil && d.Owner.Name != "" {
			return d.Owner.Kind + "/" + d.Owner.Name
		}
	}
	return strings.TrimPrefix(ev.Resource.Kind+"/"+ev.Resource.Name, "/")
}

// Labels returns the values of the group labels for ev. An event from a cluster grouped by
// a label that names something inside its cluster (inCluster) has the cluster among its
// labels too, whether or not groupBy names it.
func (g Grouping) Labels(ev *mapping.Event) map[string]string {
	out := make(map[string]string, len(g.By)+1)
	for _, by := range g.By {
		if ev.Cluster != "" && slices.Contains(inCluster, by) {
			out["cluster"] = ev.Cluster
		}
		switch by {
		case "cluster":
			out[by] = ev.Cluster
		case "eventType":
			out[by] = ev.Type
		case "namespace":
			out[by] = ev.Namespace
		case "resourceKind":
			out[by] = ev.Resource.Kind
		case "resourceName":
			out[by] = ev.Resource.Name
		case "owner":
			out[by] = Owner(ev)
		case "reason":
			out[by] = ev.Reason
		case "severity":
			out[by] = ev.Severity
		default:
			out[by] = ev.Tags[strings.TrimPrefix(by, tagLabel)]
		}
	}
	return out
}

// GroupKey identifies one group: one hook entry (so one agent and one prompt) and the values
// of its labels. Every replica derives the same key.
func GroupKey(entry string, labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := []string{"group", entry}
	for _, k := range keys {
		parts = append(parts, k, labels[k])
	}
	return Hash(parts...)
}

// GroupEvent is one distinct event of a group (by type and resource): the latest occurrence,
// and how many times it occurred since the group's last task.
type GroupEvent struct {
	mapping.Event
	Count     int       `json:"count"`
	FirstSeen time.Time `json:"firstSeen"`
}

// Group is what a grouped task's prompt sees as .Group.
type Group struct {
	Key    string            `json:"key"`
	Labels map[string]string `json:"labels"`
	// Count is how many events arrived since the group's last task; Total since it opened.
	Count, Total int
	// Omitted is how many of the Count events are not listed in .Events, past
	// maxEventsPerTask.
	Omitted int
	// Unlisted is how many more are not listed to keep the task within the prompt limit.
	Unlisted int
	// Clusters are the clusters of the group's events, listed or not, sorted; empty when
	// none has a cluster.
	Clusters []string
	// Resources is how many distinct events (type and resource) .Events lists.
	Resources           int
	FirstSeen, LastSeen time.Time
	// Sent is how many tasks the group had before this one.
	Sent int
	// Incarnation tells this group from an earlier one with the same key: the same
	// incident recurring after its group ended.
	Incarnation string `json:"-"`
}

// GroupTask builds the task of a group: one call for every event of the group since its last
// task. The prompt sees .Events and .Group besides the latest event's fields; the text after
// it lists the group compactly. The ids are the group's, per task, so a retried send is
// recognisable and the settled record keeps it from being called twice: MessageID is
// GroupMessageID(g.Key, g.Incarnation, g.Sent).
//
// A storm's prompt may render past MaxPromptOutput when it lists every event (a thousand
// events with a message each): the task then lists fewer, halving until it fits, and counts
// the rest in .Group.Unlisted, which the text after the prompt states. Only a prompt too
// large with a single event fails, with ErrPromptTooLarge.
func GroupTask(m Match, g Group, events []GroupEvent) (Task, error) {
	// A group can have only events past maxEventsPerTask pending, counted but not listed.
	latest := &mapping.Event{}
	if len(events) > 0 {
		latest = &events[len(events)-1].Event
	}
	for i := range events {
		if events[i].Time.After(latest.Time) {
			latest = &events[i].Event
		}
	}
	t := Task{
		Hook:           m.Hook.Key(),
		Agent:          m.Agent,
		MessageID:      GroupMessageID(g.Key, g.Incarnation, g.Sent),
		ContextID:      UUID("group-context", g.Key),
		Event:          latest,
		SuppressionKey: g.Key,
	}
	for _, e := range events {
		if e.Cluster != "" && !slices.Contains(g.Clusters, e.Cluster) {
			g.Clusters = append(g.Clusters, e.Cluster)
		}
	}
	g.Clusters = slices.Compact(slices.Sorted(slices.Values(g.Clusters)))
	data := newPromptData(latest)
	listed := events
	var prompt string
	var err error
	for {
		data.Events, data.Group = listed, g
		data.Group.Resources = len(listed)
		if prompt, err = execute(m.prompt, &data); !errors.Is(err, ErrPromptTooLarge) || len(listed) <= 1 {
			break
		}
		listed = listed[:len(listed)/2]
		g.Unlisted = 0
		for _, e := range events[len(listed):] {
			g.Unlisted += e.Count
		}
	}
	if errors.Is(err, ErrPromptTooLarge) {
		return t, fmt.Errorf("hook %s prompt: %w", m.Hook.Key(), err)
	}
	if err != nil {
		prompt = expandPlaceholders(m.Config().Prompt, latest)
		err = fmt.Errorf("hook %s prompt: %w", m.Hook.Key(), err)
	}
	g.Resources = len(events)
	t.Text = prompt + GroupContext(g, listed)
	return t, err
}

// GroupMessageID is the message id of a group's task after sent tasks: one per group, per
// incarnation of the group and per task, so that a retried send of the same task is
// recognisable while the same incident recurring after its group ended is a new task (its
// group is a new incarnation). Groups stored before incarnations existed have none, and keep
// their ids.
func GroupMessageID(key, incarnation string, sent int) string {
	if incarnation == "" {
		return UUID("group-message", key, strconv.Itoa(sent))
	}
	return UUID("group-message", key, incarnation, strconv.Itoa(sent))
}

// GroupContext is the text appended to a grouped task's prompt: the group's labels and
// counts, then one line per distinct event.
func GroupContext(g Group, events []GroupEvent) string {
	var b strings.Builder
	keys := make([]string, 0, len(g.Labels))
	for k := range g.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	labels := make([]string, 0, len(keys))
	for _, k := range keys {
		labels = append(labels, k+"="+g.Labels[k])
	}
	if len(labels) > 0 {
		b.WriteString("\nGroup: " + strings.Join(labels, ", "))
	}
	if _, ok := g.Labels["cluster"]; !ok {
		// A group across clusters says which, so the agent knows where to look: all of
		// them, those of events not listed too (GroupTask fills g.Clusters).
		clusters := slices.Clone(g.Clusters)
		for _, e := range events {
			if e.Cluster != "" && !slices.Contains(clusters, e.Cluster) {
				clusters = append(clusters, e.Cluster)
			}
		}
		if len(clusters) > 0 {
			slices.Sort(clusters)
			b.WriteString("\nClusters: " + strings.Join(clusters, ", "))
		}
	}
	fmt.Fprintf(&b, "\nEvents: %d on %d resources", g.Count, g.Resources)
	if g.Sent > 0 {
		fmt.Fprintf(&b, " since the last task (%d tasks, %d events in all)", g.Sent, g.Total)
	}
	if !g.FirstSeen.IsZero() {
		fmt.Fprintf(&b, ", from %s to %s", g.FirstSeen.UTC().Format(time.RFC3339), g.LastSeen.UTC().Format(time.RFC3339))
	}
	b.WriteString("\nAffected:")
	omitted := g.Omitted
	for i, e := range events {
		if b.Len() > MaxPromptOutput {
			// maxEventsPerTask of long lines could still make a text no agent wants; the
			// rest are counted like the events past maxEventsPerTask.
			for _, rest := range events[i:] {
				omitted += rest.Count
			}
			break
		}
		res := strings.TrimPrefix(e.Resource.Kind+"/"+e.Resource.Name, "/")
		b.WriteString("\n- ")
		if e.Cluster != "" {
			b.WriteString("[" + e.Cluster + "] ")
		}
		fmt.Fprintf(&b, "%s %s", e.Namespace, res)
		if e.Count > 1 {
			fmt.Fprintf(&b, " ×%d", e.Count)
		}
		if e.Reason != "" || e.Message != "" {
			fmt.Fprintf(&b, ": %s", strings.TrimPrefix(e.Reason+" "+Truncate(e.Message, maxListedMessage), " "))
		}
	}
	if omitted > 0 {
		fmt.Fprintf(&b, "\n- and %d more events not listed (maxEventsPerTask)", omitted)
	}
	if g.Unlisted > 0 {
		fmt.Fprintf(&b, "\n- and %d more events not listed, to keep the task within the prompt limit", g.Unlisted)
	}
	return b.String()
}

// maxListedMessage bounds each event's message in the group listing, so that a task's text
// stays within maxEventsPerTask short lines.
const maxListedMessage = 200

// Truncate cuts s to at most n bytes, on a rune boundary, and marks the cut with an
// ellipsis.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
