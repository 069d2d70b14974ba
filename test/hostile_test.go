package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/khook/khook/streams"
)

// TestHostileWebhookInput sends a real `khook run` the requests a hostile or careless sender
// would: bodies around the NATS limit, slow bodies with and without a token, wrong content
// types, deep nesting, invalid UTF-8, batches mixing good and bad events. Each gets its
// status and reason, the producer stays ready, and the raw stream holds exactly the events
// that were accepted.
func TestHostileWebhookInput(t *testing.T) {
	_, agentURL := startAgent(t)
	f := pipelineFiles{dir: t.TempDir(), agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		embeddedListen: "127.0.0.1:" + strconv.Itoa(freePort(t))}
	f.storeDir = f.dir + "/data"
	config := f.write(t)
	// Two endpoints: the default (no token) and /secure (a bearer token), both batch-enabled.
	plugins := fmt.Sprintf(`plugins:
  - name: webhook
    config:
      address: 127.0.0.1
      port: %d
      path: /webhook
      batch: true
      maxConcurrentRequests: 4
      endpoints:
        - path: /secure
          token: s3cret
`, f.webhook)
	require.NoError(t, os.WriteFile(f.dir+"/plugins.yaml", []byte(plugins), 0o600))
	p := start(t, "khook run", bins.khook(), "run", "--config", config)
	waitReady(t, p, f.probes)
	base := fmt.Sprintf("http://127.0.0.1:%d", f.webhook)
	accepted := 0

	post := func(path, contentType, body string, headers ...string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", contentType)
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		name, path, contentType, body string
		headers                       []string
		code                          int
		reason                        string
		stored                        int
	}{
		{name: "a good event", path: "/webhook", contentType: "application/json", body: `{"type":"deploy-failed"}`, code: 202, stored: 1},
		{name: "over the NATS limit, under the body limit", path: "/webhook", contentType: "application/json",
			body: `{"type":"deploy-failed","pad":"` + strings.Repeat("x", 1048509-34) + `"}`, code: 413, reason: "max_payload"},
		{name: "over the body limit", path: "/webhook", contentType: "application/json",
			body: `{"type":"deploy-failed","pad":"` + strings.Repeat("x", 2<<20) + `"}`, code: 413, reason: "body larger than 1048576 bytes"},
		{name: "just fits", path: "/webhook", contentType: "application/json",
			body: `{"type":"deploy-failed","pad":"` + strings.Repeat("x", 1000000) + `"}`, code: 202, stored: 1},
		{name: "wrong content type", path: "/webhook", contentType: "text/plain", body: `{"type":"deploy-failed"}`, code: 415, reason: "not supported"},
		{name: "deep nesting", path: "/webhook", contentType: "application/json",
			body: `{"type":"deploy-failed","x":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`, code: 400, reason: "not valid JSON"},
		{name: "invalid UTF-8", path: "/webhook", contentType: "application/json", body: "{\"type\":\"deploy-failed\",\"m\":\"\xff\xfe\"}", code: 400, reason: "UTF-8"},
		{name: "a batch with one bad event", path: "/webhook", contentType: "application/json",
			body: `[{"type":"deploy-failed"},{"type":"Not A Token"}]`, code: 400, reason: "event type"},
		{name: "a good batch", path: "/webhook", contentType: "application/json",
			body: `[{"type":"deploy-failed","n":1},{"type":"deploy-failed","n":2}]`, code: 202, stored: 2},
		{name: "no token", path: "/secure", contentType: "application/json", body: `{"type":"deploy-failed"}`, code: 401, reason: "credentials"},
		{name: "the token", path: "/secure", contentType: "application/json", body: `{"type":"deploy-failed","n":3}`,
			headers: []string{"Authorization", "Bearer s3cret"}, code: 202, stored: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := post(tc.path, tc.contentType, tc.body, tc.headers...)
			require.Equal(t, tc.code, code, body)
			require.Contains(t, body, tc.reason)
			accepted += tc.stored
		})
	}

	// Slow bodies: without the token, refused from the headers at once; with it, one holds a
	// slot while it trickles in, and the others are still served.
	for range 8 {
		conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		require.NoError(t, err)
		defer conn.Close()
		_, err = fmt.Fprintf(conn, "POST /secure HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	}
	slow, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	require.NoError(t, err)
	defer slow.Close()
	_, err = fmt.Fprintf(slow, "POST /secure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
	require.NoError(t, err)
	code, body := post("/secure", "application/json", `{"type":"deploy-failed","n":4}`, "Authorization", "Bearer s3cret")
	require.Equal(t, 202, code, body)
	accepted++

	// The producer was never marked unready, and the stream holds exactly what was accepted.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", f.probes))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	js := connectJS(t, "nats://"+f.embeddedListen)
	st, err := js.Stream(context.Background(), streams.Default().Raw.Name)
	require.NoError(t, err)
	info, err := st.Info(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(accepted), info.State.Msgs, "the raw stream holds exactly the accepted events")
}

// A hostile Hook cannot hold up a good one: a sub-second suppression window is refused by
// the API server, and a prompt that would loop forever is refused by khook, reported on its
// Hook as InvalidHook with the reason, while a well-formed Hook in the same namespace keeps
// delivering.
func TestHostileHookDoesNotDelayOthers(t *testing.T) {
	c := startHookCluster(t, "shop")
	cs, hooks := c.cs, c.hooks
	ctx := context.Background()

	_, err := hooks.Create(ctx, hookObject("shop", "hot", "Pod {{.ResourceName}}", "500ms"), metav1.CreateOptions{})
	require.ErrorContains(t, err, "suppressionWindow must be at least 1s")
	evil := hookObject("shop", "evil", "{{range 1000000000000}}{{end}}", "")
	evil.Object["spec"].(map[string]any)["eventConfigurations"].([]any)[0].(map[string]any)["agentRef"] = map[string]any{"name": "evil-agent"}
	_, err = hooks.Create(ctx, evil, metav1.CreateOptions{})
	require.NoError(t, err, "the CRD cannot see into templates; khook refuses it")
	_, err = hooks.Create(ctx, hookObject("shop", "good", "Pod {{.ResourceName}} restarted", ""), metav1.CreateOptions{})
	require.NoError(t, err)

	rig := startRig(t)
	dir, natsURL, js, topo, agent, agentURL := rig.dir, rig.natsURL, rig.js, rig.topo, rig.agent, rig.agentURL
	f := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		kubeconfig: c.Kubeconfig}
	d := start(t, "khook dispatcher", bins.khook(), "dispatcher", "--config", f.write(t))
	waitReady(t, d, f.probes)
	publishPodRestarts(t, js, "shop", "pod", 20)
	waitSettled(t, js, topo.Events.Name, topo.Dispatcher.Durable, 20)
	got := agent.Received()
	require.Len(t, got, 20)
	for _, r := range got {
		require.Equal(t, "kagent/k8s-agent", r.Agent, "only the good Hook's agent is called")
	}
	require.Eventually(t, func() bool {
		evs, err := cs.EventsV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "regarding.name=evil"})
		require.NoError(t, err)
		for _, e := range evs.Items {
			if e.Reason == "InvalidHook" && strings.Contains(e.Note, "must range over a field") {
				return true
			}
		}
		return false
	}, 30*time.Second, 50*time.Millisecond, "the hostile Hook carries InvalidHook with the reason")
}

// `khook publish --id` names one event: with several lines on stdin every line would get the
// same id and all but the first would be dropped as duplicates, so it is refused, and
// nothing is published.
func TestPublishIDWithManyLinesIsRefused(t *testing.T) {
	dir := t.TempDir()
	_, natsURL := startNATS(t, dir+"/nats", freePort(t))
	js := connectJS(t, natsURL)
	_, err := streams.Apply(context.Background(), js, streams.Default())
	require.NoError(t, err)
	cmd := exec.Command(bins.khook(), "publish", "--source", "ext", "--type", "disk-full", "--id", "same", "--nats-url", natsURL)
	cmd.Stdin = strings.NewReader("{\"n\":1}\n{\"n\":2}\n")
	out, err := cmd.CombinedOutput()
	require.Error(t, err, string(out))
	require.Contains(t, string(out), "--id names one event")
	st, err := js.Stream(context.Background(), streams.Default().Raw.Name)
	require.NoError(t, err)
	info, err := st.Info(context.Background())
	require.NoError(t, err)
	require.Zero(t, info.State.Msgs, "nothing was published")

	cmd = exec.Command(bins.khook(), "publish", "--source", "ext", "--type", "disk-full", "--id", "same", "--nats-url", natsURL)
	cmd.Stdin = strings.NewReader("{\"n\":1}\n")
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	require.Contains(t, string(out), `"id":"ext/same"`)
}
