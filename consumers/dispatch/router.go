package dispatch

import (
	"strings"

	"github.com/khook/khook/hook"
)

// Route sends the agents it names to a target instead of the default one.
type Route struct {
	// Agent is "namespace/name", or "namespace/*" for every agent of a namespace.
	Agent  string
	Target Target
}

// Router picks the target for an agent: the first route naming it exactly, else the first
// namespace route, else the default.
type Router struct {
	exact     map[string]Target
	namespace map[string]Target
	fallback  Target
}

// NewRouter returns a router over routes, falling back to def.
func NewRouter(def Target, routes ...Route) *Router {
	r := &Router{exact: map[string]Target{}, namespace: map[string]Target{}, fallback: def}
	for _, rt := range routes {
		ns, name, _ := strings.Cut(rt.Agent, "/")
		if name == "*" {
			if _, ok := r.namespace[ns]; !ok {
				r.namespace[ns] = rt.Target
			}
		} else if _, ok := r.exact[rt.Agent]; !ok {
			r.exact[rt.Agent] = rt.Target
		}
	}
	return r
}

// Target returns the target for agent.
func (r *Router) Target(agent hook.AgentRef) Target {
	if t, ok := r.exact[agent.Namespace+"/"+agent.Name]; ok {
		return t
	}
	if t, ok := r.namespace[agent.Namespace]; ok {
		return t
	}
	return r.fallback
}

// Kinds lists the kinds of every target the router can pick, for metric labels.
func (r *Router) Kinds() []string {
	seen := map[string]bool{r.fallback.Name(): true}
	kinds := []string{r.fallback.Name()}
	for _, m := range []map[string]Target{r.exact, r.namespace} {
		for _, t := range m {
			if !seen[t.Name()] {
				seen[t.Name()] = true
				kinds = append(kinds, t.Name())
			}
		}
	}
	return kinds
}
