package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/khook/khook/app"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams/cloudevent"
)

// mappingsCmd is `khook mappings check FILE [--event EVENT.json]`: it validates a mappings
// file and, given a raw event, shows what the event maps to. It exits 1 when the file is
// invalid, so operators can run it in CI before shipping a ConfigMap.
func mappingsCmd() *cobra.Command {
	check := leaf("check FILE", "validate a mappings file, and show what an event maps to", cobra.ExactArgs(1), func(fs *pflag.FlagSet) runFunc {
		eventFile := fs.String("event", "", "an event to map with the file's rules: a CloudEvent in JSON, or a plain JSON body as a webhook receives it")
		source := fs.String("source", "webhook", "for a plain JSON body: the plugin it arrives through")
		eventType := fs.String("type", "", "for a plain JSON body without a \"type\" field: its event type (as the webhook endpoint's eventType)")
		output := addOutput(fs, "text", "json", "yaml")
		return func(_ context.Context, args []string, stdout, _ io.Writer) error {
			return checkMappings(args[0], *eventFile, *source, *eventType, output.value, stdout)
		}
	})
	check.Example = "  khook mappings check event-mappings.yaml\n  khook mappings check event-mappings.yaml --event alert.json -o yaml"
	return group("mappings", "check event-mappings.yaml files", check)
}

func checkMappings(path, eventFile, source, eventType, output string, stdout io.Writer) error {
	rules, _, err := app.LoadRules(path)
	if err != nil {
		return err
	}
	summary := map[string]any{"file": path, "rules": rules.Len(), "unmapped": rules.Unmapped(), "hash": rules.Hash()}
	var mapped map[string]any
	if eventFile != "" {
		eb, err := os.ReadFile(eventFile)
		if err != nil {
			return err
		}
		ce, err := checkedEvent(eb, source, eventType)
		if err != nil {
			return fmt.Errorf("%s: %w", eventFile, err)
		}
		ev, outcome := mapping.Map(rules, mapping.RawOf("", "", ce))
		mapped = map[string]any{"outcome": outcome}
		if rule, ok := rules.Lookup(ce.Source, ce.Type); ok && rule.Line() > 0 {
			mapped["rule"] = fmt.Sprintf("%s line %d", path, rule.Line())
		} else if ok {
			mapped["rule"] = "built-in"
		}
		if outcome.HasEvent() {
			mapped["event"] = ev
		}
		summary["mapping"] = mapped
	}
	return writeAs(stdout, output, summary, func(w io.Writer) error {
		fmt.Fprintf(w, "%s: ok, %d rules (built-in Kubernetes rules included), unmapped events: %s, hash %s\n",
			path, rules.Len(), rules.Unmapped(), rules.Hash())
		if mapped == nil {
			return nil
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(mapped)
	})
}

// checkedEvent reads the event to check: a CloudEvent as it is, or a plain JSON body as the
// webhook plugin of source would turn it into one (its type from eventType, else the body's
// "type").
func checkedEvent(b []byte, source, eventType string) (*cloudevent.Event, error) {
	var probe struct {
		SpecVersion string `json:"specversion"`
	}
	if json.Unmarshal(b, &probe) == nil && probe.SpecVersion != "" {
		return cloudevent.Decode(b)
	}
	ev, err := eventFromJSON(b, eventType, "", "")
	if err != nil {
		return nil, err
	}
	return &cloudevent.Event{ID: "check", Source: source, Type: ev.Type, Subject: ev.Subject, Time: time.Now().UTC(), Data: ev.Data}, nil
}
