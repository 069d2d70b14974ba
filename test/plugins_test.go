package test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/hook/hooktest"
)

// metric reads one series from a khook process's /metrics, e.g.
// khook_plugin_active{plugin="webhook"}; it returns -1 when the series is absent.
func metric(t *testing.T, port int, series string) float64 {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	require.NoError(t, err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return f
		}
	}
	return -1
}

func listening(port int) bool {
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// TestPluginsFileDisablesAndEnablesWebhook rewrites plugins.yaml under a running khook: the
// webhook's port closes and its active gauge drops to 0, then it serves again; the other
// plugin never stops.
func TestPluginsFileDisablesAndEnablesWebhook(t *testing.T) {
	_, agentURL := startAgent(t)
	f := pipelineFiles{
		dir: t.TempDir(), agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		embeddedListen: "127.0.0.1:" + strconv.Itoa(freePort(t)),
		extraPlugins:   "  - name: heartbeat\n    config:\n      interval: 1h\n      namespace: ops\n",
	}
	f.storeDir = f.dir + "/data"
	p := start(t, "khook run", bins.khook(), "run", "--config", f.write(t))
	waitReady(t, p, f.probes)
	require.Eventually(t, func() bool { return listening(f.webhook) }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, 1.0, metric(t, f.metrics, `khook_plugin_active{plugin="webhook"}`))

	plugins := filepath.Join(f.dir, "plugins.yaml")
	body, err := os.ReadFile(plugins)
	require.NoError(t, err)
	disabled := strings.Replace(string(body), "    enabled: true\n", "    enabled: false\n", 1)
	require.NoError(t, os.WriteFile(plugins, []byte(disabled), 0o600))
	require.Eventually(t, func() bool {
		// A disabled plugin has no active series, so PluginDown does not fire for it.
		return !listening(f.webhook) && metric(t, f.metrics, `khook_plugin_active{plugin="webhook"}`) == -1
	}, 30*time.Second, 20*time.Millisecond, "disabling the webhook closes its port and drops its active gauge")
	require.Equal(t, 1.0, metric(t, f.metrics, `khook_plugin_active{plugin="heartbeat"}`))

	require.NoError(t, os.WriteFile(plugins, body, 0o600))
	require.Eventually(t, func() bool { return listening(f.webhook) }, 30*time.Second, 20*time.Millisecond)
	code, resp := postEvent(t, f.webhook, "cart", "back")
	require.Equal(t, http.StatusAccepted, code, resp)
	require.Equal(t, 1.0, metric(t, f.metrics, `khook_plugin_active{plugin="webhook"}`))
	require.Equal(t, 0.0, metric(t, f.metrics, `khook_plugin_restarts_total{plugin="heartbeat"}`))
	require.Equal(t, 1, strings.Count(p.out.String(), `"plugin": "heartbeat", "version": "1.0.0"}`), "the heartbeat started once and never stopped:\n"+p.out.String())
}

// TestExternalPluginWithOwnCredentials runs the shell example plugin against khook run's
// embedded NATS server with its own user: its events reach an agent, and the same user
// publishing as another plugin is refused by the server.
func TestExternalPluginWithOwnCredentials(t *testing.T) {
	agent, agentURL := startAgent(t)
	dir := t.TempDir()
	pw := filepath.Join(dir, "disk-usage.pw")
	require.NoError(t, os.WriteFile(pw, []byte("d1sk-s3cret\n"), 0o600))
	natsPort := freePort(t)
	f := pipelineFiles{
		dir: dir, agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		embeddedListen: "127.0.0.1:" + strconv.Itoa(natsPort), storeDir: dir + "/data",
		extraNATS:     fmt.Sprintf("    plugin_users:\n      - name: disk-usage\n        password_file: %s\n", pw),
		extraMappings: "  - eventSource: disk-usage\n    eventType: disk-full\n    severity: critical\n",
		extraHooks:    hooktest.Fixture("hooks/disks.yaml"),
	}
	p := start(t, "khook run", bins.khook(), "run", "--config", f.write(t))
	waitReady(t, p, f.probes)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)

	script, err := filepath.Abs("../examples/plugins/disk-usage.sh")
	require.NoError(t, err)
	cmd := exec.Command("sh", script)
	cmd.Env = append(os.Environ(), "KHOOK="+bins.khook(), "THRESHOLD=0", "NAMESPACE=infra", "NATS_URL="+natsURL,
		"PLUGIN_USER=disk-usage", "PLUGIN_PASSWORD_FILE="+pw)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	require.Contains(t, string(out), `"duplicate":false`)

	got := waitReceived(t, agent, 1, 30*time.Second)
	require.Equal(t, "kagent/ops-agent", got[0].Agent)
	require.Contains(t, got[0].Text, "Free space on /")

	// The plugin's user may not publish as another plugin, nor connect without a password.
	deny := exec.Command(bins.khook(), "publish", "--source", "webhook", "--type", "deploy-failed", "--data", `{"namespace":"shop"}`,
		"--nats-url", natsURL, "--user", "disk-usage", "--password-file", pw, "--timeout", "3s")
	out, err = deny.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "permission denied", string(out))
	anon := exec.Command(bins.khook(), "publish", "--source", "disk-usage", "--type", "disk-full", "--data", `{}`, "--nats-url", natsURL, "--timeout", "3s")
	out, err = anon.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, strings.ToLower(string(out)), "authorization", string(out))
}

// TestAlertmanagerFiringThenResolved posts an Alertmanager notification with a firing
// alert, then one with the alert resolved: the hook's agent hears about both.
func TestAlertmanagerFiringThenResolved(t *testing.T) {
	agent, agentURL := startAgent(t)
	amPort := freePort(t)
	f := pipelineFiles{
		dir: t.TempDir(), agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		embeddedListen: "127.0.0.1:" + strconv.Itoa(freePort(t)),
		extraPlugins:   fmt.Sprintf("  - name: alertmanager\n    config:\n      address: 127.0.0.1\n      port: %d\n      token: \"${AM_TOKEN}\"\n", amPort),
		extraMappings: `  - eventSource: alertmanager
    eventType: firing
    internalType: alert-firing
    severity: critical
  - eventSource: alertmanager
    eventType: resolved
    internalType: alert-resolved
    severity: info
`,
		extraHooks: hooktest.Fixture("hooks/alerts.yaml"),
	}
	f.storeDir = f.dir + "/data"
	t.Setenv("AM_TOKEN", "am-t0ken") // the plugin's token is ${AM_TOKEN} in plugins.yaml
	p := start(t, "khook run", bins.khook(), "run", "--config", f.write(t))
	waitReady(t, p, f.probes)

	post := func(status, endsAt string) int {
		body := fmt.Sprintf(`{"version":"4","status":%q,"receiver":"khook","alerts":[{"status":%q,"fingerprint":"4ad6b5f0e7c1d2a3",
			"labels":{"alertname":"KubePodCrashLooping","namespace":"payments","pod":"ledger-0"},
			"annotations":{"summary":"ledger-0 is crash looping"},"startsAt":"2026-11-27T07:10:00Z","endsAt":%q}]}`, status, status, endsAt)
		req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/alerts", amPort), strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer am-t0ken")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusAccepted, post("firing", "0001-01-01T00:00:00Z"))
	got := waitReceived(t, agent, 1, 30*time.Second)
	require.True(t, strings.HasPrefix(got[0].Text, "FIRING KubePodCrashLooping on ledger-0: ledger-0 is crash looping"), got[0].Text)
	require.Equal(t, http.StatusAccepted, post("resolved", "2026-11-27T08:00:00Z"))
	got = waitReceived(t, agent, 2, 30*time.Second)
	require.True(t, strings.HasPrefix(got[1].Text, "RESOLVED KubePodCrashLooping on ledger-0"), got[1].Text)
}

// TestDeploymentGuideLogGreps runs the log greps of the plugin deployment guide against
// khook's own output: its verification step (`grep "Successfully registered.*plugin"`) and
// its troubleshooting steps (`grep "plugin.*not found"`, `grep "failed to initialize
// plugin"`), at start and on a live edit of plugins.yaml.
func TestDeploymentGuideLogGreps(t *testing.T) {
	registered := regexp.MustCompile(`Successfully registered.*plugin`)
	notFound := regexp.MustCompile(`plugin.*not found`)
	failedInit := regexp.MustCompile(`failed to initialize plugin`)

	_, agentURL := startAgent(t)
	f := embeddedPipeline(t, agentURL)
	cfg := f.write(t)
	p := start(t, "khook run", bins.khook(), "run", "--config", cfg)
	waitReady(t, p, f.probes)
	require.Eventually(t, func() bool { return registered.MatchString(p.out.String()) }, 10*time.Second, 10*time.Millisecond,
		"verification: %s", p.out.String())
	// khook run says once that it is ready, where events go in and where tasks go out.
	ready := fmt.Sprintf("khook is ready: POST events to http://127.0.0.1:%d/webhook; agents at %s (kagent.url); Ctrl-C stops it", f.webhook, agentURL)
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), ready) }, 10*time.Second, 10*time.Millisecond,
		"the ready line: %s", p.out.String())
	require.Equal(t, 1, strings.Count(p.out.String(), "khook is ready"))

	// A live edit naming a plugin khook does not have is refused, in the guide's words.
	plugins := filepath.Join(f.dir, "plugins.yaml")
	good, err := os.ReadFile(plugins)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(plugins, append(good, []byte("  - name: slack-notifier\n")...), 0o600))
	require.Eventually(t, func() bool { return notFound.MatchString(p.out.String()) }, 30*time.Second, 20*time.Millisecond,
		"a live edit: %s", p.out.String())

	// At start, both errors stop khook with the guide's words on its output.
	for name, plugin := range map[string]string{
		"unknown plugin": "  - name: slack-notifier\n",
		"bad config":     "  - name: heartbeat\n    config:\n      interval: -1s\n",
	} {
		g := f
		g.dir, g.metrics, g.probes = t.TempDir(), freePort(t), freePort(t)
		g.storeDir = g.dir + "/data"
		g.embeddedListen = "127.0.0.1:" + strconv.Itoa(freePort(t))
		g.extraPlugins = plugin
		code, out := khookCmd(t, "run", "--config", g.write(t))
		require.NotZero(t, code, name)
		want := notFound
		if name == "bad config" {
			want = failedInit
		}
		require.Regexp(t, want, out, name)
	}
}
