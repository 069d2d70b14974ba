// Package builtin is the one explicit table of the plugins compiled into khook. Adding a
// built-in plugin is one package and one line here; there is no init() registration.
package builtin

import (
	"slices"
	"strings"

	"github.com/khook/khook/producers"
	"github.com/khook/khook/producers/alertmanager"
	"github.com/khook/khook/producers/heartbeat"
	"github.com/khook/khook/producers/kubernetes"
	"github.com/khook/khook/producers/webhook"
)

// Table maps each built-in plugin's name to its constructor.
func Table() map[string]producers.Constructor {
	return map[string]producers.Constructor{
		webhook.Name:      webhook.FromSpec,
		alertmanager.Name: alertmanager.FromSpec,
		heartbeat.Name:    heartbeat.FromSpec,
		kubernetes.Name:   kubernetes.FromSpec,
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
