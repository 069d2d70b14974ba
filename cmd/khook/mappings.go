package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams/cloudevent"
)

// runMappings implements `khook mappings check FILE [--event EVENT.json]`: it validates a
// mappings file and, given a raw CloudEvent, shows what the event maps to. It exits 1 when
// the file is invalid, so operators can run it in CI before shipping a ConfigMap.
func runMappings(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		return errors.New("usage: khook mappings check FILE [--event EVENT.json]")
	}
	fs, _ := newFlagSet("mappings check", stderr)
	eventFile := fs.String("event", "", "a raw event (a CloudEvent in JSON) to map with the file's rules")
	// Flags may come before or after the file: parse up to the file, then after it.
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() < 1 {
		return errors.New("usage: khook mappings check FILE [--event EVENT.json]")
	}
	path := fs.Arg(0)
	if err := parseFlags(fs, fs.Args()[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: usage: khook mappings check FILE [--event EVENT.json]", fs.Args())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	rules, err := mapping.Parse(b)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Fprintf(stdout, "%s: ok, %d rules (built-in Kubernetes rules included), unmapped events: %s, hash %s\n",
		path, rules.Len(), rules.Unmapped(), rules.Hash())
	if *eventFile == "" {
		return nil
	}
	eb, err := os.ReadFile(*eventFile)
	if err != nil {
		return err
	}
	ce, err := cloudevent.Decode(eb)
	if err != nil {
		return fmt.Errorf("%s: %w", *eventFile, err)
	}
	ev, outcome := mapping.Map(rules, mapping.RawOf("", "", ce))
	out := map[string]any{"outcome": outcome}
	if rule, ok := rules.Lookup(ce.Source, ce.Type); ok && rule.Line() > 0 {
		out["rule"] = fmt.Sprintf("%s line %d", path, rule.Line())
	} else if ok {
		out["rule"] = "built-in"
	}
	if outcome.HasEvent() {
		out["event"] = ev
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
