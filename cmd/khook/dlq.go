// khook dlq: list, show, retry and purge dead letters.

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
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/khook/khook/ops"
	"github.com/khook/khook/streams/deadletter"
)

// dlqSelection is the flags that select dead letters, with the sequence numbers given as
// arguments.
type dlqSelection struct {
	stage, reason    *enumFlag
	hook, typ, since *string
	limit            *int
}

// addDLQSelection declares the selection flags; a listing shows defaultLimit dead letters
// unless --limit says otherwise, retry and purge act on every one selected.
func addDLQSelection(fs *pflag.FlagSet, listing bool) *dlqSelection {
	d := &dlqSelection{
		stage:  addEnum(fs, "stage", "only dead letters of this stage", deadletter.Stages...),
		reason: addEnum(fs, "reason", "only this reason", deadletter.Reasons...),
		hook:   fs.String("hook", "", "only dead letters of this hook (namespace/name)"),
		typ:    fs.String("type", "", "only events of this type"),
		since:  fs.String("since", "", "only dead letters stored since this long ago (2h, 2d) or this RFC 3339 time"),
	}
	if listing {
		d.limit = addLimit(fs)
	} else {
		d.limit = fs.Int("limit", 0, "at most this many (0: all)")
	}
	return d
}

func (d *dlqSelection) filter(seqs []string) (ops.DLQFilter, error) {
	f := ops.DLQFilter{Stage: d.stage.value, Reason: d.reason.value, Hook: *d.hook, Type: *d.typ}
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
		sel := addDLQSelection(fs, true)
		output := addOutput(fs, "table", "json", "yaml")
		noHeaders := fs.Bool("no-headers", false, "print the table without its header line")
		return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
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
			if len(letters) == 0 && output.value == "table" {
				_, err := fmt.Fprintln(stderr, "No dead letters found.")
				return err
			}
			return writeAs(stdout, output.value, letters, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				if !*noHeaders {
					fmt.Fprintln(tw, "SEQ\tSTORED\tSTAGE\tREASON\tHOOK\tEVENT\tERROR")
				}
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
		sel := addDLQSelection(fs, false)
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
		sel := addDLQSelection(fs, false)
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
