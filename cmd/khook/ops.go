package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"golang.org/x/term"

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
	cfg, err := config.Load(common.config, environ(), common.opsOverrides())
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

func replayCmd() *cobra.Command {
	return leaf("replay", "replay retained events through the mapper or the dispatcher", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
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
		output := addOutput(fs, "text", "json", "yaml")
		return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
			sel := ops.Selection{Through: *through, FromSeq: *fromSeq, ToSeq: *toSeq, Source: *source, Type: *typ,
				Namespace: *namespace, IgnoreSuppression: *ignoreSuppression}
			var err error
			if *since != "" && *from != "" {
				return usageError{errors.New("--since and --from are the same bound: give one")}
			}
			if sel.Since, err = parseWhen("since", *since+*from, true); err != nil {
				return usageError{err}
			}
			if sel.Until, err = parseWhen("to", *to, false); err != nil {
				return usageError{err}
			}
			s, err := openOps(common)
			if err != nil {
				return err
			}
			defer s.nc.Close()
			ctx, stop := interruptible(ctx)
			defer stop()

			// With -o json or yaml, stdout holds one document: the replay's record, with a dry
			// run's lines in it.
			var described []string
			rp := &ops.Replayer{JS: s.js, Topo: s.cfg.Streams, Rate: *rate, DryRun: *dryRun,
				OnDescribe: func(line string) {
					if output.value == "text" {
						fmt.Fprintln(stdout, line)
					} else {
						described = append(described, line)
					}
				}}
			var r *ops.Replay
			if *resume != "" {
				if r, err = rp.Load(ctx, *resume); err != nil {
					return err
				}
				if r.Done {
					return writeAs(stdout, output.value, r, func(w io.Writer) error {
						_, err := fmt.Fprintf(w, "replay %s is already complete: %d sent\n", r.ID, r.Sent)
						return err
					})
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
			if err := writeAs(stdout, output.value, struct {
				*ops.Replay
				DryRun bool     `json:"dryRun,omitempty"`
				Events []string `json:"events,omitempty"`
			}{r, *dryRun, described}, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "replay %s: %s %d events, skipped %d; %s\n", r.ID, verb, r.Sent, r.Skipped, state)
				return err
			}); err != nil {
				return err
			}
			if runErr != nil {
				return runErr
			}
			if !r.Done && !*dryRun {
				// Interrupted on purpose: the progress is stored and the exit code says so.
				return errors.New("interrupted")
			}
			return nil
		}
	})
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
		var err error
		if ev, err = mapping.DecodeEvent(m.Data); err != nil {
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

func statusCmd() *cobra.Command {
	return leaf("status", "show the streams, consumers, dead letters, plugins and hooks", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		output := addOutput(fs, "table", "json", "yaml")
		return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
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
			return writeAs(stdout, output.value, st, st.WriteTable)
		}
	})
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

// ---- khook dlq ----

// dlqSelection is the flags that select dead letters, with the sequence numbers given as
// arguments.
type dlqSelection struct {
	stage, reason, hook, typ, since *string
	limit                           *int
}

func addDLQSelection(fs *pflag.FlagSet) *dlqSelection {
	return &dlqSelection{
		stage:  fs.String("stage", "", "only dead letters of this stage (mapper, dispatcher)"),
		reason: fs.String("reason", "", "only this reason (permanent, max-attempts, unmapped, ...)"),
		hook:   fs.String("hook", "", "only dead letters of this hook (namespace/name)"),
		typ:    fs.String("type", "", "only events of this type"),
		since:  fs.String("since", "", "only dead letters stored since this long ago (2h, 2d) or this RFC 3339 time"),
		limit:  fs.Int("limit", 0, "at most this many (0: all)"),
	}
}

func (d *dlqSelection) filter(seqs []string) (ops.DLQFilter, error) {
	f := ops.DLQFilter{Stage: *d.stage, Reason: *d.reason, Hook: *d.hook, Type: *d.typ}
	var err error
	if f.Since, err = parseWhen("since", *d.since, true); err != nil {
		return f, usageError{err}
	}
	for _, a := range seqs {
		seq, err := strconv.ParseUint(a, 10, 64)
		if err != nil {
			return f, usageError{fmt.Errorf("%q is not a dead letter's sequence number", a)}
		}
		f.Seqs = append(f.Seqs, seq)
	}
	return f, nil
}

// selection checks what a destructive verb acts on: dead letters named by sequence, or with
// all every one the filters select. It is checked before connecting.
func (d *dlqSelection) selection(seqs []string, all bool) (ops.DLQFilter, error) {
	f, err := d.filter(seqs)
	if err != nil {
		return f, err
	}
	if len(f.Seqs) == 0 && !all {
		return f, usageError{errors.New("name dead letters by sequence, or select them with filters and --all")}
	}
	if len(f.Seqs) > 0 && all {
		return f, usageError{errors.New("give sequence numbers or --all, not both")}
	}
	return f, nil
}

// openSelected checks the selection, connects, and lists the dead letters it names; the
// caller closes the session.
func (d *dlqSelection) openSelected(ctx context.Context, common *commonFlags, seqs []string, all bool) (*opsSession, []ops.DeadLetter, error) {
	f, err := d.selection(seqs, all)
	if err != nil {
		return nil, nil, err
	}
	s, err := openOps(common)
	if err != nil {
		return nil, nil, err
	}
	letters, err := ops.ListDeadLetters(ctx, s.js, s.cfg.Streams, f, *d.limit)
	if err != nil {
		s.nc.Close()
		return nil, nil, err
	}
	return s, letters, nil
}

func dlqCmd() *cobra.Command {
	list := leaf("list [SEQ...]", "list dead letters, newest last", nil, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		sel := addDLQSelection(fs)
		output := addOutput(fs, "table", "json", "yaml")
		return func(ctx context.Context, args []string, stdout, _ io.Writer) error {
			f, err := sel.filter(args)
			if err != nil {
				return err
			}
			s, err := openOps(common)
			if err != nil {
				return err
			}
			defer s.nc.Close()
			letters, err := ops.ListDeadLetters(ctx, s.js, s.cfg.Streams, f, *sel.limit)
			if err != nil {
				return err
			}
			if letters == nil {
				letters = []ops.DeadLetter{}
			}
			return writeAs(stdout, output.value, letters, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "SEQ\tSTORED\tSTAGE\tREASON\tHOOK\tEVENT\tERROR")
				for _, d := range letters {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Seq, d.Time.UTC().Format(time.RFC3339), d.Stage, d.Reason,
						cmp.Or(d.Hook, "-"), d.EventType+" "+d.EventID, d.Error)
				}
				return tw.Flush()
			})
		}
	})
	show := leaf("show SEQ", "show one dead letter: why, its headers and its event", cobra.ExactArgs(1), func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		output := addOutput(fs, "table", "json", "yaml")
		return func(ctx context.Context, args []string, stdout, _ io.Writer) error {
			seq, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return usageError{fmt.Errorf("%q is not a dead letter's sequence number", args[0])}
			}
			s, err := openOps(common)
			if err != nil {
				return err
			}
			defer s.nc.Close()
			d, err := ops.GetDeadLetter(ctx, s.js, s.cfg.Streams, seq)
			if err != nil {
				return err
			}
			return writeAs(stdout, output.value, struct {
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
	})
	retry := leaf("retry [SEQ...]", "send dead letters back where they failed, and remove them", nil, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		sel := addDLQSelection(fs)
		all := fs.Bool("all", false, "retry every dead letter the filters select")
		dryRun := fs.Bool("dry-run", false, "list what would be retried; change nothing")
		return func(ctx context.Context, args []string, stdout, _ io.Writer) error {
			s, letters, err := sel.openSelected(ctx, common, args, *all)
			if err != nil {
				return err
			}
			defer s.nc.Close()
			n := 0
			for _, d := range letters {
				if *dryRun {
					fmt.Fprintf(stdout, "would retry %d: %s %s -> %s\n", d.Seq, d.EventType, d.EventID, d.OriginalSubject)
					continue
				}
				if err := ops.RetryDeadLetter(ctx, s.js, s.cfg.Streams, d); err != nil {
					fmt.Fprintf(stdout, "retried %d of %d\n", n, len(letters))
					return err
				}
				n++
				fmt.Fprintf(stdout, "retried %d: %s %s -> %s\n", d.Seq, d.EventType, d.EventID, d.OriginalSubject)
			}
			if !*dryRun {
				fmt.Fprintf(stdout, "retried %d dead letters\n", n)
			}
			return nil
		}
	})
	purge := leaf("purge [SEQ...]", "delete dead letters (asks first, unless --force)", nil, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		sel := addDLQSelection(fs)
		all := fs.Bool("all", false, "purge every dead letter the filters select")
		dryRun := fs.Bool("dry-run", false, "list what would be purged; delete nothing")
		force := fs.Bool("force", false, "delete without asking (needed when stdin is not a terminal)")
		return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
			s, letters, err := sel.openSelected(ctx, common, args, *all)
			if err != nil {
				return err
			}
			defer s.nc.Close()
			if *dryRun {
				for _, d := range letters {
					fmt.Fprintf(stdout, "would purge %d: %s %s (%s, %s)\n", d.Seq, d.EventType, d.EventID, d.Stage, d.Reason)
				}
				fmt.Fprintf(stdout, "would purge %d dead letters\n", len(letters))
				return nil
			}
			if len(letters) > 0 && !*force {
				if !confirm(os.Stdin, stderr, fmt.Sprintf("purge %d dead letters? They cannot be retried afterwards. [y/N] ", len(letters))) {
					return errors.New("nothing purged: not confirmed (pass --force to purge without asking, --dry-run to see what would go)")
				}
			}
			for _, d := range letters {
				if err := ops.PurgeDeadLetter(ctx, s.js, s.cfg.Streams, d.Seq); err != nil {
					return err
				}
			}
			fmt.Fprintf(stdout, "purged %d dead letters\n", len(letters))
			return nil
		}
	})
	return group("dlq", "inspect, retry and purge dead letters", list, show, retry, purge)
}

// confirm asks question on w and reads the answer from in; only a terminal can answer, so a
// script that did not pass --force is refused rather than read from.
func confirm(in *os.File, w io.Writer, question string) bool {
	if !term.IsTerminal(int(in.Fd())) {
		return false
	}
	fmt.Fprint(w, question)
	answer, _ := bufio.NewReader(in).ReadString('\n')
	answer = strings.ToLower(strings.TrimSpace(answer))
	return answer == "y" || answer == "yes"
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

// ---- khook events ----

// eventSelection is the flags that select normalized events, shared by tail and get.
type eventSelection struct {
	typ, namespace, resource, severity *string
}

func addEventSelection(fs *pflag.FlagSet) *eventSelection {
	return &eventSelection{
		typ:       fs.String("type", "", "only this internal event type"),
		namespace: fs.String("namespace", "", "only this namespace"),
		resource:  fs.String("resource", "", "only this resource name"),
		severity:  fs.String("severity", "", "only this severity and above (info, warning, error, critical)"),
	}
}

func (e *eventSelection) filter() ops.EventFilter {
	return ops.EventFilter{Type: *e.typ, Namespace: *e.namespace, Resource: *e.resource, MinSeverity: *e.severity}
}

// eventLine prints one event as a table line.
func eventLine(w io.Writer, rec ops.EventRecord) error {
	replay := ""
	if rec.ReplayID != "" {
		replay = " (replay " + rec.ReplayID + ")"
	}
	_, err := fmt.Fprintf(w, "%s %-8s %-16s %-9s %s/%s/%s: %s%s\n", rec.Stored.UTC().Format(time.RFC3339), strconv.FormatUint(rec.Seq, 10),
		rec.Type, rec.Severity, cmp.Or(rec.Namespace, "-"), cmp.Or(rec.Resource.Kind, "-"), cmp.Or(rec.Resource.Name, "-"), rec.Message, replay)
	return err
}

func eventsCmd() *cobra.Command {
	tail := leaf("tail", "follow normalized events as they are stored", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		sel := addEventSelection(fs)
		output := addOutput(fs, "table", "json", "yaml")
		return func(ctx context.Context, _ []string, stdout, _ io.Writer) error {
			f := sel.filter()
			if err := f.Validate(); err != nil {
				return usageError{err}
			}
			s, err := openOps(common)
			if err != nil {
				return err
			}
			defer s.nc.Close()
			ctx, stop := interruptible(ctx)
			defer stop()
			return ops.TailEvents(ctx, s.js, s.cfg.Streams, f, func(rec ops.EventRecord) error {
				switch output.value {
				case "json":
					// One object per line, for jq and log shippers.
					b, err := json.Marshal(rec)
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(stdout, "%s\n", b)
					return err
				case "yaml":
					// One document per event.
					if _, err := fmt.Fprintln(stdout, "---"); err != nil {
						return err
					}
					return writeAs(stdout, "yaml", rec, nil)
				default:
					return eventLine(stdout, rec)
				}
			})
		}
	})
	get := leaf("get", "list retained normalized events, oldest first", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		sel := addEventSelection(fs)
		since := fs.String("since", "", "events stored since this long ago (2h, 2d) or this RFC 3339 time")
		until := fs.String("until", "", "events stored up to this RFC 3339 time")
		limit := fs.Int("limit", 100, "at most this many events")
		output := addOutput(fs, "table", "json", "yaml")
		return func(ctx context.Context, _ []string, stdout, _ io.Writer) error {
			f := sel.filter()
			var err error
			if f.Since, err = parseWhen("since", *since, true); err != nil {
				return usageError{err}
			}
			if f.Until, err = parseWhen("until", *until, false); err != nil {
				return usageError{err}
			}
			if err := f.Validate(); err != nil {
				return usageError{err}
			}
			s, err := openOps(common)
			if err != nil {
				return err
			}
			defer s.nc.Close()
			events, _, err := ops.QueryEvents(ctx, s.js, s.cfg.Streams, f, 0, *limit)
			if err != nil {
				return err
			}
			if events == nil {
				events = []ops.EventRecord{}
			}
			return writeAs(stdout, output.value, events, func(w io.Writer) error {
				for _, rec := range events {
					if err := eventLine(w, rec); err != nil {
						return err
					}
				}
				return nil
			})
		}
	})
	return group("events", "follow or list normalized events", tail, get)
}
