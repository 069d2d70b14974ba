package producers

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type testConfig struct {
	Port    int           `yaml:"port"`
	Path    string        `yaml:"path"`
	Timeout time.Duration `yaml:"timeout"`
	APIKey  string        `yaml:"apiKey"`
}

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func TestParseSpecsGuideFormat(t *testing.T) {
	specs, err := ParseSpecs([]byte(`
plugins:
  - name: webhook
    enabled: "true"
    config:
      port: "8090"
      path: "/webhook"
      timeout: "30s"
      apiKey: "${API_KEY}"
  - name: other
    enabled: false
`), env(map[string]string{"API_KEY": "s3cret"}))
	require.NoError(t, err)
	require.Len(t, specs, 2)
	require.True(t, specs[0].IsEnabled())
	require.False(t, specs[1].IsEnabled())

	var cfg testConfig
	require.NoError(t, specs[0].DecodeConfig(&cfg))
	require.Equal(t, testConfig{Port: 8090, Path: "/webhook", Timeout: 30 * time.Second, APIKey: "s3cret"}, cfg)
}

func TestParseSpecsErrors(t *testing.T) {
	tests := []struct {
		name, in string
		wants    []string
	}{
		{"missing env var", "plugins:\n  - name: w\n    config:\n      apiKey: \"${NOPE}\"\n", []string{"plugins.w.config", "line 4", "NOPE is not set"}},
		{"unknown entry key", "plugins:\n  - name: w\n    enabld: true\n", []string{"line 3", `unknown key "enabld"`}},
		{"bad enabled", "plugins:\n  - name: w\n    enabled: sometimes\n", []string{"line 3", "enabled"}},
		{"no name", "plugins:\n  - enabled: true\n", []string{"plugins[0]: name: required"}},
		{"twice", "plugins:\n  - name: w\n  - name: w\n", []string{`plugin "w" is listed twice`}},
		{"empty secret", "plugins:\n  - name: w\n    config:\n      token: \"${EMPTY}\"\n", []string{"line 4", "${EMPTY} is set but empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSpecs([]byte(tt.in), env(map[string]string{"EMPTY": ""}))
			require.Error(t, err)
			for _, w := range tt.wants {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestDecodeConfigRejectsUnknownKeys(t *testing.T) {
	specs, err := ParseSpecs([]byte("plugins:\n  - name: w\n    config:\n      port: 1\n      prot: 2\n"), env(nil))
	require.NoError(t, err)
	var cfg testConfig
	err = specs[0].DecodeConfig(&cfg)
	require.ErrorContains(t, err, "plugins.w.config")
	require.ErrorContains(t, err, `line 5, column 7: unknown key "prot" (did you mean "port"?)`)
}

// A duration in a plugin's config takes its unit; a bare number would be nanoseconds.
func TestDecodeConfigRefusesBareDurations(t *testing.T) {
	specs, err := ParseSpecs([]byte("plugins:\n  - name: w\n    config:\n      timeout: 30\n"), env(nil))
	require.NoError(t, err)
	var cfg testConfig
	require.ErrorContains(t, specs[0].DecodeConfig(&cfg), "bare number 30")
	specs, err = ParseSpecs([]byte("plugins:\n  - name: w\n    config:\n      timeout: 30s\n"), env(nil))
	require.NoError(t, err)
	require.NoError(t, specs[0].DecodeConfig(&cfg))
	require.Equal(t, 30*time.Second, cfg.Timeout)
}
