package app

import (
	"cmp"
	"context"
	"os"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/producers"
)

// Status is the pipeline's status: its streams, consumers and dead letters, the plugins of
// plugins.yaml, and the given hooks.
func Status(ctx context.Context, js jetstream.JetStream, cfg config.Config, idx *hook.Index) (*ops.Status, error) {
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
