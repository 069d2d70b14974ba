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
	"github.com/khook/khook/consumers/dispatch/state"
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
		dryRun := fs.Bool("dry-run", false, "say what each event would do now (which tasks would be sent, suppressed until when, grouped or queued); send nothing")
		ignoreSuppression := fs.Bool("ignore-suppression", false, "deliver even inside a hook's suppression window")
		resume := fs.String("resume", "", "continue an interrupted replay by its id")
		wait := fs.Duration("wait", 10*time.Second, "after sending, wait up to this long for the copies' outcomes (delivered, suppressed, ...) to count them; 0 to not wait")
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
			// run's predictions in it.
			var predicted []ops.Prediction
			would := &predictionSummary{}
			rp := &ops.Replayer{JS: s.js, Topo: s.cfg.Streams, Rate: *rate, DryRun: *dryRun,
				OnPredict: func(p ops.Prediction) {
					would.add(p)
					if output.value == "text" {
						fmt.Fprintln(stdout, predictionLine(p, *ignoreSuppression))
					} else {
						predicted = append(predicted, p)
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
				p := &predictor{subjects: s.cfg.Streams.Subjects(), rules: rules, hooks: idx, through: r.Through,
					ignore: r.IgnoreSuppression, dispatch: s.cfg.Dispatcher.Config, ttl: s.cfg.Streams.DispatchTTL,
					claimed: map[string]claimedHere{}}
				// Without the dispatch bucket (streams never applied), no window is known to be
				// held: the prediction says so rather than failing.
				if p.state, err = state.Open(ctx, s.js, s.cfg.Streams); err != nil {
					fmt.Fprintf(stderr, "suppression windows and groups not checked: %v\n", err)
				} else if p.groups, err = p.state.Groups(ctx); err != nil {
					fmt.Fprintf(stderr, "groups not checked: %v\n", err)
				}
				rp.Predict = p.predict
			}
			rp.Progress = newProgress(stderr, time.Now(), *dryRun)
			runErr := rp.Run(ctx, r)
			var outcomes *ops.ReplayOutcomes
			if !*dryRun && r.Done && r.Sent > 0 && *wait > 0 && runErr == nil {
				// The copies are published; what the stages made of them follows. The wait
				// is bounded: a copy still queued then is counted as pending.
				o, err := ops.CollectReplayOutcomes(ctx, s.js, s.cfg.Streams, r, *wait)
				if err != nil {
					fmt.Fprintf(stderr, "outcomes not read: %v\n", err)
				} else {
					outcomes = &o
				}
			}
			var summary *predictionSummary
			if *dryRun {
				summary = would
			}
			ending := "complete"
			if !r.Done {
				ending = "interrupted; resume with: khook replay --resume " + r.ID
			}
			if err := writeAs(stdout, output.value, struct {
				*ops.Replay
				DryRun   bool                `json:"dryRun,omitempty"`
				Events   []ops.Prediction    `json:"events,omitempty"`
				Would    *predictionSummary  `json:"would,omitempty"`
				Outcomes *ops.ReplayOutcomes `json:"outcomes,omitempty"`
			}{r, *dryRun, predicted, summary, outcomes}, func(w io.Writer) error {
				if *dryRun {
					_, err := fmt.Fprintf(w, "replay (dry run): checked %d events, skipped %d; %s; sent nothing\n", r.Checked, r.Skipped, would)
					return err
				}
				if _, err := fmt.Fprintf(w, "replay %s: sent %d events, skipped %d; %s\n", r.ID, r.Sent, r.Skipped, ending); err != nil {
					return err
				}
				if outcomes != nil {
					_, err := fmt.Fprintln(w, outcomesLine(*outcomes))
					return err
				}
				return nil
			}); err != nil {
				return err
			}
			if *dryRun && would.Suppressed > 0 && would.Send+would.Queued+would.Grouped+would.Counted == 0 {
				fmt.Fprintln(stderr, "every task of this replay would be suppressed by an earlier task's window: no agent would be called; "+
					"--ignore-suppression would send them")
			}
			if o := outcomes; o != nil && o.Tasks() > 0 && o.Suppressed == o.Tasks() {
				fmt.Fprintf(stderr, "every task of replay %s was suppressed by an earlier task's window: no agent was called; "+
					"replay with --ignore-suppression to send them\n", r.ID)
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

// outcomesLine says in a line what became of a replay's copies.
func outcomesLine(o ops.ReplayOutcomes) string {
	line := fmt.Sprintf("tasks: %d delivered, %d suppressed, %d grouped, %d already counted by their group, %d waiting for a budget, "+
		"%d retrying, %d dead-lettered; events without a task: %d unmatched, %d unmapped",
		o.Delivered, o.Suppressed, o.Grouped, o.Repeats, o.Waiting, o.Retrying, o.DeadLettered, o.Unmatched, o.Unmapped)
	if o.Pending > 0 {
		line += fmt.Sprintf("; %d not handled yet (see khook events describe)", o.Pending)
	}
	return line
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

// newProgress reports a replay's progress: a bar redrawn in place on a terminal, a plain
// line every few seconds otherwise (logs, CI).
func newProgress(w io.Writer, start time.Time, dryRun bool) func(r *ops.Replay, final bool) {
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
		done, verb := r.Sent, "sent"
		if dryRun {
			// A dry run sends nothing: it checks.
			done, verb = r.Checked, "checked"
		}
		line := fmt.Sprintf("%d/%d selected, %d %s, %d skipped, %.0f/s, ETA %s", r.Seen, r.Total, done, verb, r.Skipped, rate, eta)
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
