// khook replay: retained events through the mapper or the dispatcher again.

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/khook/khook/app"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/subject"
)

func replayCmd() *cobra.Command {
	return leaf("replay", "replay retained events through the mapper or the dispatcher", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		through := addChoice(fs, "through", ops.ThroughMapper, "where events re-enter, mapper (raw events, re-mapped with today's mappings) or dispatcher (normalized events, to today's hooks)",
			ops.ThroughMapper, ops.ThroughDispatcher)
		since := fs.String("since", "", "replay events stored since this long ago (2h, 2d) or this RFC 3339 time")
		from := fs.String("from", "", "same as --since, for symmetry with --to")
		to := fs.String("to", "", "replay events stored up to this RFC 3339 time")
		fromSeq := fs.Uint64("from-seq", 0, "first stream sequence to replay")
		toSeq := fs.Uint64("to-seq", 0, "last stream sequence to replay")
		source := fs.String("source", "", "only events from this source (plugin)")
		typ := fs.String("type", "", "only events of this type (the raw type through the mapper, the internal type through the dispatcher)")
		namespace := fs.StringP("namespace", "n", "", "only events in this namespace")
		rate := fs.Float64("rate", 0, "at most this many events per second (0: as fast as JetStream takes them)")
		dryRun := fs.Bool("dry-run", false, "print which hooks and agents each event would reach; send nothing")
		ignoreSuppression := fs.Bool("ignore-suppression", false, "deliver even inside a hook's suppression window")
		resume := fs.String("resume", "", "continue an interrupted replay by its id")
		output := addOutput(fs, "text", "json", "yaml")
		return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
			sel := ops.Selection{Through: through.value, FromSeq: *fromSeq, ToSeq: *toSeq, Source: *source, Type: *typ,
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
				if rules, _, err = app.LoadRules(s.cfg.Files.Mappings); err != nil {
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
				return errInterrupted
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
func describe(subjects subject.Builder, rules *mapping.Rules, idx *hook.Index, through string, m ops.Msg) string {
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
