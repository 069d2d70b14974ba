package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/khook/khook/consumers/dispatch"
	"github.com/khook/khook/consumers/dispatch/kubehooks"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/internal/ops"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/producers"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/subject"
)

// opsSession is what the operations commands share: the configuration and a JetStream
// connection to the pipeline's NATS.
type opsSession struct {
	cfg config.Config
	nc  *nats.Conn
	js  jetstream.JetStream
}

func openOps(common *commonFlags) (*opsSession, error) {
	cfg, err := config.Load(common.config, environ(), common.overrides())
	if err != nil {
		return nil, err
	}
	nc, js, err := openJetStream(cfg, nil)
	if err != nil {
		return nil, err
	}
	return &opsSession{cfg: cfg, nc: nc, js: js}, nil
}

// hooks are the hooks the dispatcher would use: the cluster's Hook resources or hooks.yaml.
func (s *opsSession) hooks(ctx context.Context) (*dispatch.Index, error) {
	// A command answers within a bound; only the dispatcher waits for an API server.
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	rc, err := hooksFromCluster(wctx, s.cfg, zap.NewNop())
	if err != nil {
		return nil, err
	}
	if rc != nil {
		return kubehooks.List(ctx, rc)
	}
	idx, _, err := loadHooks(s.cfg.Files.Hooks)
	return idx, err
}

// interruptible ends ctx on SIGINT or SIGTERM, so commands stop cleanly and say where.
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}

// parseWhen reads a time flag; see ops.ParseTime.
func parseWhen(flagName, v string, ago bool) (time.Time, error) {
	t, err := ops.ParseTime(v, ago)
	if err != nil {
		return t, fmt.Errorf("--%s: %w", flagName, err)
	}
	return t, nil
}

// ---- khook replay ----

func runReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, common := newFlagSet("replay", stderr)
	through := fs.String("through", "mapper", "where events re-enter: mapper (raw events, re-mapped with today's mappings) or dispatcher (normalized events, to today's hooks)")
	since := fs.String("since", "", "replay events stored since this long ago (2h, 2d) or this RFC 3339 time")
	from := fs.String("from", "", "same as --since, for symmetry with --to")
	to := fs.String("to", "", "replay events stored up to this RFC 3339 time")
	fromSeq := fs.Uint64("from-seq", 0, "first stream sequence to replay")
	toSeq := fs.Uint64("to-seq", 0, "last stream sequence to replay")
	source := fs.String("source", "", "only events from this source (plugin)")
	typ := fs.String("type", "", "only events of this type (the raw type through the mapper, the internal type through the dispatcher)")
	namespace := fs.String("namespace", "", "only events in this namespace")
	rate := fs.Float64("rate", 0, "at most this many events per second (0: as fast as JetStream takes them)")
	dryRun := fs.Bool("dry-run", false, "print which hooks and agents each event would reach; send nothing")
	ignoreSuppression := fs.Bool("ignore-suppression", false, "deliver even inside a hook's suppression window")
	resume := fs.String("resume", "", "continue an interrupted replay by its id")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	sel := ops.Selection{Through: *through, FromSeq: *fromSeq, ToSeq: *toSeq, Source: *source, Type: *typ,
		Namespace: *namespace, IgnoreSuppression: *ignoreSuppression}
	var err error
	if *since != "" && *from != "" {
		return errors.New("--since and --from are the same bound: give one")
	}
	if sel.Since, err = parseWhen("since", *since+*from, true); err != nil {
		return err
	}
	if sel.Until, err = parseWhen("to", *to, false); err != nil {
		return err
	}
	s, err := openOps(common)
	if err != nil {
		return err
	}
	defer s.nc.Close()
	ctx, stop := interruptible(ctx)
	defer stop()

	rp := &ops.Replayer{JS: s.js, Topo: s.cfg.Streams, Rate: *rate, DryRun: *dryRun,
		OnDescribe: func(line string) { fmt.Fprintln(stdout, line) }}
	var r *ops.Replay
	if *resume != "" {
		if r, err = rp.Load(ctx, *resume); err != nil {
			return err
		}
		if r.Done {
			fmt.Fprintf(stdout, "replay %s is already complete: %d sent\n", r.ID, r.Sent)
			return nil
		}
		fmt.Fprintf(stderr, "resuming replay %s through the %s at sequence %d (%d sent so far)\n", r.ID, r.Through, r.NextSeq, r.Sent)
	} else {
		if r, err = rp.Plan(ctx, sel); err != nil {
			return err
		}
		if !*dryRun {
			fmt.Fprintf(stderr, "replay %s: up to %d events of %s (%s) through the %s; resume with: khook replay --resume %s\n",
				r.ID, r.Total, r.Stream, r.Subject, r.Through, r.ID)
		}
	}
	// Raw events are mapped with the current mappings to find their namespace and, for a
	// dry run, what they would become; known once the replay is planned or loaded.
	var rules *mapping.Rules
	if r.Through == ops.ThroughMapper && (r.Namespace != "" || *dryRun) {
		if rules, _, err = loadRules(s.cfg.Files.Mappings); err != nil {
			return err
		}
		rp.Namespace = func(m ops.Msg) string {
			if ev, ok := mapRaw(s.cfg.Streams.Subjects(), rules, m); ok {
				return ev.Namespace
			}
			return ""
		}
	}
	if *dryRun {
		idx, err := s.hooks(ctx)
		if err != nil {
			return err
		}
		rp.Describe = func(m ops.Msg) string { return describe(s.cfg.Streams.Subjects(), rules, idx, r.Through, m) }
	}
	rp.Progress = newProgress(stderr, time.Now())
	runErr := rp.Run(ctx, r)
	verb := "sent"
	if *dryRun {
		verb = "would send"
	}
	state := "complete"
	if !r.Done {
		state = "interrupted; resume with: khook replay --resume " + r.ID
	}
	fmt.Fprintf(stdout, "replay %s: %s %d events, skipped %d; %s\n", r.ID, verb, r.Sent, r.Skipped, state)
	if runErr != nil {
		return runErr
	}
	if !r.Done && !*dryRun {
		// Interrupted on purpose: the progress is stored and the exit code says so.
		return errors.New("interrupted")
	}
	return nil
}

// mapRaw maps a raw event with the current rules.
func mapRaw(subjects subject.Builder, rules *mapping.Rules, m ops.Msg) (mapping.Event, bool) {
	ce, err := cloudevent.Decode(m.Data)
	if err != nil {
		return mapping.Event{}, false
	}
	ev, outcome := mapping.Map(rules, mapping.RawOf(subjects.SourceOf(m.Subject), m.Header.Get(jetstream.MsgIDHeader), ce))
	return ev, outcome.HasEvent()
}

// describe says what one event would do: the internal type it maps to and the hooks and
// agents it would reach.
func describe(subjects subject.Builder, rules *mapping.Rules, idx *dispatch.Index, through string, m ops.Msg) string {
	var ev mapping.Event
	if through == ops.ThroughMapper {
		var ok bool
		if ev, ok = mapRaw(subjects, rules, m); !ok {
			return "not mapped (no enabled rule): dropped or dead-lettered per the unmapped policy"
		}
	} else {
		ce, err := cloudevent.Decode(m.Data)
		if err != nil || json.Unmarshal(ce.Data, &ev) != nil {
			return "not a normalized event"
		}
	}
	matches := idx.Match(&ev)
	if len(matches) == 0 {
		return fmt.Sprintf("%s in %q (%s): no hook matches", ev.Type, ev.Namespace, ev.Severity)
	}
	var to []string
	for _, mt := range matches {
		to = append(to, fmt.Sprintf("hook %s -> agent %s/%s", mt.Hook.Key(), mt.Agent.Namespace, mt.Agent.Name))
	}
	return fmt.Sprintf("%s in %q (%s): %s", ev.Type, ev.Namespace, ev.Severity, strings.Join(to, ", "))
}

// newProgress reports a replay's progress: a bar redrawn in place on a terminal, a plain
// line every few seconds otherwise (logs, CI).
func newProgress(w io.Writer, start time.Time) func(r *ops.Replay, final bool) {
	tty := isTerminal(w)
	var lastLine time.Time
	return func(r *ops.Replay, final bool) {
		elapsed := time.Since(start)
		rate := float64(r.Seen) / max(elapsed.Seconds(), 0.001)
		eta := "?"
		if rate > 0 && r.Total >= r.Seen {
			eta = (time.Duration(float64(r.Total-r.Seen)/rate) * time.Second).Round(time.Second).String()
		}
		pct := 100.0
		if r.Total > 0 {
			pct = min(100, 100*float64(r.Seen)/float64(r.Total))
		}
		line := fmt.Sprintf("%d/%d selected, %d sent, %d skipped, %.0f/s, ETA %s", r.Seen, r.Total, r.Sent, r.Skipped, rate, eta)
		switch {
		case tty:
			const width = 30
			done := int(pct / 100 * width)
			fmt.Fprintf(w, "\r[%s%s] %3.0f%% %s ", strings.Repeat("=", done), strings.Repeat(" ", width-done), pct, line)
			if final {
				fmt.Fprintln(w)
			}
		case final || time.Since(lastLine) > 2*time.Second:
			lastLine = time.Now()
			fmt.Fprintf(w, "replay %s: %.0f%% %s\n", r.ID, pct, line)
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// ---- khook status ----

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, common := newFlagSet("status", stderr)
	output := fs.String("o", "table", "output: table or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	s, err := openOps(common)
	if err != nil {
		return err
	}
	defer s.nc.Close()
	idx, err := s.hooks(ctx)
	if err != nil {
		// Status is for troubleshooting: a broken hooks source is reported, not fatal.
		fmt.Fprintf(stderr, "hooks: %v\n", err)
	}
	st, err := pipelineStatus(ctx, s.js, s.cfg, idx)
	if err != nil {
		return err
	}
	return writeAs(stdout, *output, st, st.WriteTable)
}

// pipelineStatus is the status with plugins from plugins.yaml and the given hooks.
func pipelineStatus(ctx context.Context, js jetstream.JetStream, cfg config.Config, idx *dispatch.Index) (*ops.Status, error) {
	var plugins []ops.Plugin
	if b, err := os.ReadFile(cfg.Files.Plugins); err == nil {
		if specs, err := producers.ParseSpecs(b, func(string) (string, bool) { return "", true }); err == nil {
			for _, sp := range specs {
				plugins = append(plugins, ops.Plugin{Name: sp.Name, Enabled: sp.IsEnabled()})
			}
		}
	}
	return ops.GetStatus(ctx, js, cfg.Streams, plugins, hookStatuses(idx))
}

func hookStatuses(idx *dispatch.Index) []ops.HookStatus {
	out := []ops.HookStatus{}
	if idx == nil {
		return out
	}
	for _, h := range idx.Hooks() {
		hs := ops.HookStatus{Hook: h.Key()}
		for _, ec := range h.Spec.EventConfigurations {
			ns := cmp.Or(ec.AgentRef.Namespace, h.Metadata.Namespace)
			hs.EventTypes = append(hs.EventTypes, ec.EventType)
			if a := ns + "/" + ec.AgentRef.Name; !slices.Contains(hs.Agents, a) {
				hs.Agents = append(hs.Agents, a)
			}
		}
		out = append(out, hs)
	}
	return out
}

func writeAs(w io.Writer, format string, v any, table func(io.Writer) error) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "table", "":
		return table(w)
	default:
		return fmt.Errorf("-o: want table or json, got %q", format)
	}
}

// ---- khook dlq ----

func runDLQ(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const usageText = "usage: khook dlq list|show SEQ|retry|purge [flags]"
	if len(args) == 0 {
		return errors.New(usageText)
	}
	verb, rest := args[0], args[1:]
	fs, common := newFlagSet("dlq "+verb, stderr)
	stage := fs.String("stage", "", "only dead letters of this stage (mapper, dispatcher)")
	reason := fs.String("reason", "", "only this reason (permanent, max-attempts, unmapped, ...)")
	hook := fs.String("hook", "", "only dead letters of this hook (namespace/name)")
	typ := fs.String("type", "", "only events of this type")
	since := fs.String("since", "", "only dead letters stored since this long ago (2h, 2d) or this RFC 3339 time")
	limit := fs.Int("limit", 0, "at most this many (0: all)")
	all := fs.Bool("all", false, "retry or purge every dead letter the filters select")
	output := fs.String("o", "table", "output: table or json")
	switch verb {
	case "list", "show", "retry", "purge":
	default:
		return errors.New(usageText)
	}
	positional, err := parseInterspersed(fs, rest)
	if err != nil {
		return err
	}
	f := ops.DLQFilter{Stage: *stage, Reason: *reason, Hook: *hook, Type: *typ}
	if f.Since, err = parseWhen("since", *since, true); err != nil {
		return err
	}
	for _, a := range positional {
		seq, err := strconv.ParseUint(a, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a dead letter's sequence number", a)
		}
		f.Seqs = append(f.Seqs, seq)
	}
	if (verb == "retry" || verb == "purge") && len(f.Seqs) == 0 && !*all {
		return fmt.Errorf("dlq %s: name dead letters by sequence, or select them with filters and --all", verb)
	}
	if verb == "show" && len(f.Seqs) != 1 {
		return errors.New("usage: khook dlq show SEQ")
	}
	s, err := openOps(common)
	if err != nil {
		return err
	}
	defer s.nc.Close()
	topo := s.cfg.Streams

	if verb == "show" {
		d, err := ops.GetDeadLetter(ctx, s.js, topo, f.Seqs[0])
		if err != nil {
			return err
		}
		return writeAs(stdout, *output, struct {
			ops.DeadLetter
			Headers nats.Header     `json:"headers"`
			Event   json.RawMessage `json:"event"`
		}{d, d.Header, eventJSON(d.Event)}, func(w io.Writer) error {
			fmt.Fprintf(w, "seq:       %d\nstored:    %s\nstage:     %s\nreason:    %s\nerror:     %s\nhook:      %s\ntarget:    %s\nattempts:  %d\nsubject:   %s\nevent id:  %s\nheaders:\n",
				d.Seq, d.Time.Format(time.RFC3339), d.Stage, d.Reason, d.Error, d.Hook, d.Target, d.Attempts, d.OriginalSubject, d.EventID)
			for _, k := range slices.Sorted(maps.Keys(d.Header)) {
				fmt.Fprintf(w, "  %s: %s\n", k, strings.Join(d.Header[k], ", "))
			}
			fmt.Fprintf(w, "event:\n%s\n", indentJSON(d.Event))
			return nil
		})
	}
	letters, err := ops.ListDeadLetters(ctx, s.js, topo, f, *limit)
	if err != nil {
		return err
	}
	switch verb {
	case "list":
		if letters == nil {
			letters = []ops.DeadLetter{}
		}
		return writeAs(stdout, *output, letters, func(w io.Writer) error {
			fmt.Fprintf(w, "%-8s %-20s %-10s %-14s %-22s %-28s %s\n", "SEQ", "STORED", "STAGE", "REASON", "HOOK", "EVENT", "ERROR")
			for _, d := range letters {
				fmt.Fprintf(w, "%-8d %-20s %-10s %-14s %-22s %-28s %s\n", d.Seq, d.Time.UTC().Format(time.RFC3339), d.Stage, d.Reason,
					cmp.Or(d.Hook, "-"), d.EventType+" "+d.EventID, d.Error)
			}
			return nil
		})
	case "retry":
		n := 0
		for _, d := range letters {
			if err := ops.RetryDeadLetter(ctx, s.js, topo, d); err != nil {
				fmt.Fprintf(stdout, "retried %d of %d\n", n, len(letters))
				return err
			}
			n++
			fmt.Fprintf(stdout, "retried %d: %s %s -> %s\n", d.Seq, d.EventType, d.EventID, d.OriginalSubject)
		}
		fmt.Fprintf(stdout, "retried %d dead letters\n", n)
	case "purge":
		for _, d := range letters {
			if err := ops.PurgeDeadLetter(ctx, s.js, topo, d.Seq); err != nil {
				return err
			}
		}
		fmt.Fprintf(stdout, "purged %d dead letters\n", len(letters))
	}
	return nil
}

func eventJSON(b []byte) json.RawMessage {
	if json.Valid(b) {
		return b
	}
	q, _ := json.Marshal(string(b))
	return q
}

func indentJSON(b []byte) string {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return string(b)
	}
	out, _ := json.MarshalIndent(v, "", "  ")
	return string(out)
}

// parseInterspersed parses flags before and after positional arguments (khook dlq show 12
// --config khook.yaml), and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// ---- khook events ----

func runEvents(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const usageText = "usage: khook events tail|get [flags]"
	if len(args) == 0 || (args[0] != "tail" && args[0] != "get") {
		return errors.New(usageText)
	}
	verb := args[0]
	fs, common := newFlagSet("events "+verb, stderr)
	typ := fs.String("type", "", "only this internal event type")
	namespace := fs.String("namespace", "", "only this namespace")
	resource := fs.String("resource", "", "only this resource name")
	severity := fs.String("severity", "", "only this severity and above (info, warning, error, critical)")
	since := fs.String("since", "", "get: events stored since this long ago (2h, 2d) or this RFC 3339 time")
	until := fs.String("until", "", "get: events stored up to this RFC 3339 time")
	limit := fs.Int("limit", 100, "get: at most this many events")
	output := fs.String("o", "table", "output: table or json (one object per line for tail)")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	f := ops.EventFilter{Type: *typ, Namespace: *namespace, Resource: *resource, MinSeverity: *severity}
	var err error
	if f.Since, err = parseWhen("since", *since, true); err != nil {
		return err
	}
	if f.Until, err = parseWhen("until", *until, false); err != nil {
		return err
	}
	if err := f.Validate(); err != nil {
		return err
	}
	s, err := openOps(common)
	if err != nil {
		return err
	}
	defer s.nc.Close()
	line := func(rec ops.EventRecord) error {
		if *output == "json" {
			b, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(stdout, "%s\n", b)
			return err
		}
		replay := ""
		if rec.ReplayID != "" {
			replay = " (replay " + rec.ReplayID + ")"
		}
		_, err := fmt.Fprintf(stdout, "%s %-8s %-16s %-9s %s/%s/%s: %s%s\n", rec.Stored.UTC().Format(time.RFC3339), strconv.FormatUint(rec.Seq, 10),
			rec.Type, rec.Severity, cmp.Or(rec.Namespace, "-"), cmp.Or(rec.Resource.Kind, "-"), cmp.Or(rec.Resource.Name, "-"), rec.Message, replay)
		return err
	}
	if verb == "tail" {
		ctx, stop := interruptible(ctx)
		defer stop()
		return ops.TailEvents(ctx, s.js, s.cfg.Streams, f, line)
	}
	events, _, err := ops.QueryEvents(ctx, s.js, s.cfg.Streams, f, 0, *limit)
	if err != nil {
		return err
	}
	if *output == "json" {
		if events == nil {
			events = []ops.EventRecord{}
		}
		return writeAs(stdout, "json", events, nil)
	}
	for _, rec := range events {
		if err := line(rec); err != nil {
			return err
		}
	}
	return nil
}
