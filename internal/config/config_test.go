package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/consumers/dispatch/state"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "khook.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func TestLoadDefaultsAreValid(t *testing.T) {
	cfg, err := Load("", nil, nil)
	require.NoError(t, err)
	// koanf turns a nil list into an empty one; both mean "none".
	nilEmptyLists(reflect.ValueOf(&cfg).Elem())
	require.Equal(t, Default(), cfg)
}

// nilEmptyLists sets every empty slice in v to nil.
func nilEmptyLists(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			nilEmptyLists(v.Field(i))
		}
	case reflect.Slice:
		if v.Len() == 0 && v.CanSet() {
			v.Set(reflect.Zero(v.Type()))
		}
	}
}

func TestLoadPrecedence(t *testing.T) {
	p := writeFile(t, `
nats:
  url: nats://file:4222
kagent:
  url: http://from-file:8083
  user_id: file@example.com
log:
  level: debug
files:
  hooks: hooks/local.yaml
`)
	env := []string{
		"KAGENT_API_URL=http://legacy:8083", // overrides the file
		"KAGENT_API_TIMEOUT=30s",
		"KHOOK_KAGENT_URL=http://khook-env:8083", // overrides the legacy variable
		"LOG_FORMAT=json",
		"PATH=/usr/bin", // not ours: ignored
	}
	cfg, err := Load(p, env, map[string]any{"nats.url": "nats://flag:4222"})
	require.NoError(t, err)
	routes, err := Load(writeFile(t, "dispatcher:\n  routes:\n    - agent: kagent/legacy\n      type: kagent\n      protocol: \"0.3\"\n"), nil, nil)
	require.NoError(t, err)
	require.Equal(t, []Route{{Agent: "kagent/legacy", Type: "kagent", Protocol: "0.3"}}, routes.Dispatcher.Routes)
	require.NoError(t, err)
	require.Equal(t, "nats://flag:4222", cfg.NATS.URL)
	require.Equal(t, "http://khook-env:8083", cfg.Kagent.URL)
	require.Equal(t, "file@example.com", cfg.Kagent.UserID)
	require.Equal(t, 30*time.Second, cfg.Kagent.Timeout)
	require.Equal(t, "debug", cfg.Log.Level)
	require.Equal(t, "json", cfg.Log.Format)
	// Relative file names are relative to khook.yaml; unset ones keep the default name there.
	require.Equal(t, filepath.Join(filepath.Dir(p), "hooks/local.yaml"), cfg.Files.Hooks)
	require.Equal(t, filepath.Join(filepath.Dir(p), "plugins.yaml"), cfg.Files.Plugins)
}

// Upstream khook's older KAGENT_API_BASE_URL sets the agent API when KAGENT_API_URL does not,
// as upstream reads it.
func TestLegacyBaseURL(t *testing.T) {
	p := writeFile(t, "kagent:\n  url: http://from-file:8083\n")
	cfg, err := Load(p, []string{"KAGENT_API_BASE_URL=http://base:8083"}, nil)
	require.NoError(t, err)
	require.Equal(t, "http://base:8083", cfg.Kagent.URL)
	cfg, err = Load(p, []string{"KAGENT_API_BASE_URL=http://base:8083", "KAGENT_API_URL=http://url:8083"}, nil)
	require.NoError(t, err)
	require.Equal(t, "http://url:8083", cfg.Kagent.URL, "KAGENT_API_URL wins, as upstream")
	_, err = Load(p, []string{"KAGENT_API_BASE_URL=ftp://x"}, nil)
	require.ErrorContains(t, err, "kagent.url", "it is validated as kagent.url")
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name  string
		file  string
		env   []string
		wants []string
	}{
		{
			name:  "unknown key names line",
			file:  "nats:\n  url: nats://x:4222\n  urll: nats://y:4222\n",
			wants: []string{"line 3", "unknown key nats.urll"},
		},
		{
			name:  "unknown section",
			file:  "kagnet:\n  url: http://x\n",
			wants: []string{"line 1", "unknown key kagnet"},
		},
		{
			name:  "invalid value names key and line",
			file:  "log:\n  level: loud\n",
			wants: []string{"line 2", "log.level", `"loud"`},
		},
		{
			name:  "bad duration names key and line",
			file:  "streams:\n  raw:\n    max_age: forever\n",
			wants: []string{"line 3", "streams.raw.max_age"},
		},
		{
			name:  "every problem at once",
			file:  "dispatcher:\n  target: pager\n  workers: 0\nkagent:\n  timeout: 10m\n",
			wants: []string{"line 2: dispatcher.target", "line 3: dispatcher.workers", "line 5: kagent.timeout"},
		},
		{
			name:  "section given a scalar",
			file:  "nats: nats://x:4222\n",
			wants: []string{"line 1", "nats"},
		},
		{
			name:  "unknown environment variable",
			env:   []string{"KHOOK_NATS_URLL=nats://x"},
			wants: []string{"KHOOK_NATS_URLL", "no such setting"},
		},
		{
			name:  "invalid environment value",
			env:   []string{"KAGENT_API_URL=ftp://x"},
			wants: []string{"kagent.url", "ftp://x"},
		},
		{
			name:  "not yaml",
			file:  "nats: [\n",
			wants: []string{"khook.yaml", "yaml"},
		},
		{
			name:  "routes are checked item by item",
			file:  "dispatcher:\n  routes:\n    - agent: ops/pager\n      type: http\n      url: ftp://x\n    - agent: kagent\n      type: kagent\n      protocl: \"0.3\"\n",
			wants: []string{"line 8, column 7: unknown key protocl (did you mean protocol?)"},
		},
		{
			name:  "syntax error names its exact line and column",
			file:  "log:\n  level: info\nnats:\n  url: [nats://x:4222\nkagent:\n  user_id: me\n",
			wants: []string{"khook.yaml: line 5, column 1: ", ">  5 | kagent:"},
		},
		{
			name: "wrong types and typos, every problem at once, in plain words",
			file: "dispatcher:\n  workers: many\n  target: pager\nlog:\n  levle: info\napi:\n  enabled: maybe\n",
			wants: []string{
				`line 2, column 12: dispatcher.workers: want a whole number, got "many"`,
				"line 3: dispatcher.target: must be kagent or log",
				"line 5, column 3: unknown key log.levle (did you mean log.level?)",
				`line 7, column 12: api.enabled: want true or false, got "maybe"`,
			},
		},
		{
			name:  "a section given a list",
			file:  "kagent:\n  - url: http://x\n",
			wants: []string{"line 2, column 3: kagent: want a mapping of settings"},
		},
		{
			name:  "environment values of the wrong kind, and a mistyped name",
			env:   []string{"KHOOK_DISPATCHER_WORKERS=lots", "KHOOK_NATS_URLL=nats://x"},
			wants: []string{`environment KHOOK_DISPATCHER_WORKERS: dispatcher.workers: want a whole number, got "lots"`, "KHOOK_NATS_URLL: no such setting (did you mean KHOOK_NATS_URL?)"},
		},
		{
			name:  "route values",
			file:  "dispatcher:\n  routes:\n    - agent: ops/pager\n      type: http\n      url: ftp://x\n    - agent: kagent\n      type: sms\n",
			wants: []string{"dispatcher.routes[0].url", "dispatcher.routes[1].agent", "dispatcher.routes[1].type"},
		},
		{
			name:  "ack wait shorter than the agent timeout",
			file:  "streams:\n  dispatcher:\n    ack_wait: 60s\n",
			wants: []string{"line 3", "streams.dispatcher.ack_wait", "must exceed kagent.timeout"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := ""
			if tt.file != "" {
				path = writeFile(t, tt.file)
			}
			_, err := Load(path, tt.env, nil)
			require.Error(t, err)
			for _, w := range tt.wants {
				require.Contains(t, err.Error(), w)
			}
			// The decoder's own wording never reaches the operator.
			require.NotContains(t, err.Error(), "decoding failed")
			require.NotContains(t, err.Error(), "strconv.")
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), nil, nil)
	require.ErrorContains(t, err, "nope.yaml")
}

// A duration setting takes a duration with its unit. A bare number, which YAML reads as an
// integer and a plain decoder as nanoseconds, is refused with the key, the line and the
// reason: 10 would otherwise turn the suppression window off, and 1 make retries hot.
func TestDurationsNeedUnits(t *testing.T) {
	for _, tc := range []struct{ name, file, key, line string }{
		{"suppression window", "dispatcher:\n  suppression_window: 10\n", "dispatcher.suppression_window", "line 2"},
		{"retry base", "dispatcher:\n  workers: 4\n  retry_base: 1\n", "dispatcher.retry_base", "line 3"},
		{"agent timeout", "kagent:\n  timeout: 60\n", "kagent.timeout", "line 2"},
		{"a float", "streams:\n  raw:\n    max_age: 1.5\n", "streams.raw.max_age", "line 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeFile(t, tc.file), nil, nil)
			require.ErrorContains(t, err, tc.key)
			require.ErrorContains(t, err, tc.line)
			require.ErrorContains(t, err, "bare number")
		})
	}
	_, err := Load("", []string{"KHOOK_DISPATCHER_SUPPRESSION_WINDOW=10"}, nil)
	require.ErrorContains(t, err, `dispatcher.suppression_window: want a duration such as 30s, 10m or 7d, got "10"`)

	cfg, err := Load(writeFile(t, "streams:\n  raw:\n    max_age: 7d\n  dlq:\n    max_age: 1d12h\ndispatcher:\n  suppression_window: 90s\n"), nil, nil)
	require.NoError(t, err)
	require.Equal(t, 7*24*time.Hour, cfg.Streams.Raw.MaxAge)
	require.Equal(t, 36*time.Hour, cfg.Streams.DLQ.MaxAge)
	require.Equal(t, 90*time.Second, cfg.Dispatcher.SuppressionWindow)

	_, err = Load(writeFile(t, "dispatcher:\n  suppression_window: 500ms\n"), nil, nil)
	require.ErrorContains(t, err, "at least 1s", "JetStream refuses per-key TTLs under a second")
}

// The kubelet gives a pod variables for every Service in its namespace; with a release named
// khook they start with KHOOK_. They are ignored, while a mistyped setting is still an error.
func TestServiceLinkVariablesAreIgnored(t *testing.T) {
	links := []string{
		"KHOOK_WEBHOOK_SERVICE_HOST=10.0.0.7", "KHOOK_WEBHOOK_SERVICE_PORT=8090", "KHOOK_WEBHOOK_SERVICE_PORT_WEBHOOK=8090",
		"KHOOK_WEBHOOK_PORT=tcp://10.0.0.7:8090", "KHOOK_WEBHOOK_PORT_8090_TCP=tcp://10.0.0.7:8090",
		"KHOOK_WEBHOOK_PORT_8090_TCP_PROTO=tcp", "KHOOK_WEBHOOK_PORT_8090_TCP_PORT=8090", "KHOOK_WEBHOOK_PORT_8090_TCP_ADDR=10.0.0.7",
		"KHOOK_DISPATCHER_METRICS_SERVICE_HOST=10.0.0.8",
	}
	cfg, err := Load("", append(links, "KHOOK_DISPATCHER_WORKERS=3"), nil)
	require.NoError(t, err)
	require.Equal(t, 3, cfg.Dispatcher.Workers)
	require.Len(t, cfg.IgnoredEnv, len(links))
	_, err = Load("", append(links, "KHOOK_DISPATCHR_WORKERS=3"), nil)
	require.ErrorContains(t, err, "environment KHOOK_DISPATCHR_WORKERS: no such setting")
}

// The dispatcher's delivery settings are the dispatcher's own struct, embedded under
// dispatcher: its keys load from the file and the environment as every other key does.
func TestDispatcherSettingsReachTheDispatcher(t *testing.T) {
	path := writeFile(t, "dispatcher:\n  workers: 4\n  per_target_concurrency: 2\n  breaker:\n    failures: 3\n    cooldown: 1m\n")
	cfg, err := Load(path, []string{"KHOOK_DISPATCHER_BREAKER_COOLDOWN=2m", "KHOOK_DISPATCHER_DRAIN_TIMEOUT=40s"}, nil)
	require.NoError(t, err)
	d := cfg.Dispatcher.Config
	require.Equal(t, 4, d.Workers)
	require.Equal(t, 2, d.Guard.Concurrency)
	require.Equal(t, 3, d.Guard.Breaker.Failures)
	require.Equal(t, 2*time.Minute, d.Guard.Breaker.Cooldown)
	require.Equal(t, 40*time.Second, d.DrainTimeout)
	require.Equal(t, 10*time.Minute, d.SuppressionWindow, "unset keys keep the dispatcher's defaults")

	_, err = Load(writeFile(t, "dispatcher:\n  active_events: true\n"), nil, nil)
	require.ErrorContains(t, err, "unknown key dispatcher.active_events", "what the pipeline decides is not a setting")
}

func TestBudgets(t *testing.T) {
	cfg, err := Load(writeFile(t, "dispatcher:\n  budgets:\n    - agent: kagent/sre\n      max_concurrent_tasks: 2\n      max_tasks_per_hour: 30\n    - agent: kagent/*\n      max_tasks_per_hour: 10\n"), nil, nil)
	require.NoError(t, err)
	require.Equal(t, []state.Budget{{Agent: "kagent/sre", MaxConcurrentTasks: 2, MaxTasksPerHour: 30}, {Agent: "kagent/*", MaxTasksPerHour: 10}},
		cfg.Dispatcher.Budgets)
	for body, want := range map[string]string{
		"    - agent: sre\n      max_tasks_per_hour: 1\n":                                                  "dispatcher.budgets[0].agent: want namespace/name or namespace/*, got \"sre\"",
		"    - agent: kagent/sre\n":                                                                        "dispatcher.budgets[0]: set max_concurrent_tasks, max_tasks_per_hour or both",
		"    - agent: kagent/sre\n      max_tasks_per_hour: -1\n":                                          "dispatcher.budgets[0]: set max_concurrent_tasks",
		"    - {agent: kagent/a, max_tasks_per_hour: 1}\n    - {agent: kagent/a, max_tasks_per_hour: 2}\n": "dispatcher.budgets[1].agent: kagent/a has a budget already",
		"    - {agent: kagent/a, max_tasks_per_hour: 10001}\n":                                             "dispatcher.budgets[0].max_tasks_per_hour: at most 10000, got 10001",
	} {
		_, err := Load(writeFile(t, "dispatcher:\n  budgets:\n"+body), nil, nil)
		require.ErrorContains(t, err, want, body)
	}
	// A list item's key is found by its index, on its own line.
	_, err = Load(writeFile(t, "dispatcher:\n  budgets:\n    - agent: kagent/a\n      max_tasks_per_hour: 20000\n"), nil, nil)
	require.ErrorContains(t, err, "line 4: dispatcher.budgets[0].max_tasks_per_hour: at most 10000")
	// Settings that cannot work together are refused: a delivery record that expires
	// before its task can be tried again.
	_, err = Load(writeFile(t, "streams:\n  dispatch_ttl: 1m\ndispatcher:\n  suppression_window: 30s\n"), nil, nil)
	require.ErrorContains(t, err, "line 2: streams.dispatch_ttl: must be at least twice streams.dispatcher.ack_wait (6m0s), got 1m0s")
}

// A problem points at where its value came from: an environment variable that set it, not
// the file's line for the same key; and problems come in the order of the file's lines.
func TestProblemsPointAtTheirSourceInLineOrder(t *testing.T) {
	path := writeFile(t, "streams:\n  dispatch_ttl: 1m\nlog:\n  level: nope\ndispatcher:\n  workers: 4\n  max_attempts: 0\n")
	_, err := Load(path, []string{"KHOOK_DISPATCHER_WORKERS=5000"}, nil)
	require.Error(t, err)
	lines := strings.Split(err.Error(), "\n")
	require.Equal(t, []string{
		path + " line 2: streams.dispatch_ttl: must be at least twice streams.dispatcher.ack_wait (6m0s), got 1m0s",
		path + " line 4: log.level: must be debug, info, warn or error, got \"nope\"",
		path + " line 5: dispatcher.suppression_window: must be at least 1s and at most streams.dispatch_ttl (1m0s), got 10m0s",
		path + " line 7: dispatcher.max_attempts: must be at least 1, got 0",
		"environment KHOOK_DISPATCHER_WORKERS: dispatcher.workers: must be 1 to 1024, got 5000",
	}, lines)
}

// The many-cluster settings: a bad cluster name, a cluster listed twice and a hub leaf
// port without a password are errors at their line; the clusters list becomes the raw
// stream's edges; khook edge needs its cluster and hub, and takes no credentials in a URL.
func TestClusterSettings(t *testing.T) {
	_, err := Load(writeFile(t, "cluster: EU_1\nclusters:\n  - name: eu-1\n  - name: eu-1\nnats:\n  embedded:\n    leafnodes:\n      listen: 0.0.0.0:7422\n"), nil, nil)
	require.Error(t, err)
	for _, want := range []string{"line 1: cluster:", "clusters[1].name: \"eu-1\" is listed twice",
		"nats.embedded.leafnodes.username: required", "nats.embedded.leafnodes.password_file: required"} {
		require.ErrorContains(t, err, want)
	}

	cfg, err := Load(writeFile(t, "clusters:\n  - name: eu-1\n  - name: us-1\n"), nil, nil)
	require.NoError(t, err)
	require.Equal(t, []string{"eu-1", "us-1"}, cfg.Streams.Edges)
	require.ErrorContains(t, cfg.ValidateEdge(), "cluster: required for khook edge")
	require.ErrorContains(t, cfg.ValidateEdge(), "edge.hub.url: required")

	cfg, err = Load(writeFile(t, "cluster: eu-1\nedge:\n  hub:\n    url: nats-leaf://edge:pw@hub:7422\n    username: edge\n"), nil, nil)
	require.NoError(t, err)
	err = cfg.ValidateEdge()
	require.ErrorContains(t, err, "carries credentials")
	require.ErrorContains(t, err, "edge.hub.password_file: required with edge.hub.username")

	cfg, err = Load(writeFile(t, "cluster: eu-1\nedge:\n  hub:\n    url: nats-leaf://hub:7422\n"), []string{"KHOOK_EDGE_BUFFER_MAX_BYTES=2097152"}, nil)
	require.NoError(t, err)
	require.NoError(t, cfg.ValidateEdge())
	require.Equal(t, int64(2097152), cfg.Edge.Buffer.MaxBytes)
	_, err = Load(writeFile(t, "edge:\n  buffer:\n    max_bytes: 10\n"), nil, nil)
	require.ErrorContains(t, err, "edge.buffer.max_bytes: must be at least 1 MiB")

	// Mistakes that would load and then never work.
	_, err = Load(writeFile(t, "cluster: eu-1\nclusters:\n  - name: eu-1\nnats:\n  url: nats://n:4222\n  embedded:\n    domain: my.hub\n    leafnodes:\n      listen: 0.0.0.0:7422\n"), nil, nil)
	require.Error(t, err)
	for _, want := range []string{"cluster: \"eu-1\" is also listed in clusters", "nats.embedded.domain:",
		"nats.embedded.leafnodes: set, but nats.url is too"} {
		require.ErrorContains(t, err, want)
	}
	_, err = Load(writeFile(t, "clusters:\n  - name: eu-1\nnats:\n  embedded:\n    domain: eu-1\n    leafnodes:\n      username: edge\n"), nil, nil)
	require.ErrorContains(t, err, "the hub's domain must differ from every edge's")
	require.ErrorContains(t, err, "nats.embedded.leafnodes.listen: required")

	cfg, err = Load(writeFile(t, "cluster: eu-1\nedge:\n  hub:\n    url: http://edge:s3cr3t-pw@hub:7422\n    password_file: a\n    credentials_file: b\n    username: edge\n"), nil, nil)
	require.NoError(t, err)
	err = cfg.ValidateEdge()
	require.ErrorContains(t, err, "set one")
	require.ErrorContains(t, err, "carries credentials")
	require.NotContains(t, err.Error(), "s3cr3t-pw", "a password is never echoed")
	cfg.Edge.Hub.URL = "http://hub:7422"
	require.ErrorContains(t, cfg.ValidateEdge(), "want a nats-leaf://")
}
