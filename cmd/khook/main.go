// Command khook is every khook component in one binary: `khook run` runs the whole pipeline
// with an embedded NATS server, and `khook producer|mapper|dispatcher` run one stage each
// against an external NATS JetStream, so that stages scale separately.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/khook/khook/internal/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(execute(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// execute runs one command line and returns the process exit code: 0, 1 when the command
// failed, 2 when the command line itself is wrong. Asked-for help goes to stdout with exit 0;
// every error goes to stderr.
func execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	name := "khook"
	if cmd != nil {
		name = cmd.CommandPath()
	}
	fmt.Fprintf(stderr, "%s: %v\n", name, err)
	if isUsage(err) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", name)
		return 2
	}
	return 1
}

// newRoot builds the command tree. Each command is in the file of its concern; the groups
// of verbs (dlq, events, streams, mappings, plugins) are commands with subcommands.
func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "khook",
		Short: "khook turns cluster and system events into tasks for AI agents, through NATS JetStream",
		Long: `khook turns cluster and system events into tasks for AI agents, through NATS JetStream.

Run the whole pipeline in one process with an embedded NATS server:
  khook run --config examples/local/khook.yaml

or each stage as its own process against a NATS server, as the Helm chart does:
  khook producer|mapper|dispatcher --config khook.yaml`,
		Version:       version,
		SilenceErrors: true,
		SilenceUsage:  true,
		// No Args: cobra's own check for the root names an unknown command and suggests
		// the nearest ("did you mean").
	}
	root.SetVersionTemplate(versionLine() + "\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		runCmd(), producerCmd(), mapperCmd(), dispatcherCmd(), streamsCmd(),
		agentCmd(), mappingsCmd(), publishCmd(), pluginsCmd(), probeCmd(),
		replayCmd(), statusCmd(), dlqCmd(), eventsCmd(), versionCmd(),
	)
	return root
}

// runFunc is a command's work, once its flags are parsed: args are the positional ones.
type runFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// leaf is a command whose flags setup declares on its flag set; setup returns the work.
func leaf(use, short string, args cobra.PositionalArgs, setup func(fs *pflag.FlagSet) runFunc) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short, Args: usageArgs(args)}
	run := setup(cmd.Flags())
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return run(cmd.Context(), args, cmd.OutOrStdout(), cmd.ErrOrStderr())
	}
	return cmd
}

// group is a command of verbs: alone it prints its help; with an unknown verb it is a usage
// error (cobra would print the help and exit 0).
func group(use, short string, verbs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())}
			}
			return cmd.Help()
		}}
	cmd.AddCommand(verbs...)
	return cmd
}

// usageError is a command line the command cannot run: unknown flags or commands, missing
// or extra arguments. It exits 2.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// isUsage says whether err is a usage error; cobra's own "unknown command" for the root is
// one too.
func isUsage(err error) bool {
	var ue usageError
	return errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command ")
}

// usageArgs makes an argument check's failure a usage error.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	if check == nil {
		return nil
	}
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// commonFlags are the flags every pipeline and operations command takes.
type commonFlags struct {
	config     string
	natsURL    string
	creds      string
	kubeconfig string
}

func addCommonFlags(fs *pflag.FlagSet) *commonFlags {
	c := &commonFlags{}
	fs.StringVar(&c.config, "config", "", "path to khook.yaml")
	fs.StringVarP(&c.natsURL, "nats-url", "s", "", "NATS server URL (overrides nats.url; the operations commands also read $NATS_URL)")
	fs.StringVar(&c.creds, "creds", "", "NATS credentials file (overrides nats.credentials_file; the operations commands also read $NATS_CREDS)")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file for Hook resources and the kubernetes plugin (default: in-cluster, else $KUBECONFIG)")
	return c
}

// overrides turns the flags that were set into config keys. --kubeconfig also becomes
// $KUBECONFIG, which the kubernetes plugin falls back to when its config names none.
func (c *commonFlags) overrides() map[string]any {
	o := map[string]any{}
	if c.natsURL != "" {
		o["nats.url"] = c.natsURL
	}
	if c.creds != "" {
		o["nats.credentials_file"] = c.creds
	}
	if c.kubeconfig != "" {
		o["kubernetes.kubeconfig"] = c.kubeconfig
		_ = os.Setenv("KUBECONFIG", c.kubeconfig)
	}
	return o
}

// natsEnv are the nats CLI's variables the operations commands honour, so that a shell set
// up for the nats CLI reaches the same server, with the setting each stands for. A stage
// (run, producer, mapper, dispatcher) ignores them: a variable left in a shell must not move
// a pipeline off its embedded or configured server.
var natsEnv = map[string]string{
	"NATS_URL":   "nats.url",
	"NATS_CREDS": "nats.credentials_file",
	"NATS_CA":    "nats.tls.ca_file",
	"NATS_CERT":  "nats.tls.cert_file",
	"NATS_KEY":   "nats.tls.key_file",
}

// opsOverrides are overrides with the nats CLI's variables under them: a flag wins over a
// NATS_ variable, and so does khook's own KHOOK_NATS_ variable for the same setting.
func (c *commonFlags) opsOverrides() map[string]any {
	o := c.overrides()
	for name, key := range natsEnv {
		v := os.Getenv(name)
		own := config.EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
		if _, set := o[key]; v == "" || set || os.Getenv(own) != "" {
			continue
		}
		o[key] = v
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

// outputFlag is -o, --output: a format from a fixed list, checked when the flag is parsed,
// so a wrong one fails before any connection is made.
type outputFlag struct {
	value   string
	choices []string
}

func (o *outputFlag) String() string { return o.value }
func (o *outputFlag) Type() string   { return "format" }
func (o *outputFlag) Set(v string) error {
	if !slices.Contains(o.choices, v) {
		return fmt.Errorf("want %s, got %q", strings.Join(o.choices, ", "), v)
	}
	o.value = v
	return nil
}

// addOutput declares -o, --output with the formats a command can print, the first being the
// default.
func addOutput(fs *pflag.FlagSet, choices ...string) *outputFlag {
	o := &outputFlag{value: choices[0], choices: choices}
	fs.VarP(o, "output", "o", "output format: "+strings.Join(choices, ", "))
	return o
}

// writeAs prints v as JSON or YAML, or through table for the table format.
func writeAs(w io.Writer, format string, v any, table func(io.Writer) error) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		// Through JSON, so that YAML has the same field names as JSON.
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		y, err := yaml.JSONToYAML(b)
		if err != nil {
			return err
		}
		_, err = w.Write(y)
		return err
	default:
		return table(w)
	}
}

func versionLine() string {
	return fmt.Sprintf("khook %s (%s, %s/%s)", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func versionCmd() *cobra.Command {
	return leaf("version", "print the version", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		output := addOutput(fs, "text", "json", "yaml")
		return func(_ context.Context, _ []string, stdout, _ io.Writer) error {
			v := struct {
				Version string `json:"version"`
				Go      string `json:"go"`
				OS      string `json:"os"`
				Arch    string `json:"arch"`
			}{version, runtime.Version(), runtime.GOOS, runtime.GOARCH}
			return writeAs(stdout, output.value, v, func(w io.Writer) error {
				_, err := fmt.Fprintln(w, versionLine())
				return err
			})
		}
	})
}
