// Shell completion of values only the pipeline knows: dead-letter sequences, plugin names and
// Hook names. Each reads what the command itself would read (the --config and --nats-url
// given so far on the line) and completes nothing, quietly, when it cannot: a completion
// must never print an error into the user's shell.

package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/khook/khook/app"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/producers"
)

// completionTimeout bounds a completion that reads NATS or a cluster: a shell waits for it.
const completionTimeout = 2 * time.Second

// completeDynamic registers the completions of the tree's dynamic values.
func completeDynamic(root *cobra.Command) {
	walk(root, func(c *cobra.Command) {
		switch c.CommandPath() {
		case "khook dlq show", "khook dlq retry", "khook dlq purge":
			c.ValidArgsFunction = completeDeadLetters
		case "khook plugins enable", "khook plugins disable":
			c.ValidArgsFunction = func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
				if len(args) > 0 {
					return nil, cobra.ShellCompDirectiveNoFileComp
				}
				return pluginNames(cmd), cobra.ShellCompDirectiveNoFileComp
			}
		}
		for _, name := range []string{"source", "plugin"} {
			if c.Flags().Lookup(name) != nil && c.CommandPath() != "khook mappings check" {
				_ = c.RegisterFlagCompletionFunc(name, func(cmd *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
					return pluginNames(cmd), cobra.ShellCompDirectiveNoFileComp
				})
			}
		}
		if c.Flags().Lookup("hook") != nil {
			_ = c.RegisterFlagCompletionFunc("hook", completeHooks)
		}
	})
}

func walk(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, sub := range c.Commands() {
		walk(sub, fn)
	}
}

// completionConfig loads the configuration the command line names so far.
func completionConfig(cmd *cobra.Command) (config.Config, error) {
	common := &commonFlags{}
	if f := cmd.Flags().Lookup("config"); f != nil {
		common.config = f.Value.String()
	}
	if f := cmd.Flags().Lookup("nats-url"); f != nil {
		common.natsURL = f.Value.String()
	}
	return config.Load(common.config, environ(), common.opsOverrides())
}

// completeDeadLetters completes dead-letter sequences, each with its stage, reason and
// event type, leaving out those already on the line.
func completeDeadLetters(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if cmd.Name() == "show" && len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	cfg, err := completionConfig(cmd)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	cfg.NATS.ConnectTimeout = min(cfg.NATS.ConnectTimeout, completionTimeout)
	nc, js, err := app.Connect(cfg)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	defer cancel()
	letters, err := ops.ListDeadLetters(ctx, js, cfg.Streams, ops.DLQFilter{}, defaultLimit)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, d := range letters {
		seq := fmt.Sprint(d.Seq)
		if slices.Contains(args, seq) {
			continue
		}
		out = append(out, fmt.Sprintf("%s\t%s %s %s", seq, d.Stage, d.Reason, d.EventType))
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// pluginNames are the plugins of plugins.yaml.
func pluginNames(cmd *cobra.Command) []string {
	file := ""
	if f := cmd.Flags().Lookup("file"); f != nil && f.Value.String() != "" {
		file = f.Value.String()
	} else if cfg, err := completionConfig(cmd); err == nil {
		file = cfg.Files.Plugins
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	specs, err := producers.ParseSpecs(b, func(string) (string, bool) { return "", true })
	if err != nil {
		return nil
	}
	var out []string
	for _, sp := range specs {
		state := "enabled"
		if !sp.IsEnabled() {
			state = "disabled"
		}
		out = append(out, sp.Name+"\t"+state)
	}
	return out
}

// completeHooks completes Hook names (namespace/name) from the hooks the dispatcher would
// use.
func completeHooks(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	cfg, err := completionConfig(cmd)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	defer cancel()
	idx, err := app.ActiveHooks(ctx, cfg)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, h := range idx.Hooks() {
		if strings.HasPrefix(h.Key(), toComplete) {
			out = append(out, h.Key())
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
