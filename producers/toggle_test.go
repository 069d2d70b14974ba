package producers

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const togglePlugins = `# The guide's plugin-config.
plugins:
  - name: kubernetes
    enabled: true
    config:
      namespace: production # watched namespace
  - name: webhook
    enabled: 'true'
    config:
      port: 8090
      token: ${WEBHOOK_TOKEN}
  - name: heartbeat
    config: {interval: 1m}
`

func TestSetEnabledDisablesOnePlugin(t *testing.T) {
	out, err := SetEnabled([]byte(togglePlugins), "webhook", false)
	require.NoError(t, err)
	specs, err := ParseSpecs(out, func(string) (string, bool) { return "t", true })
	require.NoError(t, err)
	enabled := map[string]bool{}
	for _, s := range specs {
		enabled[s.Name] = s.IsEnabled()
	}
	require.Equal(t, map[string]bool{"kubernetes": true, "webhook": false, "heartbeat": true}, enabled)
	// Nothing but the one value changes: not quoting, comments, or references, which stay
	// for the producer to resolve.
	require.Equal(t, strings.Replace(togglePlugins, "enabled: 'true'", "enabled: false", 1), string(out))

	// An entry without `enabled` gets one; enabling again is the reverse.
	out, err = SetEnabled(out, "heartbeat", false)
	require.NoError(t, err)
	out, err = SetEnabled(out, "webhook", true)
	require.NoError(t, err)
	specs, err = ParseSpecs(out, func(string) (string, bool) { return "t", true })
	require.NoError(t, err)
	for _, s := range specs {
		require.Equal(t, s.Name != "heartbeat", s.IsEnabled(), s.Name)
	}
	again, err := SetEnabled(out, "webhook", true)
	require.NoError(t, err)
	require.Equal(t, string(out), string(again), "idempotent")

	// A flow-style entry gets the key inside its braces.
	flow, err := SetEnabled([]byte("plugins:\n  - {name: a, config: {x: 1}}\n  - name: b\n"), "a", false)
	require.NoError(t, err)
	require.Equal(t, "plugins:\n  - {name: a, config: {x: 1}, enabled: false}\n  - name: b\n", string(flow))

	// Quoted keys and names are the same keys and names.
	quoted, err := SetEnabled([]byte("plugins:\n  - \"name\": 'a'\n    \"enabled\": true\n"), "a", false)
	require.NoError(t, err)
	require.Equal(t, "plugins:\n  - \"name\": 'a'\n    \"enabled\": false\n", string(quoted))

	_, err = SetEnabled([]byte(togglePlugins), "webhok", false)
	require.ErrorContains(t, err, `no plugin "webhok" in plugins.yaml (it has: heartbeat, kubernetes, webhook)`)
	_, err = SetEnabled([]byte("plugins: {}\n"), "webhook", false)
	require.ErrorContains(t, err, "no plugins list")
	_, err = SetEnabled([]byte("plugins: [\n"), "webhook", false)
	require.Error(t, err)
}
