// The flags every command shares: the configuration, NATS and Kubernetes, and -o.

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/khook/khook/internal/config"
)

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

// enumFlag is a flag whose value is one of a fixed list, checked when the flag is parsed, so
// a wrong one fails (with the usage exit code) before any connection is made. Shell
// completion offers the list (completeEnums). An empty value, where allowed, means "any".
type enumFlag struct {
	value    string
	choices  []string
	allowAny bool
}

func (o *enumFlag) String() string { return o.value }
func (o *enumFlag) Type() string   { return "string" }
func (o *enumFlag) Set(v string) error {
	if !slices.Contains(o.choices, v) && !(o.allowAny && v == "") {
		return fmt.Errorf("want %s, got %q", strings.Join(o.choices, ", "), v)
	}
	o.value = v
	return nil
}

// outputFlag is -o, --output: a format from a fixed list.
type outputFlag = enumFlag

// addOutput declares -o, --output with the formats a command can print, the first being the
// default.
func addOutput(fs *pflag.FlagSet, choices ...string) *outputFlag {
	o := &enumFlag{value: choices[0], choices: choices}
	fs.VarP(o, "output", "o", "output format: "+strings.Join(choices, ", "))
	return o
}

// addEnum declares a flag that takes one of choices, or nothing (any).
func addEnum(fs *pflag.FlagSet, name, usage string, choices ...string) *enumFlag {
	e := &enumFlag{choices: choices, allowAny: true}
	fs.Var(e, name, usage+": "+strings.Join(choices, ", "))
	return e
}

// addChoice declares a flag that takes one of choices, def by default.
func addChoice(fs *pflag.FlagSet, name, def, usage string, choices ...string) *enumFlag {
	e := &enumFlag{value: def, choices: choices}
	fs.Var(e, name, usage+": "+strings.Join(choices, " or "))
	return e
}

// defaultLimit is how many items every listing shows unless --limit says otherwise.
const defaultLimit = 100

// addLimit declares --limit for a listing.
func addLimit(fs *pflag.FlagSet) *int {
	return fs.Int("limit", defaultLimit, "at most this many")
}

// completeEnums registers, on every command of the tree, shell completion of each enum
// flag's values.
func completeEnums(cmd *cobra.Command) {
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if e, ok := f.Value.(*enumFlag); ok {
			choices := e.choices
			_ = cmd.RegisterFlagCompletionFunc(f.Name, func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
				return choices, cobra.ShellCompDirectiveNoFileComp
			})
		}
	})
	for _, c := range cmd.Commands() {
		completeEnums(c)
	}
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
