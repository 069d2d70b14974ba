// khook events: tail and get retained normalized events.

package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/khook/khook/mapping"
	"github.com/khook/khook/ops"
)

// eventSelection is the flags that select normalized events, shared by tail and get.
type eventSelection struct {
	typ, namespace, resource *string
	severity                 *enumFlag
}

func addEventSelection(fs *pflag.FlagSet) *eventSelection {
	return &eventSelection{
		typ:       fs.String("type", "", "only this internal event type"),
		namespace: fs.StringP("namespace", "n", "", "only this namespace"),
		resource:  fs.String("resource", "", "only this resource name"),
		severity:  addEnum(fs, "severity", "only this severity and above", mapping.Severities...),
	}
}

func (e *eventSelection) filter() ops.EventFilter {
	return ops.EventFilter{Type: *e.typ, Namespace: *e.namespace, Resource: *e.resource, MinSeverity: e.severity.value}
}

// eventHeader is the table's header line, in eventLine's columns.
func eventHeader(w io.Writer) error {
	_, err := fmt.Fprintf(w, "%-20s %-8s %-16s %-9s %s\n", "STORED", "SEQ", "TYPE", "SEVERITY", "NAMESPACE/KIND/NAME: MESSAGE")
	return err
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
	tail.Aliases = []string{"watch"}
	get.Aliases = []string{"list"}
	return group("events", "follow or list normalized events", tail, get)
}
