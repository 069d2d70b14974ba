package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestExecute(t *testing.T) {
	dir := t.TempDir()
	broken := filepath.Join(dir, "khook.yaml")
	require.NoError(t, os.WriteFile(broken, []byte("log:\n  level: loud\nkagnet:\n  url: x\n"), 0o600))
	badHooks := filepath.Join(dir, "bad-hooks.yaml")
	require.NoError(t, os.WriteFile(badHooks, []byte("files:\n  hooks: hooks.yaml\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "hooks.yaml"), []byte("- apiVersion: kagent.dev/v1alpha2\n  kind: Hook\n  metadata: {name: h}\n  spec: {eventConfigurations: [{eventType: X, agentRef: {name: a}, prompt: p}]}\n"), 0o600))

	// A webhook body as senders post it: no CloudEvents envelope.
	plainBody := filepath.Join(dir, "plain.json")
	require.NoError(t, os.WriteFile(plainBody, []byte(`{"type":"deploy-failed","namespace":"shop","resourceName":"cart","message":"rollout stuck"}`), 0o600))
	untyped := filepath.Join(dir, "untyped.json")
	require.NoError(t, os.WriteFile(untyped, []byte(`{"namespace":"shop","resourceName":"cart"}`), 0o600))

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr []string
	}{
		{"no command prints help", nil, 0, "Available Commands:", nil},
		{"unknown command", []string{"frobnicate"}, 2, "", []string{`unknown command "frobnicate"`, "Run 'khook --help' for usage."}},
		{"a near miss is suggested", []string{"stauts"}, 2, "", []string{"Did you mean this?", "status"}},
		{"version", []string{"version"}, 0, "khook dev", nil},
		{"--version", []string{"--version"}, 0, "khook dev (go", nil},
		{"broken config names keys and lines", []string{"run", "--config", broken}, 1, "",
			[]string{"khook run:", "line 3, column 1: unknown key kagnet (did you mean kagent?)", "line 2: log.level"}},
		{"invalid hook fails before connecting", []string{"dispatcher", "--config", badHooks}, 1, "",
			[]string{"hooks.yaml", "eventType", `"X"`}},
		{"streams alone prints its verbs", []string{"streams"}, 0, "apply", nil},
		{"unknown verb", []string{"streams", "destroy"}, 2, "", []string{`khook streams: unknown command "destroy" for "khook streams"`}},
		{"bad flag", []string{"mapper", "--no-such-flag"}, 2, "", []string{"khook mapper: unknown flag: --no-such-flag"}},
		{"missing argument", []string{"probe"}, 2, "", []string{"khook probe: accepts 1 arg(s), received 0"}},
		{"required flag", []string{"publish", "--data", "{}"}, 2, "", []string{"khook publish: --source is required"}},
		{"wrong output format fails before connecting", []string{"status", "-o", "xml", "--nats-url", "nats://127.0.0.1:1"}, 2, "",
			[]string{`invalid argument "xml" for "-o, --output" flag: want table, json, yaml`}},
		{"bad time", []string{"events", "get", "--since", "yesterday", "--nats-url", "nats://127.0.0.1:1"}, 2, "", []string{"--since: want an RFC 3339 time"}},
		{"purge needs a selection", []string{"dlq", "purge", "--nats-url", "nats://127.0.0.1:1"}, 2, "", []string{"name dead letters by sequence"}},
		{"mappings check ok", []string{"mappings", "check", "../../mapping/testdata/event-mappings.yaml"}, 0,
			"ok, 8 rules", nil},
		{"mappings check maps an event", []string{"mappings", "check", "../../mapping/testdata/event-mappings.yaml",
			"--event", "../../mapping/testdata/alertmanager-firing.in.json"}, 0, `"type": "prometheus-alert"`, nil},
		{"mappings check maps a plain webhook body", []string{"mappings", "check", "../../mapping/testdata/event-mappings.yaml",
			"--event", plainBody, "-o", "json"}, 0, `"rule": "../../mapping/testdata/event-mappings.yaml line 4"`, nil},
		{"a plain body needs a type", []string{"mappings", "check", "../../mapping/testdata/event-mappings.yaml",
			"--event", untyped}, 1, "", []string{`no event type: give --type or a "type" field`}},
		{"--type gives a plain body its type", []string{"mappings", "check", "../../mapping/testdata/event-mappings.yaml",
			"--event", untyped, "--type", "deploy-failed", "-o", "yaml"}, 0, "severity: error", nil},
		{"flags after the file", []string{"mappings", "check", "--event", "../../mapping/testdata/alertmanager-firing.in.json",
			"../../mapping/testdata/event-mappings.yaml", "-o", "yaml"}, 0, "type: prometheus-alert", nil},
		{"mappings check rejects", []string{"mappings", "check", broken}, 1, "", []string{"khook mappings check:", "event mappings", "line 3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := execute(context.Background(), tt.args, &stdout, &stderr)
			require.Equal(t, tt.code, code, stderr.String())
			require.Contains(t, stdout.String(), tt.stdout)
			for _, w := range tt.stderr {
				require.Contains(t, stderr.String(), w)
			}
			if code != 0 {
				require.Empty(t, stdout.String(), "errors go to stderr only")
			}
		})
	}
}

// TestRunWithoutConfig is a first run with no --config in a directory with no files: the
// error says which files the defaults read, where, and how to pass a configuration.
func TestRunWithoutConfig(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	var stdout, stderr bytes.Buffer
	require.Equal(t, 1, execute(context.Background(), []string{"run"}, &stdout, &stderr))
	require.Empty(t, stdout.String())
	for _, want := range []string{"khook run: plugins: open plugins.yaml", "no --config was given", "working directory " + dir, "--config examples/local/khook.yaml"} {
		require.Contains(t, stderr.String(), want)
	}

	// With --config, a missing file is the file's problem alone.
	stderr.Reset()
	cfg := filepath.Join(dir, "khook.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("files:\n  plugins: missing.yaml\n"), 0o600))
	require.Equal(t, 1, execute(context.Background(), []string{"producer", "--config", cfg}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "missing.yaml: no such file or directory")
	require.NotContains(t, stderr.String(), "no --config")
}

func TestProbe(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"ready":true}`)) }))
	defer ok.Close()
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"ready":false}`))
	}))
	defer down.Close()
	var stdout, stderr bytes.Buffer
	require.Equal(t, 0, execute(context.Background(), []string{"probe", ok.URL}, &stdout, &stderr))
	require.Contains(t, stdout.String(), `"ready":true`)
	require.Equal(t, 1, execute(context.Background(), []string{"probe", down.URL}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "503")
	require.Equal(t, 2, execute(context.Background(), []string{"probe"}, &stdout, &stderr))
}
