package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/streamstest"
)

// publishPodRestarts stores n normalized pod-restart events in namespace ns, one per pod
// <prefix>-<i>, as the mapper would.
func publishPodRestarts(t *testing.T, js jetstream.JetStream, ns, prefix string, n int) {
	t.Helper()
	msgs := make([]*nats.Msg, 0, n)
	for i := range n {
		ev := mapping.Event{ID: fmt.Sprintf("kubernetes/%s-%d", prefix, i), Source: "kubernetes", SourceType: "kubernetes",
			Type: "pod-restart", Severity: "warning", Namespace: ns, Resource: mapping.Resource{Kind: "Pod", Name: fmt.Sprintf("%s-%d", prefix, i)},
			Reason: "BackOff", Message: "back-off restarting failed container", Time: time.Now().UTC()}
		data, err := json.Marshal(ev)
		require.NoError(t, err)
		body, err := cloudevent.Encode(&cloudevent.Event{ID: ev.ID, Source: ev.Source, Type: ev.Type, DataContentType: "application/json", Data: data})
		require.NoError(t, err)
		m := nats.NewMsg("khook.events.pod-restart")
		m.Data = body
		m.Header.Set(jetstream.MsgIDHeader, ev.ID)
		msgs = append(msgs, m)
	}
	streamstest.PublishAll(t, js, msgs)
}

// tcpProxy forwards connections to target once started; until then its port refuses them,
// as an API server that is down or not yet reachable does.
type tcpProxy struct {
	addr, target string
	ln           net.Listener
	wg           sync.WaitGroup
}

func (p *tcpProxy) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	require.NoError(t, err)
	p.ln = ln
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() {
				defer c.Close()
				u, err := net.Dial("tcp", p.target)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c); u.Close() }()
				_, _ = io.Copy(c, u)
			})
		}
	})
	t.Cleanup(func() { ln.Close() })
}

// kubeconfigVia writes a copy of kubeconfig whose server is addr.
func kubeconfigVia(t *testing.T, kubeconfig, addr string) string {
	t.Helper()
	kc, err := clientcmd.LoadFromFile(kubeconfig)
	require.NoError(t, err)
	for _, c := range kc.Clusters {
		c.Server = "https://" + addr
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	require.NoError(t, clientcmd.WriteToFile(*kc, path))
	return path
}

// A dispatcher whose hooks come from the cluster consumes nothing until it has them all: a
// backlog that waited for it while no dispatcher ran is delivered in full, whether the API
// server was unreachable when the dispatcher started or answered at once. Before, every
// event pulled while the Hook informer was still syncing was acknowledged as unmatched.
func TestDispatcherWaitsForHooksFromCluster(t *testing.T) {
	c := startHookCluster(t, "shop")
	_, err := c.hooks.Create(context.Background(),
		hookObject("shop", "restarts", "Pod {{.ResourceName}} keeps restarting", ""), metav1.CreateOptions{})
	require.NoError(t, err)

	dir := t.TempDir()
	_, natsURL := startNATS(t, dir+"/nats", freePort(t))
	js := connectJS(t, natsURL)
	topo := streams.Default()
	_, err = streams.Apply(context.Background(), js, topo)
	require.NoError(t, err)
	const backlog = 300
	publishPodRestarts(t, js, "shop", "early", backlog)

	agent, agentURL := startAgent(t)
	proxy := &tcpProxy{addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), target: strings.TrimPrefix(c.Config.Host, "https://")}
	f := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		kubeconfig: kubeconfigVia(t, c.Kubeconfig, proxy.addr)}
	config := f.write(t)
	d := start(t, "khook dispatcher", bins.khook(), "dispatcher", "--config", config)

	// The API server cannot be reached: the dispatcher says so, and takes nothing.
	require.Eventually(t, func() bool {
		return strings.Count(d.out.String(), "kubernetes API server unreachable") >= 2
	}, 30*time.Second, 20*time.Millisecond, "the dispatcher waits for the API server")
	cons, err := js.Consumer(context.Background(), topo.Events.Name, topo.Dispatcher.Durable)
	require.NoError(t, err)
	info, err := cons.Info(context.Background())
	require.NoError(t, err)
	require.Zero(t, info.AckFloor.Stream, "nothing acknowledged while the hooks are unknown")
	require.Zero(t, info.NumAckPending, "nothing even pulled")
	require.Equal(t, uint64(backlog), info.NumPending)

	proxy.start(t)
	waitReady(t, d, f.probes)
	waitSettled(t, js, topo.Events.Name, topo.Dispatcher.Durable, backlog)
	require.Len(t, agent.Received(), backlog, "every event of the backlog reached the agent, once")

	// A rollout: the dispatcher is replaced while more events wait. The API server answers
	// at once this time; the new dispatcher still waits for the informer's first list.
	require.NoError(t, d.stop(t))
	publishPodRestarts(t, js, "shop", "later", backlog)
	d2 := start(t, "khook dispatcher 2", bins.khook(), "dispatcher", "--config", config)
	waitReady(t, d2, f.probes)
	waitSettled(t, js, topo.Events.Name, topo.Dispatcher.Durable, 2*backlog)
	require.Len(t, agent.Received(), 2*backlog)
	seen := map[string]bool{}
	for _, r := range agent.Received() {
		require.False(t, seen[r.MessageID], "one call per task")
		seen[r.MessageID] = true
	}
	_ = os.Remove(config)
}

// A dispatcher stopped mid-call lets the call finish within its drain timeout, and acks the
// event: no duplicate. A call longer than the drain timeout is interrupted, counted as
// interrupted rather than failed, and its event is redelivered at once to another replica,
// which sends the same messageId: the documented shutdown duplicate, and its bound (one
// more call, same messageId).
func TestShutdownDrainsCallsOrHandsThemOver(t *testing.T) {
	dir := t.TempDir()
	_, natsURL := startNATS(t, dir+"/nats", freePort(t))
	agent, agentURL := startAgent(t)
	entered := make(chan string, 16)
	var delay atomic.Int64
	agent.OnMessage = func(r demoagent.Received) error {
		entered <- r.MessageID
		time.Sleep(time.Duration(delay.Load())) // a slow agent, not synchronisation
		return nil
	}
	js := connectJS(t, natsURL)
	topo := streams.Default()
	_, err := streams.Apply(context.Background(), js, topo)
	require.NoError(t, err)
	dispatcher := func(name, drain string) (*proc, pipelineFiles) {
		f := pipelineFiles{dir: t.TempDir(), natsURL: natsURL, agentURL: agentURL, webhook: freePort(t), metrics: freePort(t),
			probes: freePort(t), extraConfig: "dispatcher:\n  drain_timeout: " + drain + "\n"}
		p := start(t, name, bins.khook(), "dispatcher", "--config", f.write(t))
		waitReady(t, p, f.probes)
		return p, f
	}

	// The drain timeout covers the call: SIGTERM waits for it, and the event is acked.
	delay.Store(int64(2 * time.Second))
	a, _ := dispatcher("dispatcher a", "10s")
	publishNormalized(t, js, "webhook/drained", "cart")
	first := <-entered
	require.NoError(t, a.stop(t), "a drained dispatcher exits 0")
	waitSettled(t, js, topo.Events.Name, topo.Dispatcher.Durable, 1)
	require.Len(t, agent.Received(), 1)
	require.NotContains(t, a.out.String(), "interrupted")

	// The call outlives the drain timeout: it is interrupted, not failed, and another
	// replica sends the same task again.
	delay.Store(int64(4 * time.Second))
	b, _ := dispatcher("dispatcher b", "1s")
	publishNormalized(t, js, "webhook/interrupted", "orders")
	second := <-entered
	require.NotEqual(t, first, second)
	require.NoError(t, b.stop(t))
	require.Contains(t, b.out.String(), "call interrupted by shutdown")
	require.NotContains(t, b.out.String(), "will retry", "an interrupted call is not a failed attempt")
	delay.Store(0)
	dispatcher("dispatcher c", "10s")
	waitSettled(t, js, topo.Events.Name, topo.Dispatcher.Durable, 2)
	require.Eventually(t, func() bool { return len(agent.Received()) == 3 }, 30*time.Second, 20*time.Millisecond)
	calls := map[string]int{}
	for _, r := range agent.Received() {
		calls[r.MessageID]++
	}
	require.Equal(t, map[string]int{first: 1, second: 2}, calls, "the interrupted task is sent once more, with its messageId")
}

// An event accepted with 202 whose normalized form cannot be stored (the mapper adds the
// message beside the data, and the sum exceeds the server's max_payload) is dead-lettered
// with its reason, once, instead of being redelivered forever; the events after it flow.
func TestUnstorableEventIsDeadLetteredNotLooped(t *testing.T) {
	agent, agentURL := startAgent(t)
	p := startInProcess(t, agentURL)
	big := strings.Repeat("x", 600<<10)
	code, body := postEvent(t, p.webhook, "huge", big)
	require.Equal(t, 202, code, body)
	code, body = postEvent(t, p.webhook, "cart", "rollout stuck")
	require.Equal(t, 202, code, body)

	waitSettled(t, p.js, p.topo.Raw.Name, p.topo.Mapper.Durable, 2)
	dlq, err := p.js.Stream(context.Background(), p.topo.DLQ.Name)
	require.NoError(t, err)
	letter, err := dlq.GetLastMsgForSubject(context.Background(), "khook.dlq.mapper")
	require.NoError(t, err)
	require.Equal(t, "too-large", letter.Header.Get("Khook-Reason"))
	require.Contains(t, letter.Header.Get("Khook-Error"), "max_payload")
	info, err := dlq.Info(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(1), info.State.Msgs, "one dead letter")
	got := waitReceived(t, agent, 1, 10*time.Second)
	require.Equal(t, wantText("cart", "rollout stuck"), stripTime(got[0].Text))
}

// Two senders whose CloudEvents share an id are two events all the way to the agent: both
// are stored, both are mapped, and each gets its own task and messageId, even though the
// same hook matches both (before, the second was dropped as a duplicate, and past the
// duplicate window the dispatcher's delivery record swallowed it).
func TestSameIDFromTwoSendersReachesTheAgentTwice(t *testing.T) {
	agent, agentURL := startAgent(t)
	p := startInProcess(t, agentURL)
	post := func(source, resource string) {
		body := `{"specversion":"1.0","id":"1","source":"` + source + `","type":"deploy-failed",` +
			`"data":{"namespace":"shop","resourceName":"` + resource + `","message":"m"}}`
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/webhook", p.webhook), "application/cloudevents+json", strings.NewReader(body))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
	}
	post("ci-a", "cart")
	post("ci-b", "orders")
	got := waitReceived(t, agent, 2, 10*time.Second)
	waitSettled(t, p.js, p.topo.Events.Name, p.topo.Dispatcher.Durable, 2)
	require.Len(t, agent.Received(), 2)
	require.NotEqual(t, got[0].MessageID, got[1].MessageID)
	require.ElementsMatch(t, []string{wantText("cart", "m"), wantText("orders", "m")},
		[]string{stripTime(got[0].Text), stripTime(got[1].Text)})
}

// A credential that is configured but resolves empty stops khook at start, with the setting
// named, instead of running an endpoint without auth or sending an empty token.
func TestEmptySecretsFailClosed(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty-token")
	require.NoError(t, os.WriteFile(empty, []byte("\n"), 0o600))
	for _, tc := range []struct {
		name, extraConfig, plugins string
		env                        []string
		want                       string
	}{
		{name: "webhook token from an empty variable", env: []string{"WEBHOOK_TOKEN="},
			plugins: "plugins:\n  - name: webhook\n    config:\n      port: %d\n      token: \"${WEBHOOK_TOKEN}\"\n",
			want:    "${WEBHOOK_TOKEN} is set but empty"},
		{name: "webhook token file that is empty",
			plugins: "plugins:\n  - name: webhook\n    config:\n      port: %d\n      tokenFile: " + empty + "\n",
			want:    "token: the secret is empty"},
		{name: "API token file that is empty", extraConfig: "api:\n  enabled: true\n  token_file: " + empty + "\n",
			want: "api.token_file: the secret is empty"},
		{name: "agent token file that is empty", extraConfig: "kagent_token_placeholder",
			want: "kagent.token_file: the secret is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := pipelineFiles{dir: t.TempDir(), agentURL: "http://127.0.0.1:1", webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
				embeddedListen: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
			f.storeDir = f.dir + "/data"
			if tc.extraConfig != "kagent_token_placeholder" {
				f.extraConfig = tc.extraConfig
			}
			config := f.write(t)
			if tc.extraConfig == "kagent_token_placeholder" {
				b, err := os.ReadFile(config)
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(config, []byte(strings.Replace(string(b), "kagent:\n", "kagent:\n  token_file: "+empty+"\n", 1)), 0o600))
			}
			if tc.plugins != "" {
				require.NoError(t, os.WriteFile(filepath.Join(f.dir, "plugins.yaml"), []byte(fmt.Sprintf(tc.plugins, f.webhook)), 0o600))
			}
			p := startEnv(t, "khook run", tc.env, bins.khook(), "run", "--config", config)
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				t.Fatalf("khook run did not stop on an empty secret\n%s", p.out.String())
			}
			require.Error(t, p.err, "a non-zero exit")
			require.Contains(t, p.out.String(), tc.want)
		})
	}
}
