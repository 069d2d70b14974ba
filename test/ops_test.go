package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/hook/hooktest"
	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/streams"
)

// khookCmd runs one khook command to completion and returns its exit code and output.
func khookCmd(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(bins.khook(), args...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	require.NoError(t, err, string(out))
	return 0, string(out)
}

var rolloutHook = hooktest.Fixture("hooks/rollouts.yaml")

// TestReplayThroughMapperAfterMappingChange: events are delivered, the mapping changes, a
// dry run shows the new outcome and calls nothing, and the replay delivers each event once
// more under the new mapping.
func TestReplayThroughMapperAfterMappingChange(t *testing.T) {
	agent, agentURL := startAgent(t)
	natsPort := freePort(t)
	f := pipelineFiles{
		dir: t.TempDir(), agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		embeddedListen: "127.0.0.1:" + strconv.Itoa(natsPort), extraHooks: rolloutHook,
	}
	f.storeDir = f.dir + "/data"
	cfg := f.write(t)
	p := start(t, "khook run", bins.khook(), "run", "--config", cfg)
	waitReady(t, p, f.probes)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)

	for i := range 3 {
		code, body := postEvent(t, f.webhook, fmt.Sprintf("cart-%d", i), "rollout stuck")
		require.Equal(t, http.StatusAccepted, code, body)
	}
	waitReceived(t, agent, 3, 10*time.Second)

	// Today's mapping sends deploy-failed to the rollouts hook instead.
	mappings := filepath.Join(f.dir, "event-mappings.yaml")
	require.NoError(t, os.WriteFile(mappings, []byte("mappings:\n  - eventSource: webhook\n    eventType: deploy-failed\n    internalType: rollout-failed\n    severity: error\n"), 0o600))
	require.Eventually(t, func() bool {
		return metric(t, f.metrics, `khook_mapper_rules_reloads_total{result="success"}`) == 1
	}, 10*time.Second, 10*time.Millisecond, "the running mapper took the new mapping")

	code, out := khookCmd(t, "replay", "--config", cfg, "--nats-url", natsURL, "--through", "mapper", "--since", "1h", "--dry-run")
	require.Equal(t, 0, code, out)
	require.Equal(t, 3, strings.Count(out, `rollout-failed in "shop" (error): hook shop/rollouts -> agent kagent/sre-agent`), out)
	require.Contains(t, out, "checked 3 events")

	code, out = khookCmd(t, "replay", "--config", cfg, "--nats-url", natsURL, "--through", "mapper", "--since", "1h")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "sent 3 events, skipped 0; complete")
	waitReceived(t, agent, 6, 10*time.Second)
	js := connectJS(t, natsURL)
	waitSettled(t, js, "KHOOK_EVENTS", "khook-dispatcher", 6)
	got := agent.Received()
	require.Len(t, got, 6, "the dry run called nothing; the replay called once per event")
	remapped := map[string]bool{}
	for _, r := range got[3:] {
		require.True(t, strings.HasPrefix(r.Text, "Re-mapped rollout of cart-"), r.Text)
		remapped[strings.SplitN(r.Text, "\n", 2)[0]] = true
	}
	require.Len(t, remapped, 3)

	// The replayed events are marked as such, in the events stream and in the API's view.
	code, out = khookCmd(t, "events", "get", "--config", cfg, "--nats-url", natsURL, "--type", "rollout-failed", "-o", "json")
	require.Equal(t, 0, code, out)
	var recs []ops.EventRecord
	require.NoError(t, json.Unmarshal([]byte(out), &recs), out)
	require.Len(t, recs, 3)
	for _, r := range recs {
		require.NotEmpty(t, r.ReplayID)
		require.Contains(t, r.ID, "/replay-"+r.ReplayID)
	}
	code, out = khookCmd(t, "status", "--config", cfg, "--nats-url", natsURL)
	require.Equal(t, 0, code, out)
	require.Regexp(t, `KHOOK_RAW\s+6\s`, out, "3 originals and 3 replayed copies")
	require.Regexp(t, `shop/rollouts\s+rollout-failed\s+kagent/sre-agent`, out)
}

// TestReplayInterruptAndResumeCLI interrupts `khook replay` with SIGINT half way through
// 10,000 events and resumes it by id: every event is replayed exactly once.
func TestReplayInterruptAndResumeCLI(t *testing.T) {
	const total = 10000
	dir := t.TempDir()
	_, natsURL := startNATS(t, dir+"/nats", freePort(t))
	base := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: "http://127.0.0.1:1", webhook: freePort(t)}
	cfg := base.write(t)
	runOnce(t, "streams", "apply", "--config", cfg)
	js := connectJS(t, natsURL)
	publishBacklog(t, js, total)

	// --namespace makes the resumed replay map each raw event again to filter it.
	p := start(t, "khook replay", bins.khook(), "replay", "--config", cfg, "--through", "mapper", "--namespace", "shop", "--rate", "4000")
	idRe := regexp.MustCompile(`replay (\d{8}-\d{6}-[0-9a-f]{6}):`)
	var id string
	require.Eventually(t, func() bool {
		m := idRe.FindStringSubmatch(p.out.String())
		if m != nil {
			id = m[1]
		}
		return id != ""
	}, 20*time.Second, 10*time.Millisecond)
	kv, err := js.KeyValue(context.Background(), ops.ReplayBucket)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		e, err := kv.Get(context.Background(), id)
		if err != nil {
			return false
		}
		var r ops.Replay
		return json.Unmarshal(e.Value(), &r) == nil && r.Sent >= total/2
	}, 30*time.Second, 10*time.Millisecond)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGINT))
	<-p.done
	require.Contains(t, p.out.String(), "interrupted; resume with: khook replay --resume "+id)
	var ee *exec.ExitError
	require.ErrorAs(t, p.err, &ee)
	require.Equal(t, 130, ee.ExitCode(), "an interrupted replay exits 130, as a command stopped by Ctrl-C")
	sentBefore := countCopies(t, js, id)
	require.Less(t, len(sentBefore), total)
	t.Logf("interrupted after %d of %d", len(sentBefore), total)

	// No stage runs here: after its bounded wait the summary counts every copy as not
	// handled yet, rather than claiming anything was delivered.
	code, out := khookCmd(t, "replay", "--config", cfg, "--resume", id, "--wait", "1s")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "complete")
	require.Contains(t, out, "tasks: 0 delivered, 0 suppressed")
	require.Contains(t, out, fmt.Sprintf("; %d not handled yet", total))
	copies := countCopies(t, js, id)
	require.Len(t, copies, total)
	for seq, n := range copies {
		require.Equal(t, 1, n, "original %s replayed %d times", seq, n)
	}
	code, out = khookCmd(t, "replay", "--config", cfg, "--resume", id)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "already complete")
}

func countCopies(t *testing.T, js jetstream.JetStream, replayID string) map[string]int {
	t.Helper()
	copies := map[string]int{}
	_, err := ops.Scan(context.Background(), js, ops.Range{Stream: "KHOOK_RAW", HeadersOnly: true}, func(m ops.Msg) error {
		if m.Header.Get(streams.HeaderReplayID) == replayID {
			copies[m.Header.Get(streams.HeaderOriginalSeq)]++
		}
		return nil
	})
	require.NoError(t, err)
	return copies
}

// TestDeadLetterRetryAfterAgentRecovers: an agent refuses a task, the event is
// dead-lettered, the agent is fixed, and `khook dlq retry` delivers it and empties the DLQ.
func TestDeadLetterRetryAfterAgentRecovers(t *testing.T) {
	agent, agentURL := startAgent(t)
	var broken atomic.Bool
	broken.Store(true)
	agent.OnMessage = func(demoagent.Received) error {
		if broken.Load() {
			return errors.New("agent kagent/sre-agent is not deployed")
		}
		return nil
	}
	natsPort := freePort(t)
	f := pipelineFiles{
		dir: t.TempDir(), agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		embeddedListen: "127.0.0.1:" + strconv.Itoa(natsPort),
	}
	f.storeDir = f.dir + "/data"
	cfg := f.write(t)
	p := start(t, "khook run", bins.khook(), "run", "--config", cfg)
	waitReady(t, p, f.probes)
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)

	code, body := postEvent(t, f.webhook, "cart", "rollout stuck")
	require.Equal(t, http.StatusAccepted, code, body)
	var letters []ops.DeadLetter
	require.Eventually(t, func() bool {
		code, out := khookCmd(t, "dlq", "list", "--config", cfg, "--nats-url", natsURL, "-o", "json")
		require.Equal(t, 0, code, out)
		require.NoError(t, json.Unmarshal([]byte(out), &letters), out)
		return len(letters) == 1
	}, 20*time.Second, 50*time.Millisecond)
	require.Equal(t, "dispatcher", letters[0].Stage)
	require.Equal(t, "permanent", letters[0].Reason)
	require.Equal(t, "shop/shop-deployments", letters[0].Hook)
	require.Contains(t, letters[0].Error, "not deployed")
	require.Empty(t, agent.Received())

	code, out := khookCmd(t, "status", "--config", cfg, "--nats-url", natsURL)
	require.Equal(t, 0, code, out)
	require.Regexp(t, `dispatcher\s+permanent\s+1`, out)
	code, out = khookCmd(t, "dlq", "show", strconv.FormatUint(letters[0].Seq, 10), "--config", cfg, "--nats-url", natsURL)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "reason:    permanent")
	require.Contains(t, out, `"resourceName": "cart"`)

	// Retry refuses to guess what to retry.
	code, out = khookCmd(t, "dlq", "retry", "--config", cfg, "--nats-url", natsURL)
	require.Equal(t, 2, code, out, "a usage error")
	require.Contains(t, out, "name dead letters by sequence, or select them with filters and --all")

	broken.Store(false)
	code, out = khookCmd(t, "dlq", "retry", "--all", "--stage", "dispatcher", "--config", cfg, "--nats-url", natsURL)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "retried 1 dead letters")
	got := waitReceived(t, agent, 1, 10*time.Second)
	require.Equal(t, wantText("cart", "rollout stuck"), stripTime(got[0].Text))
	code, out = khookCmd(t, "dlq", "list", "--config", cfg, "--nats-url", natsURL, "-o", "json")
	require.Equal(t, 0, code, out)
	require.JSONEq(t, "[]", out)
}

// TestEventsAPIInKhookRun turns the API on in `khook run`: a request without the token is
// refused, and with it the delivered event is listed for its hook.
func TestEventsAPIInKhookRun(t *testing.T) {
	_, agentURL := startAgent(t)
	f := pipelineFiles{
		dir: t.TempDir(), agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		embeddedListen: "127.0.0.1:" + strconv.Itoa(freePort(t)),
	}
	f.storeDir = f.dir + "/data"
	cfg := f.write(t)
	apiPort := freePort(t)
	tokenFile := filepath.Join(f.dir, "api-token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("let-me-in\n"), 0o600))
	b, err := os.ReadFile(cfg)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cfg, append(b, []byte(fmt.Sprintf("api:\n  enabled: true\n  addr: 127.0.0.1:%d\n  token_file: %s\n", apiPort, tokenFile))...), 0o600))
	p := start(t, "khook run", bins.khook(), "run", "--config", cfg)
	waitReady(t, p, f.probes)
	code, body := postEvent(t, f.webhook, "cart", "rollout stuck")
	require.Equal(t, http.StatusAccepted, code, body)

	get := func(auth string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/api/v1/hooks/shop/shop-deployments/events", apiPort), nil)
		require.NoError(t, err)
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
	code, _ = get("")
	require.Equal(t, http.StatusUnauthorized, code)
	code, _ = get("wrong")
	require.Equal(t, http.StatusUnauthorized, code)
	require.Eventually(t, func() bool {
		code, body := get("let-me-in")
		require.Equal(t, http.StatusOK, code, body)
		return strings.Contains(body, `"resource":{"kind":"","name":"cart"}`) || strings.Contains(body, `"name":"cart"`)
	}, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, p.stop(t), "khook run stops cleanly with the API on")
}
