// khook status: streams, consumers, dead letters, plugins and hooks.

package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/producers"
)

func statusCmd() *cobra.Command {
	return leaf("status", "show the streams, consumers, dead letters, plugins and hooks", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		output := addOutput(fs, "table", "json", "yaml")
		return func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
			s, err := openOps(common)
			if err != nil {
				return err
			}
			defer s.nc.Close()
			idx, err := s.hooks(ctx)
			if err != nil {
				// Status is for troubleshooting: a broken hooks source is reported, not fatal.
				fmt.Fprintf(stderr, "hooks: %v\n", err)
			}
			st, err := pipelineStatus(ctx, s.js, s.cfg, idx)
			if err != nil {
				return err
			}
			return writeAs(stdout, output.value, st, st.WriteTable)
		}
	})
}

// pipelineStatus is the status with plugins from plugins.yaml and the given hooks.
func pipelineStatus(ctx context.Context, js jetstream.JetStream, cfg config.Config, idx *hook.Index) (*ops.Status, error) {
	var plugins []ops.Plugin
	if b, err := os.ReadFile(cfg.Files.Plugins); err == nil {
		if specs, err := producers.ParseSpecs(b, func(string) (string, bool) { return "", true }); err == nil {
			for _, sp := range specs {
				plugins = append(plugins, ops.Plugin{Name: sp.Name, Enabled: sp.IsEnabled()})
			}
		}
	}
	return ops.GetStatus(ctx, js, cfg.Streams, plugins, hookStatuses(idx))
}

func hookStatuses(idx *hook.Index) []ops.HookStatus {
	out := []ops.HookStatus{}
	if idx == nil {
		return out
	}
	for _, h := range idx.Hooks() {
		hs := ops.HookStatus{Hook: h.Key()}
		for _, ec := range h.Spec.EventConfigurations {
			ns := cmp.Or(ec.AgentRef.Namespace, h.Metadata.Namespace)
			hs.EventTypes = append(hs.EventTypes, ec.EventType)
			if a := ns + "/" + ec.AgentRef.Name; !slices.Contains(hs.Agents, a) {
				hs.Agents = append(hs.Agents, a)
			}
		}
		out = append(out, hs)
	}
	return out
}

// ---- khook dlq ----
