// khook events: tail and get retained normalized events.

package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/khook/khook/mapping"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/streams/outcome"
)

// eventSelection is the flags that select normalized events, shared by tail and get.
type eventSelection struct {
	typ, namespace, resource, cluster *string
	severity                          *enumFlag
}

func addEventSelection(fs *pflag.FlagSet) *eventSelection {
	return &eventSelection{
		typ:       fs.String("type", "", "only this internal event type"),
		namespace: fs.StringP("namespace", "n", "", "only this namespace"),
		resource:  fs.String("resource", "", "only this resource name"),
		cluster:   fs.String("cluster", "", "only events from this cluster"),
		severity:  addEnum(fs, "severity", "only this severity and above", mapping.Severities...),
	}
}

func (e *eventSelection) filter() ops.EventFilter {
	return ops.EventFilter{Type: *e.typ, Namespace: *e.namespace, Resource: *e.resource, Cluster: *e.cluster, MinSeverity: e.severity.value}
}

// eventHeader is the table's header line, in eventLine's columns.
func eventHeader(w io.Writer) error {
	_, err := fmt.Fprintf(w, "%-20s %-8s %-16s %-9s %-12s %s\n", "STORED", "SEQ", "TYPE", "SEVERITY", "CLUSTER", "NAMESPACE/KIND/NAME: MESSAGE")
	return err
}

// eventLine prints one event as a table line.
func eventLine(w io.Writer, rec ops.EventRecord) error {
	replay := ""
	if rec.ReplayID != "" {
		replay = " (replay " + rec.ReplayID + ")"
	}
	_, err := fmt.Fprintf(w, "%s %-8s %-16s %-9s %-12s %s/%s/%s: %s%s\n", rec.Stored.UTC().Format(time.RFC3339), strconv.FormatUint(rec.Seq, 10),
		rec.Type, rec.Severity, cmp.Or(rec.Cluster, "-"), cmp.Or(rec.Namespace, "-"), cmp.Or(rec.Resource.Kind, "-"), cmp.Or(rec.Resource.Name, "-"), rec.Message, replay)
	return err
}

func eventsCmd() *cobra.Command {
	tail := leaf("tail", "follow normalized events as they are stored", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		sel := addEventSelection(fs)
		output := addOutput(fs, "table", "json", "yaml")
		noHeaders := fs.Bool("no-headers", false, "print the table without its header line")
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
			sigCtx, stop := interruptible(ctx)
			defer stop()
			if output.value == "table" && !*noHeaders {
				if err := eventHeader(stdout); err != nil {
					return err
				}
			}
			err = ops.TailEvents(sigCtx, s.js, s.cfg.Streams, f, func(rec ops.EventRecord) error {
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
			if sigCtx.Err() != nil && ctx.Err() == nil {
				// Ctrl-C ends a tail: the usual way out, said with the usual exit code.
				return errInterrupted
			}
			return err
		}
	})
	get := leaf("get", "list retained normalized events, oldest first", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		sel := addEventSelection(fs)
		since := fs.String("since", "", "events stored since this long ago (2h, 2d) or this RFC 3339 time")
		until := fs.String("until", "", "events stored up to this RFC 3339 time")
		limit := addLimit(fs)
		output := addOutput(fs, "table", "json", "yaml")
		noHeaders := fs.Bool("no-headers", false, "print the table without its header line")
		return func(ctx context.Context, _ []string, stdout, stderr io.Writer) error {
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
			if len(events) == 0 && output.value == "table" {
				// An empty result says so, as kubectl does, on stderr: stdout stays empty for
				// scripts.
				_, err := fmt.Fprintln(stderr, "No events found.")
				return err
			}
			return writeAs(stdout, output.value, events, func(w io.Writer) error {
				if !*noHeaders {
					if err := eventHeader(w); err != nil {
						return err
					}
				}
				for _, rec := range events {
					if err := eventLine(w, rec); err != nil {
						return err
					}
				}
				return nil
			})
		}
	})
	describe := leaf("describe ID|SEQ", "show what became of one event: its mapping, the Hooks it matched and each task's outcome",
		cobra.ExactArgs(1), func(fs *pflag.FlagSet) runFunc {
			common := addCommonFlags(fs)
			output := addOutput(fs, "table", "json", "yaml")
			return func(ctx context.Context, args []string, stdout, _ io.Writer) error {
				s, err := openOps(common)
				if err != nil {
					return err
				}
				defer s.nc.Close()
				d, err := ops.Describe(ctx, s.js, s.cfg.Streams, args[0])
				if err != nil {
					return err
				}
				return writeAs(stdout, output.value, d, func(w io.Writer) error { return describeTable(w, d) })
			}
		})
	tail.Aliases = []string{"watch"}
	get.Aliases = []string{"list"}
	return group("events", "follow, list or describe normalized events", tail, get, describe)
}

// describeTable prints a description for people: the event, then one line per task.
func describeTable(w io.Writer, d *ops.Description) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	line := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s:\t%s\n", k, fmt.Sprintf(format, a...)) }
	line("ID", "%s", d.ID)
	if r := d.Raw; r != nil {
		line("Raw", "seq %d, source %s, type %s, stored %s", r.Seq, r.Source, r.Type, r.Stored.UTC().Format(time.RFC3339))
	} else {
		line("Raw", "not in the raw stream (expired, or outside its retention)")
	}
	mapped := d.Mapping
	if d.MappingReason != "" {
		mapped += ": " + d.MappingReason
	}
	if e := d.Event; e != nil {
		mapped += fmt.Sprintf(" as %s (events seq %d)", e.Type, e.Seq)
	}
	line("Mapping", "%s", mapped)
	if e := d.Event; e != nil && e.Cluster != "" {
		line("Cluster", "%s", e.Cluster)
	}
	if e := d.Event; e != nil {
		line("Event", "%s %s/%s/%s: %s", e.Severity, cmp.Or(e.Namespace, "-"), cmp.Or(e.Resource.Kind, "-"),
			cmp.Or(e.Resource.Name, "-"), e.Message)
	}
	if d.Dispatch != "" {
		line("Dispatch", "%s", d.Dispatch)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(d.Tasks) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOOK\tAGENT\tOUTCOME\tTIME\tDETAIL")
	for _, t := range d.Tasks {
		detail := taskDetail(t)
		if t.ReplayID != "" {
			detail = "replay " + t.ReplayID + ": " + detail
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Hook, t.Agent, t.Outcome, t.Time.UTC().Format(time.RFC3339), detail)
	}
	return tw.Flush()
}

// taskDetail says what a task's latest record holds, in a line.
func taskDetail(t ops.TaskOutcome) string {
	r := t.Latest
	switch t.Outcome {
	case outcome.Delivered:
		return fmt.Sprintf("message %s, accepted in %s on attempt %d, task %s", r.MessageID, r.Took, max(r.Attempt, 1), cmp.Or(r.TaskState, "-"))
	case outcome.Suppressed:
		by := r.SuppressedBy
		if r.SuppressedByEvent != "" {
			by += " (event " + r.SuppressedByEvent + ")"
		}
		return fmt.Sprintf("by task %s until %s; a replay with --ignore-suppression sends it", by, r.Until.UTC().Format(time.RFC3339))
	case outcome.Grouped:
		g := t.Group
		if g == nil {
			return "group " + r.Group
		}
		s := fmt.Sprintf("group %s, task %s: %s", g.Key, g.MessageID, g.Outcome)
		if g.Latest != nil {
			s += " at " + g.Time.UTC().Format(time.RFC3339)
			if g.Latest.Events > 0 {
				s += fmt.Sprintf(" with %d events", g.Latest.Events)
			}
		}
		if r.Repeat {
			s += " (counted before: a redelivery or a replayed copy)"
		}
		return s
	case outcome.Waiting:
		return fmt.Sprintf("message %s waits for its agent's budget", r.MessageID)
	case outcome.Retrying:
		return fmt.Sprintf("attempt %d failed (%s), next in %s", r.Attempt, cmp.Or(r.Error, r.Reason), r.RetryIn)
	case outcome.DeadLettered:
		return fmt.Sprintf("dead letter %d, reason %s: %s (khook dlq show %d)", r.DeadLetterSeq, r.Reason, r.Error, r.DeadLetterSeq)
	}
	return r.Reason
}
