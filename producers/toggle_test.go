package producers

import (
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
	require.Contains(t, string(out), "# The guide's plugin-config.")
	require.Contains(t, string(out), "namespace: production # watched namespace")
	require.Contains(t, string(out), "${WEBHOOK_TOKEN}", "references stay for the producer to resolve")

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

	_, err = SetEnabled([]byte(togglePlugins), "webhok", false)
	require.ErrorContains(t, err, `no plugin "webhok" in plugins.yaml (it has: heartbeat, kubernetes, webhook)`)
	_, err = SetEnabled([]byte("plugins: {}\n"), "webhook", false)
	require.ErrorContains(t, err, "no plugins list")
	_, err = SetEnabled([]byte("plugins: [\n"), "webhook", false)
	require.Error(t, err)
}
