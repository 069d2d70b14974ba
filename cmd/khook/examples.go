// Examples shown in --help, taken from docs/operations.md and docs/plugins.md: one table, so
// that every command that does something shows how it is used.

package main

import (
	"strings"

	"github.com/spf13/cobra"
)

// examples maps a command's path to its examples, one command line each.
var examples = map[string][]string{
	"khook run":        {"khook run --config examples/local/khook.yaml", "khook run --config khook.yaml --nats-url nats://nats:4222"},
	"khook edge":       {"khook edge --config examples/multicluster/edge-eu-1.yaml   # one cluster's producers; forwards to the hub"},
	"khook producer":   {"khook producer --nats-url nats://nats:4222 --config khook.yaml"},
	"khook mapper":     {"khook mapper --nats-url nats://nats:4222 --config khook.yaml"},
	"khook dispatcher": {"khook dispatcher --nats-url nats://nats:4222 --config khook.yaml"},
	"khook streams apply": {
		"khook streams apply --config khook.yaml --dry-run   # what would change; change nothing",
		"khook streams apply --nats-url nats://nats:4222 --config khook.yaml",
	},
	"khook agent": {"khook agent --addr 127.0.0.1:8083"},
	"khook publish": {
		`khook publish --source ci --type build-failed --data '{"namespace":"shop","resourceName":"cart","message":"tests failed"}'`,
		"producer-script | khook publish --source ci --nats-url nats://khook:4222 --user ci --password-file /run/secrets/ci",
	},
	"khook replay": {
		"khook replay --through mapper --since 2h --dry-run   # say what would happen; send nothing",
		"khook replay --through mapper --since 2h",
		"khook replay --through dispatcher --type pod-restart --namespace shop --from 2026-11-27T08:00:00Z --to 2026-11-27T09:00:00Z",
		"khook replay --resume 20261127-101500-3fa2c1        # continue an interrupted replay",
	},
	"khook status":     {"khook status", "khook status -o json"},
	"khook hooks list": {"khook hooks list --config khook.yaml", "khook hooks list --kubeconfig ~/.kube/config -o yaml"},
	"khook dlq list": {
		"khook dlq list",
		"khook dlq list --stage dispatcher --reason permanent --since 2d -o json",
	},
	"khook dlq show": {"khook dlq show 42"},
	"khook dlq retry": {
		"khook dlq retry 42 43",
		"khook dlq retry --all --reason max-attempts --dry-run",
	},
	"khook dlq purge": {
		"khook dlq purge --all --stage mapper --reason unmapped --dry-run",
		"khook dlq purge --all --stage mapper --reason unmapped --force",
	},
	"khook events tail": {"khook events tail --namespace shop --severity error"},
	"khook events get":  {"khook events get --since 1h --type pod-restart -o json"},
	"khook events describe": {
		"khook events describe webhook/3f2a9c   # the id the webhook's 202 answer gave",
		"khook events describe 1042 -o json      # by its sequence in the events stream",
	},
}

// addExamples sets each command's Example from the table, unless the command sets its own.
func addExamples(cmd *cobra.Command) {
	if lines, ok := examples[cmd.CommandPath()]; ok && cmd.Example == "" {
		cmd.Example = "  " + strings.Join(lines, "\n  ")
	}
	for _, c := range cmd.Commands() {
		addExamples(c)
	}
}
