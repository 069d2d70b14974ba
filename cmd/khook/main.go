// Command khook is every khook component in one binary: `khook run` runs the whole pipeline
// with an embedded NATS server, and `khook producer|mapper|dispatcher` run one stage each
// against an external NATS JetStream, so that stages scale separately.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() map[string]command {
	return map[string]command{
		"run":        {"run the whole pipeline in one process (embedded NATS unless --nats-url)", runAll},
		"producer":   {"run the enabled producer plugins of plugins.yaml", runProducer},
		"mapper":     {"run the mapping consumer", runMapper},
		"dispatcher": {"run the dispatch consumer", runDispatcher},
		"streams":    {"streams apply: create or update streams, consumers and buckets", runStreams},
		"agent":      {"run a local A2A demo agent that prints every task it receives", runAgent},
		"mappings":   {"mappings check FILE [--event EVENT.json]: validate a mappings file", runMappings},
		"publish":    {"publish events from a script or an out-of-process plugin", runPublish},
		"plugins":    {"plugins disable|enable NAME: roll one plugin back, leaving the others running", runPlugins},
		"probe":      {"probe URL: exit 0 when URL answers 200 (container healthchecks)", runProbe},
		"replay":     {"replay retained events through the mapper or the dispatcher", runReplay},
		"status":     {"streams, consumers, dead letters, plugins and hooks", runStatus},
		"dlq":        {"dlq list|show|retry|purge: inspect and retry dead letters", runDLQ},
		"events":     {"events tail|get: follow or list normalized events", runEvents},
		"version":    {"print the version", runVersion},
	}
}

func main() {
	os.Exit(execute(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// execute runs one subcommand and returns the process exit code.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		// Asked-for help is output, not an error: stdout and exit 0, as every CLI does.
		usage(stdout, cmds)
		return 0
	}
	if len(args) == 0 {
		usage(stderr, cmds)
		return 2
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "khook: unknown command %q\n\n", args[0])
		usage(stderr, cmds)
		return 2
	}
	if err := cmd.run(ctx, args[1:], stdout, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			// -h asked for the flags, which the flag package has printed.
			return 0
		}
		var ue usageError
		if errors.As(err, &ue) {
			// The flag package has already printed its own problems and the flags; a
			// command's own usage problem is printed here.
			if !ue.printed {
				fmt.Fprintf(stderr, "khook %s: %v\n", args[0], err)
			}
			return 2
		}
		fmt.Fprintf(stderr, "khook %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintln(w, "usage: khook <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-11s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintln(w, "\nrun 'khook <command> -h' for a command's flags")
}

func runVersion(_ context.Context, _ []string, stdout, _ io.Writer) error {
	fmt.Fprintf(stdout, "khook %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}

// usageError is a command line the command cannot parse; it exits 2. printed says the flag
// package has already told the user.
type usageError struct {
	error
	printed bool
}

func (u usageError) Unwrap() error { return u.error }

// parseFlags parses args, marking failures as usage errors.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return usageError{err, true}
	}
	return nil
}

// commonFlags are the flags every pipeline command takes.
type commonFlags struct {
	config     string
	natsURL    string
	kubeconfig string
}

func newFlagSet(name string, stderr io.Writer) (*flag.FlagSet, *commonFlags) {
	fs := flag.NewFlagSet("khook "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &commonFlags{}
	fs.StringVar(&c.config, "config", "", "path to khook.yaml")
	fs.StringVar(&c.natsURL, "nats-url", "", "NATS server URL (overrides nats.url)")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file for Hook resources and the kubernetes plugin (default: in-cluster, else $KUBECONFIG)")
	return fs, c
}

// overrides turns the flags that were set into config keys. --kubeconfig also becomes
// $KUBECONFIG, which the kubernetes plugin falls back to when its config names none.
func (c *commonFlags) overrides() map[string]any {
	o := map[string]any{}
	if c.natsURL != "" {
		o["nats.url"] = c.natsURL
	}
	if c.kubeconfig != "" {
		o["kubernetes.kubeconfig"] = c.kubeconfig
		_ = os.Setenv("KUBECONFIG", c.kubeconfig)
	}
	return o
}

func environ() []string {
	// Only variables that are khook's settings are passed on; the rest of the environment is
	// none of the config loader's business.
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "KHOOK_") || strings.HasPrefix(kv, "KAGENT_") || strings.HasPrefix(kv, "LOG_") {
			out = append(out, kv)
		}
	}
	return out
}

// runProbe is a healthcheck for images without curl: it exits 0 when the URL answers 200.
func runProbe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("khook probe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: khook probe URL\n\nExits 0 when URL answers 200 (a healthcheck for images without curl).")
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return usageError{errors.New("usage: khook probe URL"), true}
	}
	args = fs.Args()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s %s", args[0], resp.Status, strings.TrimSpace(string(body)))
	}
	fmt.Fprintln(stdout, strings.TrimSpace(string(body)))
	return nil
}
