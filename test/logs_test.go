package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLogsAreJSONAndNeverContainSecrets runs khook run at debug level with LOG_FORMAT=json,
// a webhook token from the environment, an agent token file, and requests carrying right and
// wrong tokens: every output line is one JSON object, no credential appears anywhere, and
// the lines about the event name it and its trace.
func TestLogsAreJSONAndNeverContainSecrets(t *testing.T) {
	const (
		webhookToken = "s3cr3t-webhook-token-5d1f"
		wrongToken   = "s3cr3t-wrong-token-99ab"
		agentToken   = "s3cr3t-agent-token-7c2e"
	)
	agent, agentURL := startAgent(t)
	f := pipelineFiles{
		dir: t.TempDir(), agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		embeddedListen: "127.0.0.1:" + strconv.Itoa(freePort(t)),
	}
	f.storeDir = f.dir + "/data"
	cfg := f.write(t)
	tokenFile := filepath.Join(f.dir, "agent-token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(agentToken+"\n"), 0o600))
	edit := func(name, old, new string) {
		path := filepath.Join(f.dir, name)
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Contains(t, string(b), old)
		require.NoError(t, os.WriteFile(path, []byte(strings.Replace(string(b), old, new, 1)), 0o600))
	}
	edit("khook.yaml", "kagent:\n", "kagent:\n  token_file: "+tokenFile+"\n")
	edit("plugins.yaml", "      path: /webhook\n", "      path: /webhook\n      token: \"${WEBHOOK_TOKEN}\"\n      enableDebug: true\n")

	p := startEnv(t, "khook run", []string{"LOG_FORMAT=json", "LOG_LEVEL=debug", "WEBHOOK_TOKEN=" + webhookToken},
		bins.khook(), "run", "--config", cfg)
	waitReady(t, p, f.probes)

	post := func(auth string) int {
		req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/webhook", f.webhook),
			strings.NewReader(`{"type":"deploy-failed","namespace":"shop","resourceName":"cart","message":"rollout stuck"}`))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("traceparent", "00-"+callerTraceID+"-"+callerSpanID+"-01")
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusUnauthorized, post(wrongToken))
	require.Equal(t, http.StatusUnauthorized, post(""))
	require.Equal(t, http.StatusAccepted, post(webhookToken))
	waitReceived(t, agent, 1, 10*time.Second)
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), `"msg":"delivered"`) }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, p.stop(t))

	out := p.out.String()
	for _, secret := range []string{webhookToken, wrongToken, agentToken, "s3cr3t"} {
		require.NotContains(t, out, secret, "a credential in the logs")
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Greater(t, len(lines), 10)
	sawRefusal, sawDelivery := false, false
	for _, line := range lines {
		var obj map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &obj), "not one JSON object: %q", line)
		require.NotEmpty(t, obj["msg"], line)
		require.NotEmpty(t, obj["level"], line)
		if obj["msg"] == "request not authenticated" {
			sawRefusal = true
		}
		if obj["event_id"] != nil {
			require.Equal(t, callerTraceID, obj["trace_id"], "a line about an event carries its trace: %s", line)
		}
		if obj["msg"] == "delivered" {
			sawDelivery = true
		}
	}
	require.True(t, sawRefusal, "the refused requests are logged (without their tokens)")
	require.True(t, sawDelivery)
}
