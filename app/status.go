package app

import (
	"cmp"
	"context"
	"os"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/consumers/dispatch/state"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/producers"
)

// DefaultStatusWindow is how far back khook status counts outcomes unless told otherwise.
const DefaultStatusWindow = time.Hour

// Status is the pipeline's status: its streams, consumers and dead letters, the plugins of
// plugins.yaml, the given hooks, and the outcomes of the last window (0 leaves them out).
func Status(ctx context.Context, js jetstream.JetStream, cfg config.Config, idx *hook.Index, window time.Duration) (*ops.Status, error) {
	var plugins []ops.Plugin
	if b, err := os.ReadFile(cfg.Files.Plugins); err == nil {
		if specs, err := producers.ParseSpecs(b, func(string) (string, bool) { return "", true }); err == nil {
			for _, sp := range specs {
				plugins = append(plugins, ops.Plugin{Name: sp.Name, Enabled: sp.IsEnabled()})
			}
		}
	}
	s, err := ops.GetStatus(ctx, js, cfg.Streams, plugins, hookStatuses(idx))
	if err != nil {
		return nil, err
	}
	if s.Groups, s.Agents, err = agentStatuses(ctx, js, cfg); err != nil {
		return nil, err
	}
	if window > 0 {
		if s.Outcomes, err = ops.CountOutcomes(ctx, js, cfg.Streams, window); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// agentStatuses reads the groups, the waiting tasks and the budgets from the dispatch
// bucket, as every dispatcher replica shares them.
func agentStatuses(ctx context.Context, js jetstream.JetStream, cfg config.Config) (ops.GroupsStatus, []ops.AgentStatus, error) {
	var groups ops.GroupsStatus
	agents := []ops.AgentStatus{}
	st, err := state.Open(ctx, js, cfg.Streams)
	if err != nil {
		return groups, agents, err
	}
	records, err := st.Groups(ctx)
	if err != nil {
		return groups, agents, err
	}
	budgets, err := st.Budgets(ctx)
	if err != nil {
		return groups, agents, err
	}
	now := time.Now()
	byAgent := map[string]*ops.AgentStatus{}
	agent := func(name string) *ops.AgentStatus {
		if a, ok := byAgent[name]; ok {
			return a
		}
		a := &ops.AgentStatus{Agent: name}
		if b, ok := state.BudgetFor(cfg.Dispatcher.Budgets, name); ok {
			a.MaxConcurrentTasks, a.MaxTasksPerHour = b.MaxConcurrentTasks, b.MaxTasksPerHour
		}
		byAgent[name] = a
		return a
	}
	for _, r := range records {
		if r.Open() {
			groups.Open++
			groups.Events += r.Pending
		}
		if r.Waiting(now) {
			a := agent(r.Agent)
			a.Waiting++
			if a.OldestWaiting.IsZero() || r.Due.Before(a.OldestWaiting) {
				a.OldestWaiting = r.Due
			}
		}
	}
	for _, b := range budgets {
		a := agent(b.Agent)
		a.InFlight, a.LastHour = b.InUse(now)
	}
	for _, a := range byAgent {
		agents = append(agents, *a)
	}
	slices.SortFunc(agents, func(a, b ops.AgentStatus) int { return cmp.Compare(a.Agent, b.Agent) })
	return groups, agents, nil
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
