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

	"github.com/khook/khook/ops"
)

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
