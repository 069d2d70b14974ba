// Command khook is every khook component in one binary: `khook run` runs the whole pipeline
// with an embedded NATS server, and `khook producer|mapper|dispatcher` run one stage each
// against an external NATS JetStream, so that stages scale separately.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/khook/khook/internal/strictyaml"
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
	cmd, err := verbFirst(root, args)
	if err == nil {
		cmd, err = root.ExecuteContextC(ctx)
	}
	if err == nil {
		return 0
	}
	name := "khook"
	if cmd != nil {
		name = cmd.CommandPath()
	}
	fmt.Fprintf(stderr, "%s: %v\n", name, err)
	if errors.Is(err, errInterrupted) {
		// As a shell reports a command stopped by Ctrl-C: 128 + SIGINT.
		return 130
	}
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
		runCmd(), edgeCmd(), producerCmd(), mapperCmd(), dispatcherCmd(), streamsCmd(),
		agentCmd(), mappingsCmd(), hooksCmd(), publishCmd(), pluginsCmd(), probeCmd(),
		replayCmd(), statusCmd(), dlqCmd(), eventsCmd(), versionCmd(),
	)
	addExamples(root)
	completeEnums(root)
	completeDynamic(root)
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
				return unknownVerb(cmd, args[0])
			}
			return cmd.Help()
		}}
	cmd.AddCommand(verbs...)
	return cmd
}

// unknownVerb is the usage error of a group given a verb it does not have, with the nearest
// ones.
func unknownVerb(group *cobra.Command, verb string) error {
	msg := fmt.Sprintf("unknown command %q for %q", verb, group.CommandPath())
	if group.SuggestionsMinimumDistance <= 0 {
		group.SuggestionsMinimumDistance = 2
	}
	near := group.SuggestionsFor(verb)
	for _, c := range group.Commands() {
		for _, alias := range c.Aliases {
			if strings.HasPrefix(alias, verb) || strictyaml.Distance(verb, alias) <= 2 {
				near = append(near, alias)
			}
		}
	}
	if len(near) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(near, "\n\t")
	}
	return usageError{errors.New(msg)}
}

// verbFirst finds an unknown verb before cobra parses flags, so that `khook events lst
// --since 1h` is told its verb is unknown (and the nearest ones) rather than that --since
// is: the words that follow khook name commands until the first flag, and a group followed
// by a word that is none of its commands has an unknown verb.
func verbFirst(root *cobra.Command, args []string) (*cobra.Command, error) {
	cmd := root
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			return nil, nil
		}
		next, _, err := cmd.Find([]string{a})
		if err != nil || next == cmd {
			if cmd != root && cmd.HasAvailableSubCommands() {
				return cmd, unknownVerb(cmd, a)
			}
			return nil, nil
		}
		cmd = next
	}
	return nil, nil
}

// errInterrupted is a command stopped by SIGINT or SIGTERM before it was done; it exits 130.
var errInterrupted = errors.New("interrupted")

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
