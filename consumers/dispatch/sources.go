package dispatch

import (
	"sync"

	"go.uber.org/zap"

	"github.com/khook/khook/hook"
)

// HookSources merges the hooks of several sources, such as Hook resources and a hooks file,
// into the one index the dispatcher matches against.
//
// It hands the dispatcher an index only once every source has given its first set, so that
// the dispatcher never consumes events with part of its hooks (an event matched by none is
// acknowledged). When two sources define a hook of the same namespace and name, the source
// named first to NewHookSources wins and the other's is skipped, with a warning: in a
// cluster, the Hook resource is what `kubectl get hooks` shows and what status is written
// to, so it is the one that counts.
type HookSources struct {
	set    func(*hook.Index)
	order  []string
	logger *zap.Logger

	mu    sync.Mutex
	hooks map[string][]hook.Hook
}

// NewHookSources returns sources, in order of precedence, whose merged hooks go to set.
func NewHookSources(set func(*hook.Index), logger *zap.Logger, order ...string) *HookSources {
	return &HookSources{set: set, order: order, logger: logger, hooks: map[string][]hook.Hook{}}
}

// Set replaces one source's hooks, which must each be valid, and hands the dispatcher the
// merged index once every source has reported.
func (s *HookSources) Set(source string, hooks []hook.Hook) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hooks[source] = hooks
	if len(s.hooks) < len(s.order) {
		return nil
	}
	from := map[string]string{}
	var merged []hook.Hook
	for _, src := range s.order {
		for _, h := range s.hooks[src] {
			if first, ok := from[h.Key()]; ok {
				s.logger.Warn("hook defined by two sources, the first one's is used",
					zap.String("hook", h.Key()), zap.String("used", first), zap.String("skipped", src))
				continue
			}
			from[h.Key()] = src
			merged = append(merged, h)
		}
	}
	idx, err := hook.NewIndex(merged)
	if err != nil {
		return err
	}
	s.set(idx)
	return nil
}
