// Package builtin is the one explicit table of the plugins compiled into khook. Adding a
// built-in plugin is one package and one line here; there is no init() registration.
package builtin

import (
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/khook/khook/producers"
	"github.com/khook/khook/producers/webhook"
)

// Constructor builds a plugin from its plugins.yaml entry, validating its config, and
// registers the plugin's own metrics on reg. It starts nothing.
type Constructor func(spec producers.Spec, logger *zap.Logger, reg prometheus.Registerer) (producers.Plugin, error)

// Table maps each built-in plugin's name to its constructor.
func Table() map[string]Constructor {
	return map[string]Constructor{
		webhook.Name: webhook.FromSpec,
	}
}

// Names lists the built-in plugins, for error messages.
func Names() string {
	var names []string
	for n := range Table() {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}
