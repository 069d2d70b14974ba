package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/khook/khook/streams/deadletter"
	"github.com/khook/khook/streams/streamstest"
)

var update = flag.Bool("update", false, "rewrite docs/cli.md from the commands")

// commandPaths lists every command of the tree as its arguments, root first.
func commandPaths() [][]string {
	var out [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		out = append(out, path)
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" {
				continue
			}
			walk(sub, append(append([]string{}, path...), sub.Name()))
		}
	}
	walk(newRoot(), nil)
	return out
}

// TestEveryCommandShowsExamples: every command that does something (a leaf, but for the
// version and the completion scripts) shows examples in its --help, and each example is a
// command line of that command whose flags the command has.
func TestEveryCommandShowsExamples(t *testing.T) {
	root := newRoot()
	for _, path := range commandPaths() {
		cmd, _, err := root.Find(path)
		require.NoError(t, err)
		name := cmd.CommandPath()
		if cmd.HasSubCommands() || cmd.Name() == "version" || strings.HasPrefix(name, "khook completion") || len(path) == 0 {
			continue
		}
		require.NotEmpty(t, cmd.Example, "%s --help shows no example", name)
		for _, line := range strings.Split(cmd.Example, "\n") {
			line, _, _ = strings.Cut(strings.TrimSpace(line), "   #")
			line = strings.TrimPrefix(line[strings.Index(line, "khook"):], "")
			require.True(t, strings.HasPrefix(line, name), "%s: example %q is of another command", name, line)
			for _, word := range strings.Fields(line) {
				if flagName, ok := strings.CutPrefix(word, "--"); ok {
					flagName, _, _ = strings.Cut(flagName, "=")
					require.NotNil(t, cmd.Flags().Lookup(flagName), "%s: example %q uses --%s, which it does not have", name, line, flagName)
				}
			}
		}
	}
}

// TestEveryCommandHelps asks every command and verb for help both ways: each answers on
// stdout with exit 0, and names itself.
func TestEveryCommandHelps(t *testing.T) {
	paths := commandPaths()
	require.Greater(t, len(paths), 25, "the whole tree, verbs and completion included")
	for _, path := range paths {
		for _, help := range []string{"--help", "-h"} {
			args := append(append([]string{}, path...), help)
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				var stdout, stderr bytes.Buffer
				require.Equal(t, 0, execute(context.Background(), args, &stdout, &stderr), stderr.String())
				require.Empty(t, stderr.String())
				require.Contains(t, stdout.String(), "Usage:")
				require.Contains(t, stdout.String(), strings.Join(append([]string{"khook"}, path...), " "))
			})
		}
	}
}

// TestOutputFormats runs every command that prints data against a real NATS server with
// khook's streams, with -o json and -o yaml: each prints one valid document.
func TestOutputFormats(t *testing.T) {
	ns := streamstest.RunServer(t)
	url := ns.ClientURL()
	run := func(t *testing.T, args ...string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := execute(context.Background(), args, &stdout, &stderr)
		require.Equal(t, 0, code, "khook %s: %s", strings.Join(args, " "), stderr.String())
		return stdout.String()
	}
	require.Contains(t, run(t, "streams", "apply", "--nats-url", url, "--dry-run"), "stream KHOOK_RAW would be created")
	require.Contains(t, run(t, "streams", "apply", "--nats-url", url), "stream KHOOK_RAW created")

	dir := t.TempDir()
	hooks := filepath.Join(dir, "hooks.yaml")
	require.NoError(t, os.WriteFile(hooks, []byte("[]\n"), 0o600))
	cfg := filepath.Join(dir, "khook.yaml")
	mappings, err := filepath.Abs("../../mapping/testdata/event-mappings.yaml")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf("files:\n  hooks: %s\n  mappings: %s\nkubernetes:\n  hooks: file\n", hooks, mappings)), 0o600))

	for _, tc := range []struct {
		args []string
		// key is a field the document must have (for a list, its first item's, when any).
		key string
	}{
		{[]string{"status", "--config", cfg, "--nats-url", url}, "streams"},
		{[]string{"dlq", "list", "--config", cfg, "--nats-url", url}, ""},
		{[]string{"events", "get", "--config", cfg, "--nats-url", url}, ""},
		{[]string{"replay", "--dry-run", "--config", cfg, "--nats-url", url}, "id"},
		{[]string{"version"}, "version"},
		{[]string{"streams", "apply", "--dry-run", "--nats-url", url}, ""},
		{[]string{"mappings", "check", mappings, "--event", "../../mapping/testdata/alertmanager-firing.in.json"}, "mapping"},
	} {
		for _, format := range []string{"json", "yaml"} {
			t.Run(strings.Join(tc.args[:min(2, len(tc.args))], " ")+" -o "+format, func(t *testing.T) {
				out := run(t, append(tc.args, "-o", format)...)
				var doc any
				if format == "json" {
					require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
				} else {
					require.NoError(t, yaml.Unmarshal([]byte(out), &doc), out)
					if tc.key != "" {
						require.False(t, json.Valid([]byte(out)), "yaml, not json:\n%s", out)
					}
				}
				if tc.key != "" {
					obj, ok := doc.(map[string]any)
					require.True(t, ok, "an object:\n%s", out)
					require.Contains(t, obj, tc.key)
				} else {
					_, ok := doc.([]any)
					require.True(t, ok, "a list:\n%s", out)
				}
			})
		}
	}
}

// TestCLIReference keeps docs/cli.md what the commands say of themselves; run with -update
// after changing a command.
func TestCLIReference(t *testing.T) {
	got := cliReference()
	path := "../../docs/cli.md"
	if *update {
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, string(want), got, "docs/cli.md is stale: go test ./cmd/khook -run TestCLIReference -update")
}

// cliReference renders every command's help as one Markdown page.
func cliReference() string {
	var b strings.Builder
	b.WriteString("# khook command reference\n\n")
	b.WriteString("Generated from the commands themselves (`go test ./cmd/khook -run TestCLIReference -update`); a test\n")
	b.WriteString("fails when it is stale. Every command prints the same with `--help`.\n\n")
	b.WriteString("Conventions: help goes to stdout with exit 0; errors go to stderr, with exit 1 when the\n")
	b.WriteString("command failed, 2 when the command line is wrong, and 130 when Ctrl-C stopped it. Commands\n")
	b.WriteString("that print data take `-o, --output` (`table` or `text`, `json`, `yaml`); tables have a header\n")
	b.WriteString("line (`--no-headers` drops it), and an empty listing says so on stderr. Listings show\n")
	b.WriteString("`--limit` items, 100 by default. `-n` is `--namespace`. Durations take `d` for days\n")
	b.WriteString("(`--since 2d`). `khook completion bash|zsh|fish|powershell` prints a shell completion\n")
	b.WriteString("script, which completes commands, flags and the values of flags that take one of a list.\n")
	for _, path := range commandPaths() {
		var stdout, stderr bytes.Buffer
		execute(context.Background(), append(path, "--help"), &stdout, &stderr)
		fmt.Fprintf(&b, "\n## %s\n\n```text\n%s```\n", strings.Join(append([]string{"khook"}, path...), " "), stdout.String())
	}
	return b.String()
}

// TestPurgeAsksFirst: purge deletes for good, so without a terminal to ask on it refuses
// unless --force; --dry-run says what would go and deletes nothing.
func TestPurgeAsksFirst(t *testing.T) {
	ns := streamstest.RunServer(t)
	url := ns.ClientURL()
	khook := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := execute(context.Background(), append(args, "--nats-url", url), &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	code, _, stderr := khook("streams", "apply")
	require.Equal(t, 0, code, stderr)
	_, js := streamstest.Connect(t, ns)
	for i := range 2 {
		msg := nats.NewMsg("khook.dlq.mapper")
		msg.Header.Set(deadletter.HeaderStage, "mapper")
		msg.Header.Set(deadletter.HeaderReason, "invalid-envelope")
		msg.Header.Set(deadletter.HeaderOriginalSubject, "khook.raw.webhook.x")
		msg.Data = []byte(fmt.Sprintf(`{"n":%d}`, i))
		_, err := js.PublishMsg(context.Background(), msg)
		require.NoError(t, err)
	}
	count := func() int {
		code, out, stderr := khook("dlq", "list", "-o", "json")
		require.Equal(t, 0, code, stderr)
		var letters []any
		require.NoError(t, json.Unmarshal([]byte(out), &letters))
		return len(letters)
	}
	require.Equal(t, 2, count())

	code, out, _ := khook("dlq", "purge", "--all", "--dry-run")
	require.Equal(t, 0, code)
	require.Contains(t, out, "would purge 2 dead letters")
	require.Equal(t, 2, count())

	// The test's stdin is not a terminal: nothing can confirm.
	code, out, stderr = khook("dlq", "purge", "--all")
	require.Equal(t, 1, code)
	require.Empty(t, out)
	require.Contains(t, stderr, "nothing purged: not confirmed (pass --force")
	require.Equal(t, 2, count())

	code, _, stderr = khook("dlq", "purge", "--all", "1")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "give sequence numbers or --all, not both")

	code, out, stderr = khook("dlq", "purge", "--all", "--force")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, out, "purged 2 dead letters")
	require.Equal(t, 0, count())
}

// TestOperationsFindNATS: with no nats.url, an operations command dials the embedded
// server's listen address from the same khook.yaml; NATS_URL (the nats CLI's variable)
// reaches a server too, and --nats-url wins over it.
func TestOperationsFindNATS(t *testing.T) {
	ns := streamstest.RunServer(t)
	addr := ns.Addr().String()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "khook.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("nats:\n  embedded:\n    listen: "+addr+"\n"), 0o600))
	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, execute(context.Background(), []string{"streams", "apply", "--config", cfg}, &stdout, &stderr), stderr.String())
	require.Contains(t, stdout.String(), "stream KHOOK_RAW created")

	t.Setenv("NATS_URL", ns.ClientURL())
	stdout.Reset()
	require.Equal(t, 0, execute(context.Background(), []string{"streams", "apply"}, &stdout, &stderr), stderr.String())
	require.Contains(t, stdout.String(), "stream KHOOK_RAW unchanged")

	stderr.Reset()
	code := execute(context.Background(), []string{"streams", "apply", "--nats-url", "nats://127.0.0.1:1"}, &stdout, &stderr)
	require.Equal(t, 1, code)
	require.Contains(t, stderr.String(), "nats://127.0.0.1:1", "the flag wins over NATS_URL")

	// A stage ignores NATS_URL: the variable belongs to the nats CLI's shell.
	require.Equal(t, map[string]any{}, (&commonFlags{}).overrides())
	require.Equal(t, map[string]any{"nats.url": ns.ClientURL()}, (&commonFlags{}).opsOverrides())
}

// TestKubectlGrammar: the command line reads as kubectl's does. An unknown verb is said
// before an unknown flag, with the nearest verbs and aliases; list and watch are get and
// tail; -n is --namespace; every flag that takes one of a list refuses anything else, with
// the usage exit code; tables have headers (--no-headers drops them); an empty listing says
// so on stderr and prints nothing on stdout.
func TestKubectlGrammar(t *testing.T) {
	run := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := execute(context.Background(), args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	code, _, stderr := run("events", "lst", "--since", "1h", "--nope")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, `unknown command "lst" for "khook events"`)
	require.Contains(t, stderr, "Did you mean this?\n\tget\n\tlist")
	code, _, stderr = run("dlq", "retyr")
	require.Equal(t, 2, code)
	require.Contains(t, stderr, "Did you mean this?\n\tretry")

	for alias, verb := range map[string]string{"list": "get", "watch": "tail"} {
		code, out, _ := run("events", alias, "--help")
		require.Equal(t, 0, code)
		require.Contains(t, out, "khook events "+verb, "events %s is events %s", alias, verb)
	}
	root := newRoot()
	for _, path := range [][]string{{"events", "get"}, {"events", "tail"}, {"replay"}, {"plugins", "disable"}, {"plugins", "enable"}} {
		cmd, _, err := root.Find(path)
		require.NoError(t, err)
		f := cmd.Flags().ShorthandLookup("n")
		require.NotNil(t, f, "%v has -n", path)
		require.Equal(t, "namespace", f.Name)
	}
	for _, bad := range [][]string{
		{"dlq", "list", "--stage", "router"},
		{"dlq", "retry", "--all", "--reason", "typo"},
		{"events", "get", "--severity", "fatal"},
		{"replay", "--through", "agent"},
		{"status", "-o", "xml"},
	} {
		code, _, stderr := run(bad...)
		require.Equal(t, 2, code, "%v: %s", bad, stderr)
		require.Contains(t, stderr, "want ", bad)
	}

	// Shell completion offers a flag's values.
	code, out, _ := run("__complete", "dlq", "list", "--stage", "")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(out, "mapper\ndispatcher\n:4"), out)
	code, out, _ = run("__complete", "events", "get", "-o", "")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(out, "table\njson\nyaml\n"), out)

	ns := streamstest.RunServer(t)
	url := ns.ClientURL()
	code, _, stderr = run("streams", "apply", "--nats-url", url)
	require.Equal(t, 0, code, stderr)
	for args, empty := range map[string]string{"events get": "No events found.", "dlq list": "No dead letters found."} {
		code, out, stderr := run(append(strings.Fields(args), "--nats-url", url)...)
		require.Equal(t, 0, code, stderr)
		require.Empty(t, out, args)
		require.Equal(t, empty+"\n", stderr, args)
	}
	_, js := streamstest.Connect(t, ns)
	msg := nats.NewMsg("khook.dlq.mapper")
	msg.Header.Set(deadletter.HeaderStage, "mapper")
	msg.Header.Set(deadletter.HeaderReason, "unmapped")
	msg.Data = []byte(`{}`)
	_, err := js.PublishMsg(context.Background(), msg)
	require.NoError(t, err)
	code, out, _ = run("dlq", "list", "--nats-url", url)
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(out, "SEQ "), out)
	code, out, _ = run("dlq", "list", "--nats-url", url, "--no-headers")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(out, "1 "), out)

	// Completion offers the dead letters' sequences, with what each is, and none already
	// on the line; the plugins of plugins.yaml; and the hooks in use.
	code, out, _ = run("__complete", "dlq", "show", "--nats-url", url, "")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(out, "1\tmapper unmapped"), out)
	code, out, _ = run("__complete", "dlq", "retry", "--nats-url", url, "1", "")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(out, ":4"), "1 is on the line already: %s", out)
	dir := t.TempDir()
	plugins := filepath.Join(dir, "plugins.yaml")
	require.NoError(t, os.WriteFile(plugins, []byte("plugins:\n  - name: webhook\n    enabled: true\n  - name: kubernetes\n    enabled: false\n"), 0o600))
	code, out, _ = run("__complete", "plugins", "disable", "--file", plugins, "")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(out, "webhook\tenabled\nkubernetes\tdisabled\n"), out)
	hooksFile := filepath.Join(dir, "hooks.yaml")
	require.NoError(t, os.WriteFile(hooksFile, []byte(`- apiVersion: kagent.dev/v1alpha2
  kind: Hook
  metadata: {name: shop-deployments, namespace: shop}
  spec:
    eventConfigurations:
      - eventType: deploy-failed
        agentRef: {name: sre, namespace: kagent}
        prompt: "{{.ResourceName}} failed"
`), 0o600))
	config := filepath.Join(dir, "khook.yaml")
	require.NoError(t, os.WriteFile(config, []byte("kubernetes:\n  hooks: file\nfiles:\n  hooks: "+hooksFile+"\n  plugins: "+plugins+"\n"), 0o600))
	code, out, _ = run("__complete", "dlq", "list", "--config", config, "--hook", "")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(out, "shop/shop-deployments\n"), out)
	code, out, _ = run("__complete", "replay", "--config", config, "--source", "")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(out, "webhook\tenabled\n"), out)
	// Where nothing can be read, a completion completes nothing and says nothing.
	code, out, stderr = run("__complete", "dlq", "show", "--nats-url", "nats://127.0.0.1:1", "")
	require.Equal(t, 0, code)
	require.True(t, strings.HasPrefix(out, ":4"), out)
	require.NotContains(t, stderr, "Error")
}

// TestHooksCheckAndList: hooks check validates a hooks file with the errors khook gives at
// load (the field's line) and, given an event, shows the tasks it would make, grouped or
// not; hooks list shows the hooks in use.
func TestHooksCheckAndList(t *testing.T) {
	dir := t.TempDir()
	hooksFile := filepath.Join(dir, "hooks.yaml")
	require.NoError(t, os.WriteFile(hooksFile, []byte(`- apiVersion: kagent.dev/v1alpha2
  kind: Hook
  metadata: {name: crashes, namespace: shop}
  spec:
    groupBy: [owner]
    eventConfigurations:
      - eventType: pod-restart
        agentRef: {name: sre, namespace: kagent}
        prompt: "{{.Group.Count}} restarts in {{.Group.Labels.owner}}"
      - eventType: oom-kill
        agentRef: {name: sre, namespace: kagent}
        prompt: "OOM in {{.ResourceName}} ({{.PodUID}})"
`), 0o600))
	event := filepath.Join(dir, "event.json")
	require.NoError(t, os.WriteFile(event, []byte(`{"id":"e1","type":"pod-restart","namespace":"shop","resource":{"kind":"Pod","name":"web-0"},
		"reason":"BackOff","data":{"owner":{"kind":"Deployment","name":"web"}}}`), 0o600))
	run := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := execute(context.Background(), args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	code, out, stderr := run("hooks", "check", hooksFile, "--event", event, "-o", "json")
	require.Equal(t, 0, code, stderr)
	require.Contains(t, stderr, "warning: shop/crashes: spec.eventConfigurations[1].prompt: {{.PodUID}} is not a field khook knows")
	var got struct {
		Hooks   int `json:"hooks"`
		Entries []hookRow
		Tasks   []checkedTask
	}
	require.NoError(t, json.Unmarshal([]byte(out), &got), out)
	require.Equal(t, 1, got.Hooks)
	require.Len(t, got.Entries, 2)
	require.Len(t, got.Tasks, 1)
	require.Equal(t, map[string]string{"owner": "Deployment/web"}, got.Tasks[0].Group)
	require.True(t, strings.HasPrefix(got.Tasks[0].Text, "1 restarts in Deployment/web\nGroup: owner=Deployment/web"), got.Tasks[0].Text)

	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte(strings.Replace(mustRead(t, hooksFile), `"OOM in {{.ResourceName}} ({{.PodUID}})"`, `"OOM in {{.ResourceName"`, 1)), 0o600))
	code, _, stderr = run("hooks", "check", bad)
	require.Equal(t, 1, code)
	require.Contains(t, stderr, "shop/crashes (line 12): spec.eventConfigurations[1].prompt: template: prompt:1: unclosed action")

	cfg := filepath.Join(dir, "khook.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("files:\n  hooks: hooks.yaml\nkubernetes:\n  hooks: file\n"), 0o600))
	code, out, stderr = run("hooks", "list", "--config", cfg)
	require.Equal(t, 0, code, stderr)
	require.Contains(t, out, "HOOK          EVENT TYPE   AGENT       TASKS\nshop/crashes  pod-restart  kagent/sre  grouped by [owner], after 30s\n")
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}
