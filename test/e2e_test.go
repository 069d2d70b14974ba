package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/streams"
)

// TestEndToEndInProcess wires every stage in this process: a JetStream server, the webhook
// HTTP server, the mapper, the dispatcher, and a real A2A agent from a2a-go.
func TestEndToEndInProcess(t *testing.T) {
	agent, agentURL := startAgent(t)
	p := startInProcess(t, agentURL)
	js, topo, port := p.js, p.topo, p.webhook

	sent := time.Now()
	code, body := postEvent(t, port, "cart", "rollout stuck")
	require.Equal(t, 202, code, body)
	got := waitReceived(t, agent, 1, 10*time.Second)
	t.Logf("POST to agent call: %s (in one process)", got[0].At.Sub(sent))

	var accepted struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(body), &accepted))
	// Exactly one call, once every stage has settled the event.
	waitSettled(t, js, topo.Events.Name, topo.Dispatcher.Durable, 1)
	got = agent.Received()
	require.Len(t, got, 1)
	r := got[0]
	require.Equal(t, "kagent/sre-agent", r.Agent)
	require.Equal(t, wantText("cart", "rollout stuck"), stripTime(r.Text))
	require.Equal(t, "tester@example.com", r.UserID)
	require.NotEmpty(t, r.MessageID)
	require.NotEmpty(t, r.ContextID)
	require.NotEmpty(t, accepted.ID)
	p.stop()
}

// TestKhookRun runs the README's main command: one `khook run` process with its embedded
// NATS server, then SIGTERM, which must drain and exit 0.
func TestKhookRun(t *testing.T) {
	agent, agentURL := startAgent(t)
	files := pipelineFiles{
		dir: t.TempDir(), agentURL: agentURL,
		webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		embeddedListen: "127.0.0.1:" + strconv.Itoa(freePort(t)),
	}
	files.storeDir = files.dir + "/data"
	p := start(t, "khook run", bins.khook(), "run", "--config", files.write(t))
	waitReady(t, p, files.probes)

	sent := time.Now()
	code, body := postEvent(t, files.webhook, "cart", "rollout stuck")
	require.Equal(t, 202, code, body)
	got := waitReceived(t, agent, 1, 10*time.Second)
	t.Logf("POST to agent call: %s (khook run)", got[0].At.Sub(sent))
	require.Equal(t, wantText("cart", "rollout stuck"), stripTime(got[0].Text))
	require.NoError(t, p.stop(t), "khook run exits 0 on SIGTERM")
	require.Len(t, agent.Received(), 1)
	// Its console logs went to a pipe, not a terminal: plain text, no colour codes.
	require.Contains(t, p.out.String(), "\tINFO\t")
	require.NotContains(t, p.out.String(), "\x1b[")
}

// TestSeparateProcesses runs each stage as its own process against a standalone NATS server,
// as docker-compose and the Helm chart do.
func TestSeparateProcesses(t *testing.T) {
	dir := t.TempDir()
	_, natsURL := startNATS(t, dir+"/nats", freePort(t))
	agent, agentURL := startAgent(t)
	base := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: agentURL, webhook: freePort(t)}

	// streams apply creates the topology once and is a no-op the second time.
	cfgPath := base.write(t)
	out := runOnce(t, "streams", "apply", "--config", cfgPath)
	require.Contains(t, out, "stream KHOOK_RAW created")
	out = runOnce(t, "streams", "apply", "--config", cfgPath)
	require.Equal(t, 7, strings.Count(out, "unchanged"), out)

	var procs []*proc
	for _, stage := range []string{"producer", "mapper", "dispatcher"} {
		f := base
		f.dir = t.TempDir()
		f.metrics, f.probes = freePort(t), freePort(t)
		p := start(t, "khook "+stage, bins.khook(), stage, "--config", f.write(t))
		waitReady(t, p, f.probes)
		procs = append(procs, p)
	}

	sent := time.Now()
	code, body := postEvent(t, base.webhook, "cart", "rollout stuck")
	require.Equal(t, 202, code, body)
	got := waitReceived(t, agent, 1, 10*time.Second)
	t.Logf("POST to agent call: %s (three processes)", got[0].At.Sub(sent))
	require.Equal(t, wantText("cart", "rollout stuck"), stripTime(got[0].Text))

	for _, p := range procs {
		require.NoError(t, p.stop(t), "%s exits 0 on SIGTERM", p.name)
	}
	require.Len(t, agent.Received(), 1)
}

// TestMapperCrashRedelivers kills the mapper with SIGKILL while it is part-way through a
// backlog, restarts it, and checks that every event reaches the agent exactly once.
func TestMapperCrashRedelivers(t *testing.T) {
	const total = 5000
	ctx := context.Background()
	dir := t.TempDir()
	_, natsURL := startNATS(t, dir+"/nats", freePort(t))
	agent, agentURL := startAgent(t)
	base := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: agentURL, webhook: freePort(t), mapperAckWait: "2s"}
	cfgPath := base.write(t)
	runOnce(t, "streams", "apply", "--config", cfgPath)

	js := connectJS(t, natsURL)
	topo := streams.Default()
	publishBacklog(t, js, total)

	dispatcher := base
	dispatcher.dir, dispatcher.metrics, dispatcher.probes = t.TempDir(), freePort(t), freePort(t)
	dp := start(t, "khook dispatcher", bins.khook(), "dispatcher", "--config", dispatcher.write(t))
	waitReady(t, dp, dispatcher.probes)

	mapperFiles := base
	mapperFiles.dir, mapperFiles.metrics, mapperFiles.probes = t.TempDir(), freePort(t), freePort(t)
	mapperCfg := mapperFiles.write(t)
	mp := start(t, "khook mapper (first)", bins.khook(), "mapper", "--config", mapperCfg)

	cons, err := js.Consumer(ctx, topo.Raw.Name, topo.Mapper.Durable)
	require.NoError(t, err)
	var floor uint64
	require.Eventually(t, func() bool {
		info, err := cons.Info(ctx)
		if err != nil {
			return false
		}
		floor = info.AckFloor.Stream
		return floor > 0
	}, 30*time.Second, time.Millisecond, "the mapper starts acknowledging")
	mp.kill()
	info, err := cons.Info(ctx)
	require.NoError(t, err)
	t.Logf("killed the mapper with SIGKILL after %d of %d raw events were acknowledged (%d delivered and unacknowledged)",
		info.AckFloor.Stream, total, info.NumAckPending)
	require.Less(t, info.AckFloor.Stream, uint64(total), "the kill must land mid-backlog")

	start(t, "khook mapper (restarted)", bins.khook(), "mapper", "--config", mapperCfg)
	waitReceived(t, agent, total, 2*time.Minute)
	waitSettled(t, js, topo.Events.Name, topo.Dispatcher.Durable, total)

	got := agent.Received()
	seen := map[string]int{}
	for _, r := range got {
		seen[r.MessageID]++
	}
	require.Len(t, seen, total, "every event reached the agent")
	require.Len(t, got, total, "no event reached the agent twice")

}

// runOnce runs a short khook command and returns its output.
func runOnce(t *testing.T, args ...string) string {
	t.Helper()
	p := start(t, "khook "+strings.Join(args, " "), bins.khook(), args...)
	<-p.done
	require.NoError(t, p.err, p.out.String())
	return p.out.String()
}

// waitSettled waits until a durable consumer has acknowledged n messages and holds none
// unacknowledged, so that nothing more can happen downstream.
func waitSettled(t *testing.T, js jetstream.JetStream, stream, durable string, n uint64) {
	t.Helper()
	cons, err := js.Consumer(context.Background(), stream, durable)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.AckFloor.Stream >= n && info.NumAckPending == 0 && info.NumPending == 0
	}, 2*time.Minute, 10*time.Millisecond)
}

// TestReadinessFollowsNATS stops the NATS server under a running stage: /readyz must turn
// unready, and ready again once the server is back, without restarting the stage.
func TestReadinessFollowsNATS(t *testing.T) {
	dir := t.TempDir()
	natsPort := freePort(t)
	nats1, natsURL := startNATS(t, dir+"/nats", natsPort)
	_, agentURL := startAgent(t)
	f := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t)}
	p := start(t, "khook mapper", bins.khook(), "mapper", "--config", f.write(t))
	waitReady(t, p, f.probes)

	nats1.kill()
	require.Eventually(t, func() bool { return readyz(f.probes) == 503 }, 30*time.Second, 20*time.Millisecond,
		"unready while NATS is down")

	startNATS(t, dir+"/nats", natsPort)
	waitReady(t, p, f.probes)
}

func readyz(port int) int {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestTwoMappersOneKilled runs two mapper processes on one durable consumer and kills one
// with SIGKILL mid-stream: every raw event must become exactly one normalized event.
func TestTwoMappersOneKilled(t *testing.T) {
	const total = 6000
	ctx := context.Background()
	dir := t.TempDir()
	_, natsURL := startNATS(t, dir+"/nats", freePort(t))
	_, agentURL := startAgent(t)
	base := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: agentURL, webhook: freePort(t), mapperAckWait: "2s"}
	runOnce(t, "streams", "apply", "--config", base.write(t))

	js := connectJS(t, natsURL)
	topo := streams.Default()
	publishBacklog(t, js, total)

	var mappers []*proc
	for i := range 2 {
		f := base
		f.dir, f.metrics, f.probes = t.TempDir(), freePort(t), freePort(t)
		mappers = append(mappers, start(t, fmt.Sprintf("khook mapper %d", i), bins.khook(), "mapper", "--config", f.write(t)))
	}
	cons, err := js.Consumer(ctx, topo.Raw.Name, topo.Mapper.Durable)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.AckFloor.Stream > 0
	}, 30*time.Second, time.Millisecond)
	mappers[0].kill()
	info, err := cons.Info(ctx)
	require.NoError(t, err)
	t.Logf("killed one of two mappers after %d of %d raw events were acknowledged", info.AckFloor.Stream, total)
	require.Less(t, info.AckFloor.Stream, uint64(total), "the kill must land mid-stream")

	waitSettled(t, js, topo.Raw.Name, topo.Mapper.Durable, total)
	events, err := js.Stream(ctx, topo.Events.Name)
	require.NoError(t, err)
	einfo, err := events.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(total), einfo.State.Msgs, "exactly one normalized event per raw event")
	oc, err := events.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	seen := map[string]bool{}
	for range total {
		msg, err := oc.Next(jetstream.FetchMaxWait(5 * time.Second))
		require.NoError(t, err)
		seen[msg.Headers().Get(jetstream.MsgIDHeader)] = true
	}
	require.Len(t, seen, total)
}

// publishNormalized puts a normalized event straight on the events stream, as the mapper
// would.
func publishNormalized(t *testing.T, js jetstream.JetStream, id, resource string) {
	t.Helper()
	publishIncident(t, js, id, resource, "error")
}

// TestSuppressionAcrossDispatcherProcesses runs three dispatcher processes: the same
// incident published five times under different ids inside the window reaches the agent
// once, and once more after the window.
func TestSuppressionAcrossDispatcherProcesses(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	_, natsURL := startNATS(t, dir+"/nats", freePort(t))
	agent, agentURL := startAgent(t)
	base := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: agentURL, webhook: freePort(t), hookWindow: "2s"}
	runOnce(t, "streams", "apply", "--config", base.write(t))
	for i := range 3 {
		startStage(t, base, fmt.Sprint("khook dispatcher ", i), "dispatcher")
	}
	js := connectJS(t, natsURL)
	topo := streams.Default()

	for i := range 5 {
		publishNormalized(t, js, fmt.Sprintf("incident-%d", i), "cart")
	}
	waitSettled(t, js, topo.Events.Name, topo.Dispatcher.Durable, 5)
	require.Len(t, agent.Received(), 1, "one call per window across three dispatchers")

	kv, err := js.KeyValue(ctx, topo.DispatchBucket)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		keys, err := kv.ListKeysFiltered(ctx, "claim.>")
		if err != nil {
			return false
		}
		for range keys.Keys() {
			return false
		}
		return true
	}, 30*time.Second, 50*time.Millisecond, "the claim expires with its window")

	publishNormalized(t, js, "incident-after-window", "cart")
	waitSettled(t, js, topo.Events.Name, topo.Dispatcher.Durable, 6)
	require.Len(t, agent.Received(), 2, "one more call after the window")
}

// TestDispatcherKilledDuringSlowCall kills a dispatcher with SIGKILL while an agent call is
// in flight. The event is delivered after a replacement starts. This is the one window in
// which an agent can be called twice: the crash came after the agent received the call and
// before khook recorded the answer. Both calls carry the same A2A messageId, so the agent
// can recognise the repeat, and the number of repeats is bounded by the calls in flight at
// the crash (here one).
func TestDispatcherKilledDuringSlowCall(t *testing.T) {
	dir := t.TempDir()
	_, natsURL := startNATS(t, dir+"/nats", freePort(t))
	agent, agentURL := startAgent(t)
	started, release := agent.HoldFirst() // the first call hangs until the test lets it finish
	base := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: agentURL, webhook: freePort(t), dispatcherAckWait: "3s"}
	runOnce(t, "streams", "apply", "--config", base.write(t))
	first := base
	first.dir, first.metrics, first.probes = t.TempDir(), freePort(t), freePort(t)
	p := start(t, "khook dispatcher (killed)", bins.khook(), "dispatcher", "--config", first.write(t))
	waitReady(t, p, first.probes)

	js := connectJS(t, natsURL)
	publishNormalized(t, js, "slow-incident", "cart")
	require.Eventually(t, func() bool { return started.Load() == 1 }, 30*time.Second, 5*time.Millisecond)
	p.kill()

	second := base
	second.dir, second.metrics, second.probes = t.TempDir(), freePort(t), freePort(t)
	start(t, "khook dispatcher (replacement)", bins.khook(), "dispatcher", "--config", second.write(t))
	topo := streams.Default()
	waitSettled(t, js, topo.Events.Name, topo.Dispatcher.Durable, 1)
	require.Equal(t, int64(2), started.Load(), "the replacement called the agent again")
	release()
	got := waitReceived(t, agent, 2, 10*time.Second)
	require.Equal(t, got[0].MessageID, got[1].MessageID, "the repeat carries the same messageId")
	t.Logf("duplicate agent calls after a crash during a call: %d (bounded by the one call in flight)", len(got)-1)
}

// TestStartFailsFastAndStopsAtOnce: a listen address in use fails khook run at once, naming
// the address and the key that sets it; Ctrl-C while khook waits for NATS stops it at once;
// an operations command against a NATS where nothing listens fails within its bound with a
// hint, and one given an http:// URL is refused as a usage error. Each path has its bound
// (5 s: a process start and, for the command, its 2 s connect timeout).
func TestStartFailsFastAndStopsAtOnce(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { busy.Close() })
	_, agentURL := startAgent(t)
	f := embeddedPipeline(t, agentURL)
	f.embeddedListen = busy.Addr().String()
	bins.khook() // built before the clock starts
	began := time.Now()
	code, out := khookCmd(t, "run", "--config", f.write(t))
	require.Equal(t, 1, code)
	require.Contains(t, out, "listen tcp "+busy.Addr().String()+": bind: address already in use; set nats.embedded.listen or KHOOK_NATS_EMBEDDED_LISTEN")
	require.Less(t, time.Since(began), 5*time.Second)

	// So does every listener of khook's own: a plugin's port at start, the metrics port.
	_, busyPort, err := net.SplitHostPort(busy.Addr().String())
	require.NoError(t, err)
	port, err := strconv.Atoi(busyPort)
	require.NoError(t, err)
	for what, want := range map[string]string{
		"webhook": "plugin webhook: webhook: listen tcp 127.0.0.1:" + busyPort + ": bind: address already in use; set address and port in the plugin's plugins.yaml entry",
		"metrics": "metrics server: listen tcp 127.0.0.1:" + busyPort + ": bind: address already in use; set server.metrics_addr or KHOOK_SERVER_METRICS_ADDR",
	} {
		g := f
		g.dir, g.embeddedListen = t.TempDir(), "127.0.0.1:"+strconv.Itoa(freePort(t))
		g.storeDir = g.dir + "/data"
		if what == "webhook" {
			g.webhook = port
		} else {
			g.metrics = port
		}
		began = time.Now()
		code, out := khookCmd(t, "run", "--config", g.write(t))
		require.Equal(t, 1, code, what)
		require.Contains(t, out, want, what)
		require.Less(t, time.Since(began), 5*time.Second, what)
	}

	// NATS is away: khook run keeps trying for nats.connect_timeout, and Ctrl-C ends that.
	g := f
	g.dir, g.natsURL = t.TempDir(), "nats://"+busy.Addr().String()
	p := start(t, "khook run", bins.khook(), "run", "--config", g.write(t))
	require.Eventually(t, func() bool { return strings.Contains(p.out.String(), "connecting to NATS") }, 30*time.Second, 10*time.Millisecond)
	require.NoError(t, p.cmd.Process.Signal(os.Interrupt))
	select {
	case <-p.done:
		require.NoError(t, p.err, "stopped during start-up, with nothing to drain: exit 0")
	case <-time.After(5 * time.Second):
		t.Fatalf("khook run ignored Ctrl-C while waiting for NATS:\n%s", p.out.String())
	}

	closed := freePort(t)
	began = time.Now()
	code, out = khookCmd(t, "status", "-s", fmt.Sprintf("127.0.0.1:%d", closed))
	require.Equal(t, 1, code)
	require.Contains(t, out, fmt.Sprintf("nats connect nats://127.0.0.1:%d", closed), "host:port is nats://host:port")
	require.Contains(t, out, "is khook run running? pass --config, -s or NATS_URL")
	require.Less(t, time.Since(began), 5*time.Second)
	code, out = khookCmd(t, "status", "-s", "http://localhost:8222")
	require.Equal(t, 2, code, out)
	require.Contains(t, out, "want nats://, tls://, ws:// or wss://, or host:port")
}
