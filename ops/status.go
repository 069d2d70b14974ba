package ops

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/outcome"
)

// Status is the state of the pipeline as JetStream and the configuration see it.
type Status struct {
	Streams     []StreamStatus    `json:"streams"`
	Consumers   []ConsumerStatus  `json:"consumers"`
	DeadLetters []DeadLetterCount `json:"deadLetters"`
	Plugins     []PluginStatus    `json:"plugins"`
	Hooks       []HookStatus      `json:"hooks"`
	// Groups and Agents are the dispatcher's grouping and budgets (docs/grouping.md).
	Groups GroupsStatus  `json:"groups"`
	Agents []AgentStatus `json:"agents"`
	// Outcomes counts what became of the events of the last window, per Hook.
	Outcomes *OutcomeCounts `json:"outcomes,omitempty"`
	// Edges are the clusters a hub sources events from (khook.yaml's clusters), as its raw
	// stream sees each: connected, lag, last contact. Absent on a single-cluster install.
	Edges []streams.EdgeState `json:"edges,omitempty"`
}

// GroupsStatus counts the groups in the dispatch bucket.
type GroupsStatus struct {
	// Open groups have events waiting for their task, or a task being sent.
	Open int `json:"open"`
	// Events is how many events the open groups hold.
	Events int `json:"events"`
}

// AgentStatus is one agent's queue and budget: the tasks due but waiting, and the budget in
// use against its limits (0: no limit).
type AgentStatus struct {
	Agent              string    `json:"agent"`
	Waiting            int       `json:"waiting"`
	OldestWaiting      time.Time `json:"oldestWaiting,omitzero"`
	InFlight           int       `json:"inFlight"`
	MaxConcurrentTasks int       `json:"maxConcurrentTasks"`
	// LastHour counts the tasks started in the last hour, for a budget with an hourly limit.
	LastHour        int `json:"lastHour"`
	MaxTasksPerHour int `json:"maxTasksPerHour"`
}

// StreamStatus is one stream's fill against its limits.
type StreamStatus struct {
	Name          string    `json:"name"`
	Messages      uint64    `json:"messages"`
	Bytes         uint64    `json:"bytes"`
	FirstSeq      uint64    `json:"firstSeq"`
	LastSeq       uint64    `json:"lastSeq"`
	Oldest        time.Time `json:"oldest,omitzero"`
	OldestAge     string    `json:"oldestAge,omitempty"`
	MaxAge        string    `json:"maxAge"`
	MaxBytes      int64     `json:"maxBytes"`
	MaxMsgs       int64     `json:"maxMsgs"`
	Discard       string    `json:"discard"`
	Replicas      int       `json:"replicas"`
	LimitUsageMax float64   `json:"limitUsage"` // the highest of messages, bytes and age over their limits
}

// ConsumerStatus is one durable consumer's progress.
type ConsumerStatus struct {
	Stream       string    `json:"stream"`
	Name         string    `json:"name"`
	Pending      uint64    `json:"pending"`
	AckPending   int       `json:"ackPending"`
	Redelivered  int       `json:"redelivered"`
	Waiting      int       `json:"waiting"`
	LastDelivery time.Time `json:"lastDelivery,omitzero"`
	LastAck      time.Time `json:"lastAck,omitzero"`
}

// DeadLetterCount is how many dead letters a stage holds for one reason.
type DeadLetterCount struct {
	Stage  string `json:"stage"`
	Reason string `json:"reason"`
	Count  int    `json:"count"`
}

// PluginStatus is a plugin of plugins.yaml, or a source seen in the raw stream, with the
// events the raw stream retains from it.
type PluginStatus struct {
	Name       string    `json:"name"`
	Configured bool      `json:"configured"`
	Enabled    bool      `json:"enabled"`
	Events     uint64    `json:"events"`
	LastEvent  time.Time `json:"lastEvent,omitzero"`
}

// HookStatus is one hook and what it listens to.
type HookStatus struct {
	Hook       string   `json:"hook"`
	EventTypes []string `json:"eventTypes"`
	Agents     []string `json:"agents"`
}

// Plugin names a plugin of plugins.yaml for the status.
type Plugin struct {
	Name    string
	Enabled bool
}

// GetStatus reads the streams, consumers and dead letters from JetStream; plugins and hooks
// come from the caller's configuration.
func GetStatus(ctx context.Context, js jetstream.JetStream, topo streams.Config, plugins []Plugin, hooks []HookStatus) (*Status, error) {
	s := &Status{Hooks: hooks}
	now := time.Now()
	for _, name := range []string{topo.Raw.Name, topo.Events.Name, topo.DLQ.Name, topo.Outcomes.Name} {
		st, err := js.Stream(ctx, name)
		if name == topo.Outcomes.Name && errors.Is(err, jetstream.ErrStreamNotFound) {
			// Streams applied by a khook before outcomes were recorded: every stage
			// creates it at its next start.
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", name, err)
		}
		info := st.CachedInfo()
		ss := StreamStatus{
			Name: name, Messages: info.State.Msgs, Bytes: info.State.Bytes, FirstSeq: info.State.FirstSeq,
			LastSeq: info.State.LastSeq, MaxAge: info.Config.MaxAge.String(), MaxBytes: info.Config.MaxBytes,
			MaxMsgs: info.Config.MaxMsgs, Discard: info.Config.Discard.String(), Replicas: info.Config.Replicas,
		}
		if info.State.Msgs > 0 {
			ss.Oldest = info.State.FirstTime
			ss.OldestAge = now.Sub(info.State.FirstTime).Round(time.Second).String()
			if info.Config.MaxAge > 0 {
				ss.LimitUsageMax = max(ss.LimitUsageMax, now.Sub(info.State.FirstTime).Seconds()/info.Config.MaxAge.Seconds())
			}
		}
		if info.Config.MaxBytes > 0 {
			ss.LimitUsageMax = max(ss.LimitUsageMax, float64(info.State.Bytes)/float64(info.Config.MaxBytes))
		}
		if info.Config.MaxMsgs > 0 {
			ss.LimitUsageMax = max(ss.LimitUsageMax, float64(info.State.Msgs)/float64(info.Config.MaxMsgs))
		}
		s.Streams = append(s.Streams, ss)
	}
	for _, c := range []struct{ stream, durable string }{
		{topo.Raw.Name, topo.Mapper.Durable}, {topo.Events.Name, topo.Dispatcher.Durable},
	} {
		cons, err := js.Consumer(ctx, c.stream, c.durable)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("consumer %s: %w", c.durable, err)
		}
		info := cons.CachedInfo()
		cs := ConsumerStatus{Stream: c.stream, Name: c.durable, Pending: info.NumPending, AckPending: info.NumAckPending,
			Redelivered: info.NumRedelivered, Waiting: info.NumWaiting}
		if info.Delivered.Last != nil {
			cs.LastDelivery = *info.Delivered.Last
		}
		if info.AckFloor.Last != nil {
			cs.LastAck = *info.AckFloor.Last
		}
		s.Consumers = append(s.Consumers, cs)
	}

	counts := map[DeadLetterCount]int{}
	_, err := Scan(ctx, js, Range{Stream: topo.DLQ.Name, HeadersOnly: true}, func(m Msg) error {
		d := letterOf(m)
		counts[DeadLetterCount{Stage: d.Stage, Reason: d.Reason}]++
		return nil
	})
	if err != nil {
		return nil, err
	}
	for k, n := range counts {
		k.Count = n
		s.DeadLetters = append(s.DeadLetters, k)
	}
	slices.SortFunc(s.DeadLetters, func(a, b DeadLetterCount) int {
		return cmp.Or(cmp.Compare(a.Stage, b.Stage), cmp.Compare(a.Reason, b.Reason))
	})

	// Events per source, from the raw stream's subjects <prefix>.raw.<source>.<type>.
	raw, err := js.Stream(ctx, topo.Raw.Name)
	if err != nil {
		return nil, err
	}
	info, err := raw.Info(ctx, jetstream.WithSubjectFilter(topo.Subjects().AllRaw()))
	if err != nil {
		return nil, err
	}
	bySource := map[string]*PluginStatus{}
	for _, p := range plugins {
		bySource[p.Name] = &PluginStatus{Name: p.Name, Configured: true, Enabled: p.Enabled}
	}
	for subj, n := range info.State.Subjects {
		parts := strings.Split(subj, ".")
		if len(parts) < 4 {
			continue
		}
		p := bySource[parts[2]]
		if p == nil {
			p = &PluginStatus{Name: parts[2]}
			bySource[parts[2]] = p
		}
		p.Events += n
	}
	for name, p := range bySource {
		if p.Events > 0 {
			if m, err := raw.GetLastMsgForSubject(ctx, topo.Subjects().Prefix+".raw."+name+".>"); err == nil {
				p.LastEvent = m.Time
			}
		}
		s.Plugins = append(s.Plugins, *p)
	}
	slices.SortFunc(s.Plugins, func(a, b PluginStatus) int { return cmp.Compare(a.Name, b.Name) })
	if len(topo.Edges) > 0 {
		if s.Edges, err = streams.Edges(ctx, js, topo); err != nil {
			return nil, fmt.Errorf("edges: %w", err)
		}
	}
	return s, nil
}

// WriteTable prints s for a terminal.
func (s *Status) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tMESSAGES\tBYTES\tOLDEST\tMAX AGE\tMAX BYTES\tMAX MSGS\tDISCARD\tREPLICAS\tLIMIT USE")
	for _, st := range s.Streams {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%.0f%%\n", st.Name, st.Messages, st.Bytes, dash(st.OldestAge),
			st.MaxAge, limit(st.MaxBytes), limit(st.MaxMsgs), st.Discard, st.Replicas, st.LimitUsageMax*100)
	}
	fmt.Fprintln(tw, "\nCONSUMER\tSTREAM\tPENDING\tACK PENDING\tREDELIVERED\tWAITING\tLAST DELIVERY")
	for _, c := range s.Consumers {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\n", c.Name, c.Stream, c.Pending, c.AckPending, c.Redelivered, c.Waiting, ago(c.LastDelivery))
	}
	fmt.Fprintln(tw, "\nDEAD LETTERS\tREASON\tCOUNT\t")
	if len(s.DeadLetters) == 0 {
		fmt.Fprintln(tw, "(none)\t\t\t")
	}
	for _, d := range s.DeadLetters {
		fmt.Fprintf(tw, "%s\t%s\t%d\t\n", d.Stage, d.Reason, d.Count)
	}
	fmt.Fprintln(tw, "\nPLUGIN\tCONFIGURED\tENABLED\tRETAINED EVENTS\tLAST EVENT")
	for _, p := range s.Plugins {
		fmt.Fprintf(tw, "%s\t%t\t%t\t%d\t%s\n", p.Name, p.Configured, p.Enabled, p.Events, ago(p.LastEvent))
	}
	fmt.Fprintln(tw, "\nHOOK\tEVENT TYPES\tAGENTS\t\t")
	for _, h := range s.Hooks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t\t\n", h.Hook, strings.Join(h.EventTypes, ","), strings.Join(h.Agents, ","))
	}
	if o := s.Outcomes; o != nil {
		fmt.Fprintf(tw, "\nOUTCOMES (LAST %s)\tMATCHED\tDELIVERED\tSUPPRESSED\tGROUPED\tWAITING\tRETRIED\tDEAD-LETTERED\n", strings.ToUpper(shortDuration(o.Window)))
		for _, h := range o.Hooks {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", h.Hook, h.Matched, h.Delivered, h.Suppressed, h.Grouped, h.Waiting, h.Retried, h.DeadLettered)
		}
		fmt.Fprintf(tw, "(no hook matched)\t%d\t\t\t\t\t\t\n", o.Unmatched)
		fmt.Fprintf(tw, "(not mapped)\t%d unmapped, %d disabled rule, %d dead-lettered\t\t\t\t\t\t\n", o.Unmapped, o.Disabled, o.MapperDeadLettered)
	}
	if len(s.Edges) > 0 {
		fmt.Fprintln(tw, "\nEDGE (CLUSTER)\tCONNECTED\tLAG\tLAST CONTACT\tFORWARDED\tERROR")
		for _, e := range s.Edges {
			contact, connected := "never", fmt.Sprint(e.Connected)
			if !e.Sourced {
				contact, connected = "-", "not sourced: run khook streams apply"
			} else if e.Active >= 0 {
				contact = e.Active.Round(time.Second).String() + " ago"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\n", e.Cluster, connected, e.Lag, contact, e.Forwarded, dash(e.Error))
		}
	}
	fmt.Fprintf(tw, "\nGROUPS OPEN\tEVENTS\t\t\t\n%d\t%d\t\t\t\n", s.Groups.Open, s.Groups.Events)
	fmt.Fprintln(tw, "\nAGENT\tWAITING\tOLDEST WAITING\tIN FLIGHT\tLAST HOUR")
	if len(s.Agents) == 0 {
		fmt.Fprintln(tw, "(no waiting tasks and no budgets in use)\t\t\t\t")
	}
	for _, a := range s.Agents {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", a.Agent, a.Waiting, ago(a.OldestWaiting),
			ofLimit(a.InFlight, a.MaxConcurrentTasks), hourly(a))
	}
	return tw.Flush()
}

// ofLimit prints a count against its limit: "3/10", or "3" without a limit.
// hourly is the LAST HOUR column: tasks started in the last hour are counted only for a
// budget with an hourly limit (the budget keeps nothing else), so without one it is "-".
func hourly(a AgentStatus) string {
	if a.MaxTasksPerHour <= 0 {
		return "-"
	}
	return ofLimit(a.LastHour, a.MaxTasksPerHour)
}

func ofLimit(n, limit int) string {
	if limit <= 0 {
		return fmt.Sprint(n)
	}
	return fmt.Sprintf("%d/%d", n, limit)
}

// shortDuration drops the zero minutes and seconds Go writes: "1h0m0s" is "1h".
func shortDuration(d string) string {
	if strings.HasSuffix(d, "m0s") {
		d = strings.TrimSuffix(d, "0s")
	}
	if strings.HasSuffix(d, "h0m") {
		d = strings.TrimSuffix(d, "0m")
	}
	return d
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func limit(n int64) string {
	if n <= 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

// OutcomeCounts counts the outcome records of a window: per Hook, and for the events that
// reached no Hook.
type OutcomeCounts struct {
	// Window is how far back the counts go ("1h0m0s"), and Since when they start.
	Window string       `json:"window"`
	Since  time.Time    `json:"since"`
	Hooks  []HookCounts `json:"hooks"`
	// Unmatched events matched no Hook entry; Unmapped had no mapping rule and were dropped
	// (Disabled: their rule is disabled); MapperDeadLettered could not be mapped at all.
	Unmatched          int `json:"unmatched"`
	Unmapped           int `json:"unmapped"`
	Disabled           int `json:"disabled"`
	MapperDeadLettered int `json:"mapperDeadLettered"`
}

// HookCounts is what one Hook's tasks came to in the window. Matched counts events; the
// rest count decisions: Delivered counts tasks (a group's task once, however many events
// it covered), DeadLettered the events given up.
type HookCounts struct {
	Hook         string `json:"hook"`
	Matched      int    `json:"matched"`
	Delivered    int    `json:"delivered"`
	Suppressed   int    `json:"suppressed"`
	Grouped      int    `json:"grouped"`
	Waiting      int    `json:"waiting"`
	Retried      int    `json:"retried"`
	DeadLettered int    `json:"deadLettered"`
}

// CountOutcomes counts the outcome records stored in the last window.
func CountOutcomes(ctx context.Context, js jetstream.JetStream, topo streams.Config, window time.Duration) (*OutcomeCounts, error) {
	since := time.Now().Add(-window)
	c := &OutcomeCounts{Window: window.String(), Since: since.UTC(), Hooks: []HookCounts{}}
	hooks := map[string]*HookCounts{}
	matched := map[string]map[string]bool{}
	// A decision is counted once: an event redelivered (another of its tasks was retried)
	// records its earlier decisions again, and a delivered group task is one task.
	seen := map[string]bool{}
	_, err := Scan(ctx, js, Range{Stream: topo.Outcomes.Name, Subject: topo.Subjects().AllOutcomes(), Since: since}, func(m Msg) error {
		r, err := outcome.Decode(m.Data)
		if err != nil || r.Mirrored(m.Subject) {
			return nil //nolint:nilerr // a record that does not decode is not counted; the scan goes on
		}
		key := r.EventID + "\n" + r.TaskKey() + "\n" + string(r.Outcome)
		switch {
		case r.EventID == "":
			// A group's task: one per message id.
			key = r.MessageID + "\n" + string(r.Outcome)
		case r.Outcome == outcome.Retrying:
			key += "\n" + strconv.Itoa(r.Attempt) + r.Time.String()
		}
		if r.Hook != "" && r.EventID != "" {
			if matched[r.Hook] == nil {
				matched[r.Hook] = map[string]bool{}
			}
			matched[r.Hook][r.EventID] = true
		}
		if seen[key] || (r.Outcome == outcome.Grouped && r.Repeat) {
			return nil
		}
		seen[key] = true
		if r.Hook == "" {
			switch {
			case r.Outcome == outcome.Unmatched:
				c.Unmatched++
			case r.Outcome == outcome.Unmapped:
				c.Unmapped++
			case r.Outcome == outcome.Disabled:
				c.Disabled++
			case r.Outcome == outcome.DeadLettered && r.Stage == outcome.StageMapper:
				c.MapperDeadLettered++
			}
			return nil
		}
		h := hooks[r.Hook]
		if h == nil {
			h = &HookCounts{Hook: r.Hook}
			hooks[r.Hook] = h
		}
		switch r.Outcome {
		case outcome.Delivered:
			h.Delivered++
		case outcome.Suppressed:
			h.Suppressed++
		case outcome.Grouped:
			h.Grouped++
		case outcome.Waiting:
			h.Waiting++
		case outcome.Retrying:
			h.Retried++
		case outcome.DeadLettered:
			// A group's task given up is counted by its events' own records.
			if r.EventID != "" {
				h.DeadLettered++
			}
		}
		return nil
	})
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	for name, h := range hooks {
		h.Matched = len(matched[name])
		c.Hooks = append(c.Hooks, *h)
	}
	slices.SortFunc(c.Hooks, func(a, b HookCounts) int { return cmp.Compare(a.Hook, b.Hook) })
	return c, nil
}
