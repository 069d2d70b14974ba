// khook hooks: list the hooks the dispatcher would use, and check a hooks file.

package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/khook/khook/app"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/mapping"
)

// hookRow is one hook entry as `hooks list` and `hooks check` show it.
type hookRow struct {
	Hook      string   `json:"hook"`
	EventType string   `json:"eventType"`
	Agent     string   `json:"agent"`
	GroupBy   []string `json:"groupBy,omitempty"`
	GroupWait string   `json:"groupWait,omitempty"`
	Window    string   `json:"suppressionWindow,omitempty"`
}

func hookRows(idx *hook.Index, defaultWindow time.Duration) []hookRow {
	rows := []hookRow{}
	for _, h := range idx.Hooks() {
		g, grouped := h.Grouping()
		for _, ec := range h.Spec.EventConfigurations {
			r := hookRow{Hook: h.Key(), EventType: ec.EventType,
				Agent: cmp.Or(ec.AgentRef.Namespace, h.Metadata.Namespace) + "/" + ec.AgentRef.Name}
			if grouped {
				r.GroupBy, r.GroupWait = g.By, g.Wait.String()
				if r.GroupBy == nil {
					r.GroupBy = []string{}
				}
			} else {
				r.Window = h.Window(defaultWindow).String()
			}
			rows = append(rows, r)
		}
	}
	return rows
}

func writeHookRows(w io.Writer, rows []hookRow, headers bool) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if headers {
		fmt.Fprintln(tw, "HOOK\tEVENT TYPE\tAGENT\tTASKS")
	}
	for _, r := range rows {
		tasks := "one per resource per " + r.Window
		if r.GroupBy != nil {
			tasks = fmt.Sprintf("grouped by [%s], after %s", strings.Join(r.GroupBy, ", "), r.GroupWait)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Hook, r.EventType, r.Agent, tasks)
	}
	return tw.Flush()
}

func hooksCmd() *cobra.Command {
	list := leaf("list", "list the hooks the dispatcher would use (the cluster's Hook resources, or hooks.yaml)", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		output := addOutput(fs, "table", "json", "yaml")
		noHeaders := fs.Bool("no-headers", false, "print the table without its header line")
		return func(ctx context.Context, _ []string, stdout, stderr io.Writer) error {
			cfg, err := config.Load(common.config, environ(), common.overrides())
			if err != nil {
				return err
			}
			idx, err := app.ActiveHooks(ctx, cfg)
			if err != nil {
				return err
			}
			rows := hookRows(idx, cfg.Dispatcher.SuppressionWindow)
			if len(rows) == 0 && output.value == "table" {
				_, err := fmt.Fprintln(stderr, "No hooks found.")
				return err
			}
			return writeAs(stdout, output.value, rows, func(w io.Writer) error { return writeHookRows(w, rows, !*noHeaders) })
		}
	})
	check := leaf("check FILE", "validate a hooks file, and show the tasks an event would make", cobra.ExactArgs(1), func(fs *pflag.FlagSet) runFunc {
		eventFile := fs.String("event", "", "a normalized event in JSON (as khook events get -o json shows one) to run through the file's hooks")
		window := fs.Duration("suppression-window", 10*time.Minute, "the dispatcher's default suppression window, for the hooks that set none")
		output := addOutput(fs, "text", "json", "yaml")
		return func(_ context.Context, args []string, stdout, stderr io.Writer) error {
			return checkHooks(args[0], *eventFile, *window, output.value, stdout, stderr)
		}
	})
	check.Example = "  khook hooks check hooks.yaml\n  khook hooks check hooks.yaml --event event.json -o yaml"
	return group("hooks", "list the hooks in use, or check a hooks file", list, check)
}

// checkedTask is a task an event would make, as `hooks check --event` shows it.
type checkedTask struct {
	Hook  string `json:"hook"`
	Agent string `json:"agent"`
	// Grouped: the event joins the group of these labels, whose task goes after groupWait.
	Group map[string]string `json:"group,omitempty"`
	Text  string            `json:"text"`
	// Warning is why the prompt fell back to plain placeholders, when it did.
	Warning string `json:"warning,omitempty"`
}

func checkHooks(path, eventFile string, window time.Duration, output string, stdout, stderr io.Writer) error {
	idx, _, err := app.LoadHooks(path)
	if err != nil {
		return err
	}
	var warnings []string
	for _, h := range idx.Hooks() {
		for _, w := range h.Warnings() {
			warnings = append(warnings, h.Key()+": "+w)
		}
	}
	rows := hookRows(idx, window)
	summary := map[string]any{"file": path, "hooks": idx.Len(), "entries": rows}
	if len(warnings) > 0 {
		summary["warnings"] = warnings
	}
	var tasks []checkedTask
	var evType, evNamespace string
	if eventFile != "" {
		b, err := os.ReadFile(eventFile)
		if err != nil {
			return err
		}
		var ev mapping.Event
		if err := json.Unmarshal(b, &ev); err != nil {
			return fmt.Errorf("%s: not a normalized event: %w", eventFile, err)
		}
		if ev.Type == "" {
			return fmt.Errorf("%s: the event has no type", eventFile)
		}
		evType, evNamespace = ev.Type, ev.Namespace
		tasks = []checkedTask{}
		for _, m := range idx.Match(&ev) {
			t := checkedTask{Hook: m.Hook.Key(), Agent: m.Agent.Key()}
			var task hook.Task
			var err error
			if g, ok := m.Hook.Grouping(); ok {
				t.Group = g.Labels(&ev)
				key := hook.GroupKey(m.StableEntry(), t.Group)
				task, err = hook.GroupTask(m, hook.Group{Key: key, Labels: t.Group, Count: 1, Total: 1, Resources: 1,
					FirstSeen: ev.Time, LastSeen: ev.Time}, []hook.GroupEvent{{Event: ev, Count: 1, FirstSeen: ev.Time}})
			} else {
				task, err = hook.NewTask(m, &ev)
			}
			if err != nil {
				t.Warning = err.Error()
			}
			t.Text = task.Text
			tasks = append(tasks, t)
		}
		summary["tasks"] = tasks
	}
	for _, w := range warnings {
		fmt.Fprintln(stderr, "warning: "+w)
	}
	return writeAs(stdout, output, summary, func(w io.Writer) error {
		fmt.Fprintf(w, "%s: ok, %d hooks, %d entries\n", path, idx.Len(), len(rows))
		if err := writeHookRows(w, rows, true); err != nil {
			return err
		}
		if tasks == nil {
			return nil
		}
		if len(tasks) == 0 {
			_, err := fmt.Fprintf(w, "\nthe event (%s in namespace %q) matches no hook: a hook matches the events of its own namespace\n", evType, evNamespace)
			return err
		}
		slices.SortFunc(tasks, func(a, b checkedTask) int { return cmp.Compare(a.Hook+a.Agent, b.Hook+b.Agent) })
		for _, t := range tasks {
			how := "one task"
			if t.Group != nil {
				var labels []string
				for _, k := range slices.Sorted(maps.Keys(t.Group)) {
					labels = append(labels, k+"="+t.Group[k])
				}
				how = fmt.Sprintf("gathered into the group {%s}, its task sent after groupWait", strings.Join(labels, ", "))
			}
			fmt.Fprintf(w, "\n%s -> %s: %s\n", t.Hook, t.Agent, how)
			if t.Warning != "" {
				fmt.Fprintf(w, "  (prompt fell back to plain placeholders: %s)\n", t.Warning)
			}
			fmt.Fprintf(w, "%s\n", indent(t.Text))
		}
		return nil
	})
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}
