package test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/internal/demoagent"
)

// partitionCluster is a three-node NATS cluster and khook's stages, each in its own
// container on a private network (natsNet), with the dispatchers also on a second network
// (agentNet) whose gateway reaches the test's agent. Cutting a container off natsNet with
// `docker network disconnect` is a network partition: the process keeps running.
type partitionCluster struct {
	e                *engine
	image            string // khook's, for in-network probes
	prefix           string
	natsNet          string
	nodes            []natsNode
	webhook          int
	agent            *demoagent.Server
	inflight         *callsByPeer
	agentDelay       atomic.Int64 // nanoseconds each call takes
	dispatchers      []string     // container names
	dispatcherAddrIP map[string]string
}

type natsNode struct {
	name, container string
	client          int // published host port
}

// callsByPeer counts the agent calls in progress by the caller's IP address.
type callsByPeer struct {
	mu sync.Mutex
	n  map[string]int
	// started holds when each call began, by caller.
	started map[string][]time.Time
}

func (c *callsByPeer) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		c.mu.Lock()
		c.n[ip]++
		c.started[ip] = append(c.started[ip], time.Now())
		c.mu.Unlock()
		defer func() {
			c.mu.Lock()
			c.n[ip]--
			c.mu.Unlock()
		}()
		h.ServeHTTP(w, r)
	})
}

// startedBy counts the calls ip began between from and to.
func (c *callsByPeer) startedBy(ip string, from, to time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, at := range c.started[ip] {
		if at.After(from) && at.Before(to) {
			n++
		}
	}
	return n
}

func (c *callsByPeer) busy() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for ip, n := range c.n {
		if n > 0 {
			out[ip] = n
		}
	}
	return out
}

func startPartitionCluster(t *testing.T) *partitionCluster {
	e := dockerEngine(t)
	khookImage, natsImage := images(t, e)
	c := &partitionCluster{e: e, image: khookImage, prefix: fmt.Sprintf("khookpt%d", os.Getpid()), dispatcherAddrIP: map[string]string{}}
	c.natsNet = c.prefix + "-nats"
	agentNet := c.prefix + "-agent"
	var containers []string
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range containers {
				logs, _ := e.try(context.Background(), "logs", "--tail", "60", name)
				t.Logf("--- docker logs --tail 60 %s\n%s", name, logs)
			}
		}
		for _, name := range containers {
			_, _ = e.try(context.Background(), "rm", "-f", "-v", name)
		}
		for _, n := range []string{c.natsNet, agentNet} {
			_, _ = e.try(context.Background(), "network", "rm", n)
		}
	})
	e.run(t, "network", "create", c.natsNet)
	e.run(t, "network", "create", agentNet)
	gateway := e.run(t, "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", agentNet)

	// The agent runs in the test, on the agent network's gateway, so that it can tell which
	// dispatcher made each call and be made slow.
	c.agent = demoagent.New()
	c.inflight = &callsByPeer{n: map[string]int{}, started: map[string][]time.Time{}}
	c.agent.OnMessage = func(r demoagent.Received) error {
		time.Sleep(time.Duration(c.agentDelay.Load()))
		return nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(gateway, "0"))
	require.NoError(t, err)
	srv := &http.Server{Handler: c.inflight.wrap(c.agent.Handler()), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	var routes []string
	for i := range 3 {
		routes = append(routes, fmt.Sprintf("nats://n%d:6222", i+1))
	}
	for i := range 3 {
		n := natsNode{name: fmt.Sprintf("n%d", i+1), container: fmt.Sprintf("%s-n%d", c.prefix, i+1)}
		containers = append(containers, n.container)
		e.run(t, "run", "--detach", "--name", n.container, "--network", c.natsNet, "--network-alias", n.name,
			"--publish", "127.0.0.1::4222",
			natsImage, "-js", "-sd", "/data", "-n", n.name, "-m", "8222",
			"--cluster_name", "khook", "--cluster", "nats://0.0.0.0:6222", "--routes", strings.Join(routes, ","))
		n.client = hostPort(t, e, n.container, 4222)
		c.nodes = append(c.nodes, n)
	}

	// The stages' configuration, mounted read-only. The ack waits are short so that what a
	// cut-off stage held comes back within the test; kagent.timeout stays under the
	// dispatcher's ack wait, as the configuration requires.
	dir := t.TempDir()
	require.NoError(t, os.Chmod(dir, 0o755))
	r3 := "    replicas: 3\n"
	files := map[string]string{
		"khook.yaml": fmt.Sprintf(`nats:
  url: nats://n1:4222,nats://n2:4222,nats://n3:4222
  connect_timeout: 60s
  # A stage on a cut-off server notices within three pings and moves to another.
  ping_interval: 1s
files:
  plugins: plugins.yaml
  mappings: event-mappings.yaml
  hooks: hooks.yaml
streams:
  raw:
%s  events:
%s  dlq:
%s  mapper:
    ack_wait: 5s
  dispatcher:
    ack_wait: 8s
kagent:
  url: http://%s
  user_id: tester@example.com
  timeout: 6s
server:
  metrics_addr: ":8080"
  probes_addr: ":8081"
kubernetes:
  hooks: file
log:
  format: console
`, r3, r3, r3, ln.Addr().String()),
		"plugins.yaml":        "plugins:\n  - name: webhook\n    enabled: true\n    config:\n      port: 8090\n      path: /webhook\n",
		"event-mappings.yaml": "mappings:\n  - eventSource: webhook\n    eventType: deploy-failed\n    severity: error\n",
		"hooks.yaml":          hooksYAML,
	}
	for name, body := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644))
	}
	stage := func(name string, publish []string, args ...string) {
		containers = append(containers, name)
		run := []string{"run", "--detach", "--name", name, "--network", c.natsNet, "--volume", dir + ":/etc/khook:ro"}
		for _, p := range publish {
			run = append(run, "--publish", p)
		}
		e.run(t, append(append(run, khookImage), args...)...)
	}
	cfg := []string{"--config", "/etc/khook/khook.yaml"}

	// streams apply retries while the cluster elects its meta leader.
	applied := c.prefix + "-streams-apply"
	waitFor(t, func() bool {
		_, _ = e.try(context.Background(), "rm", "-f", applied)
		out, err := e.try(context.Background(), append([]string{"run", "--name", applied, "--network", c.natsNet,
			"--volume", dir + ":/etc/khook:ro", khookImage, "streams", "apply"}, cfg...)...)
		if err != nil {
			t.Logf("streams apply: %v: %s", err, out)
		}
		return err == nil
	}, 2*time.Minute, "streams apply on the three-node cluster")
	containers = append(containers, applied)

	stage(c.prefix+"-producer", []string{"127.0.0.1::8090"}, append([]string{"producer"}, cfg...)...)
	c.webhook = hostPort(t, e, c.prefix+"-producer", 8090)
	for i := range 2 {
		stage(fmt.Sprintf("%s-mapper-%d", c.prefix, i+1), nil, append([]string{"mapper"}, cfg...)...)
	}
	for i := range 2 {
		name := fmt.Sprintf("%s-dispatcher-%d", c.prefix, i+1)
		stage(name, nil, append([]string{"dispatcher"}, cfg...)...)
		e.run(t, "network", "connect", agentNet, name)
		ip := e.run(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).IPAddress}}`, agentNet), name)
		c.dispatchers = append(c.dispatchers, name)
		c.dispatcherAddrIP[ip] = name
	}
	for _, name := range containers[4:] {
		waitFor(t, func() bool {
			_, err := e.try(context.Background(), "exec", name, "/khook", "probe", "http://localhost:8081/readyz")
			return err == nil
		}, 90*time.Second, name+" ready")
	}
	return c
}

// monitor GETs a path of a node's monitoring port from inside the NATS network (a port
// published by Docker does not always follow a container that is disconnected and
// reconnected), and returns the body of a 200.
func (c *partitionCluster) monitor(n natsNode, path string) (string, error) {
	return c.e.try(context.Background(), "run", "--rm", "--network", c.natsNet, c.image, "probe", "http://"+n.name+":8222"+path)
}

// suppressed sums khook_dispatcher_suppressed_total over the dispatchers. Every event of
// these tests is for a resource of its own, so any suppression is an event acknowledged
// without a call.
func (c *partitionCluster) suppressed(t *testing.T) int {
	t.Helper()
	sum := 0
	for _, d := range c.dispatchers {
		out := c.e.run(t, "exec", d, "/khook", "probe", "http://localhost:8080/metrics")
		for _, line := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(line, "khook_dispatcher_suppressed_total "); ok {
				var n float64
				_, err := fmt.Sscan(v, &n)
				require.NoError(t, err, line)
				sum += int(n)
			}
		}
	}
	return sum
}

// waitHealthy waits until every node answers /healthz: connected to the cluster, with its
// JetStream assets current. Each fault starts from a whole cluster, so that a node still
// catching up from the previous one does not add leader changes (and their duplicates) to
// the next.
func (c *partitionCluster) waitHealthy(t *testing.T) {
	t.Helper()
	for _, n := range c.nodes {
		waitFor(t, func() bool {
			_, err := c.monitor(n, "/healthz")
			return err == nil
		}, 2*time.Minute, n.name+" healthy")
	}
}

// hostPort is the loopback port a container's port is published on.
func hostPort(t *testing.T, e *engine, container string, port int) int {
	t.Helper()
	out := e.run(t, "port", container, fmt.Sprint(port))
	_, p, err := net.SplitHostPort(strings.Split(out, "\n")[0])
	require.NoError(t, err, out)
	var n int
	_, err = fmt.Sscan(p, &n)
	require.NoError(t, err)
	return n
}

// js connects to every node through its published port.
func (c *partitionCluster) js(t *testing.T) jetstream.JetStream {
	t.Helper()
	var urls []string
	for _, n := range c.nodes {
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", n.client))
	}
	// Short pings, as the stages have: a connection to a node that is cut off gets no reset,
	// and the default (two minutes, twice) would hold the test on it.
	nc, err := nats.Connect(strings.Join(urls, ","), nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond),
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return js
}

func (c *partitionCluster) node(name string) natsNode {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	panic("no node " + name)
}

// leader is the current leader of a stream, awaited while there is none.
func (c *partitionCluster) leader(t *testing.T, js jetstream.JetStream, stream string) string {
	t.Helper()
	var leader string
	waitFor(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := js.Stream(ctx, stream)
		if err != nil || st.CachedInfo().Cluster == nil {
			return false
		}
		leader = st.CachedInfo().Cluster.Leader
		return leader != ""
	}, time.Minute, stream+" to have a leader")
	return leader
}

// cut partitions a container from the NATS network and returns the function that heals
// it, reconnecting it under alias (none: its name only). A subtest that fails while the
// container is cut off heals it in its cleanup, so that the next subtest does not wait for
// a node that never comes back.
func (c *partitionCluster) cut(t *testing.T, container, alias string) (heal func()) {
	t.Helper()
	c.e.run(t, "network", "disconnect", c.natsNet, container)
	args := []string{"network", "connect"}
	if alias != "" {
		args = append(args, "--alias", alias)
	}
	args = append(args, c.natsNet, container)
	var once sync.Once
	var out string
	var err error
	connect := func() { once.Do(func() { out, err = c.e.try(context.Background(), args...) }) }
	t.Cleanup(connect)
	return func() {
		t.Helper()
		connect()
		require.NoError(t, err, "docker %s: %s", strings.Join(args, " "), out)
	}
}

// load posts events with the given prefix from workers senders, each retrying an event until
// it is accepted, as a webhook sender does; accepted[i] is when event i got its 202.
type load struct {
	accepted []atomic.Int64 // unix nanoseconds of the 202
	refused  atomic.Int64
	done     chan struct{}
	// held closes when release is called; no event from hold on is posted before.
	held    chan struct{}
	release func()
}

// post starts the senders. Events from index hold on wait for l.release(), so that a fault
// injected after the first part is surely met by the rest: on a fast machine the whole load
// could otherwise be accepted before the fault, and the test would measure nothing.
func (c *partitionCluster) post(prefix string, total, workers, hold int) *load {
	l := &load{accepted: make([]atomic.Int64, total), done: make(chan struct{}), held: make(chan struct{})}
	var once sync.Once
	l.release = func() { once.Do(func() { close(l.held) }) }
	client := &http.Client{Timeout: 10 * time.Second}
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= total {
					return
				}
				if i >= hold {
					<-l.held
				}
				body := fmt.Sprintf(`{"type":"deploy-failed","namespace":"shop","resourceName":"%s-%d","message":"m"}`, prefix, i)
				for {
					resp, err := client.Post(fmt.Sprintf("http://127.0.0.1:%d/webhook", c.webhook), "application/json", strings.NewReader(body))
					if err == nil {
						resp.Body.Close()
						if resp.StatusCode == http.StatusAccepted {
							l.accepted[i].Store(time.Now().UnixNano())
							break
						}
					}
					l.refused.Add(1)
					time.Sleep(100 * time.Millisecond) // the sender's retry delay, not synchronisation
				}
			}
		}()
	}
	go func() { wg.Wait(); close(l.done) }()
	return l
}

// wait waits for every event to be accepted.
func (l *load) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(timeout):
		t.Fatalf("only %d of %d events accepted within %s", l.count(), len(l.accepted), timeout)
	}
}

func (l *load) count() int {
	n := 0
	for i := range l.accepted {
		if l.accepted[i].Load() != 0 {
			n++
		}
	}
	return n
}

// firstAfter is the first acceptance after t, or zero.
func (l *load) firstAfter(t time.Time) time.Time {
	var first int64
	for i := range l.accepted {
		if a := l.accepted[i].Load(); a > t.UnixNano() && (first == 0 || a < first) {
			first = a
		}
	}
	if first == 0 {
		return time.Time{}
	}
	return time.Unix(0, first)
}

// longestPause is the longest time between two consecutive acceptances in [from, to].
func (l *load) longestPause(from, to time.Time) time.Duration {
	var at []int64
	for i := range l.accepted {
		if a := l.accepted[i].Load(); a >= from.UnixNano() && a <= to.UnixNano() {
			at = append(at, a)
		}
	}
	sort.Slice(at, func(i, j int) bool { return at[i] < at[j] })
	var longest time.Duration
	for i := 1; i < len(at); i++ {
		longest = max(longest, time.Duration(at[i]-at[i-1]))
	}
	return longest
}

func (l *load) acceptedBetween(from, to time.Time) int {
	n := 0
	for i := range l.accepted {
		if a := l.accepted[i].Load(); a > from.UnixNano() && a < to.UnixNano() {
			n++
		}
	}
	return n
}

// delivered waits until the agent has a call for every event of prefix, and returns the
// calls per event.
func (c *partitionCluster) delivered(t *testing.T, prefix string, total int, timeout time.Duration) map[string]int {
	t.Helper()
	deadline := time.After(timeout)
	for {
		counts := resources(c.agent)
		n := 0
		for i := range total {
			if counts[fmt.Sprintf("%s-%d", prefix, i)] > 0 {
				n++
			}
		}
		if n == total {
			return counts
		}
		select {
		case <-c.agent.Changed():
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			var missing []string
			for i := range total {
				if name := fmt.Sprintf("%s-%d", prefix, i); counts[name] == 0 && len(missing) < 20 {
					missing = append(missing, name)
				}
			}
			t.Fatalf("the agent saw %d of %d %s events within %s; missing %v\n%s", n, total, prefix, timeout, missing, c.diagnose(t, missing))
		}
	}
}

// diagnose says where the missing events are: the streams' and consumers' state, and every
// stored message and dead letter that names one of them.
func (c *partitionCluster) diagnose(t *testing.T, missing []string) string {
	js := c.js(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var b strings.Builder
	for _, name := range []string{"KHOOK_RAW", "KHOOK_EVENTS", "KHOOK_DLQ"} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", name, err)
			continue
		}
		info := st.CachedInfo()
		fmt.Fprintf(&b, "%s: %d messages, first %d last %d, leader %s\n", name, info.State.Msgs, info.State.FirstSeq, info.State.LastSeq, info.Cluster.Leader)
		for ci := range st.ListConsumers(ctx).Info() {
			fmt.Fprintf(&b, "  consumer %s: pending %d, ack pending %d, redelivered %d, delivered %d, ack floor %d\n",
				ci.Name, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.Delivered.Stream, ci.AckFloor.Stream)
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0; seq++ {
			m, err := st.GetMsg(ctx, seq)
			if err != nil {
				continue
			}
			for _, name := range missing {
				if strings.Contains(string(m.Data), `"`+name+`"`) {
					fmt.Fprintf(&b, "  %s seq %d subject %s headers %v\n", name, seq, m.Subject, m.Header)
				}
			}
		}
	}
	return b.String()
}

func dupsOf(counts map[string]int, prefix string, total int) int {
	d := 0
	for i := range total {
		d += counts[fmt.Sprintf("%s-%d", prefix, i)] - 1
	}
	return d
}

// TestNATSPartitions cuts a containerised three-node NATS cluster (R3 streams) and khook's
// stages apart with Docker networks, as a switch or a cloud zone would, while events flow:
// the stream leader for 20 s, the minority node with clients on it, and a dispatcher in the
// middle of its calls. Nothing acknowledged is lost; duplicate calls stay within the
// documented bounds (docs/design-decisions.md, "The duplicate calls that remain").
func TestNATSPartitions(t *testing.T) {
	c := startPartitionCluster(t)
	js := c.js(t)
	const workers = 16 // dispatcher.workers: the calls one dispatcher has in flight at most
	bound := len(c.dispatchers) * workers

	t.Run("stream leader cut off for 20s", func(t *testing.T) {
		c.waitHealthy(t)
		const total = 10000
		l := c.post("lead", total, 8, total/2)
		defer l.release()
		waitFor(t, func() bool { return l.count() >= total/4 }, 3*time.Minute, "a quarter of the events accepted")
		leader := c.leader(t, js, "KHOOK_RAW")
		node := c.node(leader)
		cutAt := time.Now()
		heal := c.cut(t, node.container, node.name)
		l.release()
		newLeader := ""
		waitFor(t, func() bool {
			newLeader = c.leader(t, js, "KHOOK_RAW")
			return newLeader != leader
		}, time.Minute, "a new KHOOK_RAW leader in the majority")
		elected := time.Since(cutAt)
		time.Sleep(20*time.Second - time.Since(cutAt)) // the partition's length, not synchronisation
		healAt := time.Now()
		heal()
		waitFor(t, func() bool {
			_, err := c.monitor(node, "/healthz")
			return err == nil
		}, 2*time.Minute, leader+" to rejoin and catch up")
		caughtUp := time.Since(healAt)
		l.wait(t, 5*time.Minute)
		counts := c.delivered(t, "lead", total, 5*time.Minute)
		pause := l.longestPause(cutAt.Add(-time.Second), healAt.Add(10*time.Second))
		dups := dupsOf(counts, "lead", total)
		t.Logf("KHOOK_RAW leader %s cut off for 20s during %d events: new leader %s elected after %s; the longest pause between two accepted events was %s; "+
			"%d accepted while it was cut off; it rejoined and caught up %s after the heal; %d refusals retried by senders; "+
			"every accepted event delivered, %d duplicate calls (bound %d)",
			leader, total, newLeader, elected.Round(time.Millisecond), pause.Round(time.Millisecond),
			l.acceptedBetween(cutAt, healAt), caughtUp.Round(time.Millisecond), l.refused.Load(), dups, bound)
		require.LessOrEqual(t, dups, bound, "duplicates: at most the calls in flight across the replicas")
		require.Zero(t, c.suppressed(t), "no event acknowledged as suppressed")
	})

	t.Run("minority node cut off with clients on it", func(t *testing.T) {
		c.waitHealthy(t)
		const total = 2000
		// The node leading neither stream the webhook path writes to, so the majority keeps
		// both leaders; the clients connected to it must move.
		leaders := map[string]bool{c.leader(t, js, "KHOOK_RAW"): true, c.leader(t, js, "KHOOK_EVENTS"): true}
		clientsOn := func(n natsNode) int {
			body, err := c.monitor(n, "/connz")
			if err != nil {
				return -1
			}
			return strings.Count(body, `"name": "khook"`)
		}
		// Of the nodes that lead neither, the one with the most stage connections, so that
		// their fail-over is part of the test whenever the cluster allows.
		var minority natsNode
		for _, n := range c.nodes {
			if !leaders[n.name] && (minority.name == "" || clientsOn(n) > clientsOn(minority)) {
				minority = n
			}
		}
		l := c.post("minority", total, 8, total/2)
		defer l.release()
		waitFor(t, func() bool { return l.count() >= total/4 }, 2*time.Minute, "a quarter of the events accepted")
		before, all := clientsOn(minority), 0
		for _, n := range c.nodes {
			all += clientsOn(n)
		}
		cutAt := time.Now()
		heal := c.cut(t, minority.container, minority.name)
		l.release()
		// The clients that were on it reconnect to the majority: the majority then holds
		// every stage's connections.
		waitFor(t, func() bool {
			sum := 0
			for _, n := range c.nodes {
				if n.name != minority.name {
					sum += clientsOn(n)
				}
			}
			return sum == all
		}, time.Minute, "every stage connected to the majority")
		failover := time.Since(cutAt)
		waitFor(t, func() bool { return l.acceptedBetween(cutAt, time.Now()) >= 100 }, time.Minute, "the majority to accept events")
		accepting := l.firstAfter(cutAt).Sub(cutAt)
		heal()
		l.wait(t, 3*time.Minute)
		counts := c.delivered(t, "minority", total, 3*time.Minute)
		dups := dupsOf(counts, "minority", total)
		t.Logf("minority node %s (%d khook clients) cut off: the majority accepted the next event %s after the cut, its clients failed over within %s; "+
			"all %d events delivered, %d duplicate calls",
			minority.name, before, accepting.Round(time.Millisecond), failover.Round(time.Millisecond), total, dups)
		require.LessOrEqual(t, dups, bound)
		require.Zero(t, c.suppressed(t), "no event acknowledged as suppressed")
	})

	t.Run("dispatcher cut off mid-call", func(t *testing.T) {
		c.waitHealthy(t)
		const total = 24
		// Slow calls, so that a dispatcher is surely in the middle of some when it is cut.
		c.agentDelay.Store(int64(3 * time.Second))
		defer c.agentDelay.Store(0)
		l := c.post("midcall", total, 4, total)
		var victim, victimIP string
		postedAt := time.Now()
		waitFor(t, func() bool {
			for ip, n := range c.inflight.busy() {
				if name, ok := c.dispatcherAddrIP[ip]; ok && n >= 2 {
					victim, victimIP = name, ip
					return true
				}
			}
			return false
		}, time.Minute, "a dispatcher with calls in flight")
		cutAt := time.Now()
		heal := c.cut(t, victim, "")
		// The calls it began before it was cut off: each may be made once more.
		held := c.inflight.startedBy(victimIP, postedAt, time.Now())
		l.wait(t, time.Minute)
		// Its calls finish (the agent is on another network), but it cannot record or
		// acknowledge them: after the ack wait (8s) the other dispatcher gets them again.
		counts := c.delivered(t, "midcall", total, 2*time.Minute)
		redelivered := time.Since(cutAt)
		heal()
		dups := dupsOf(counts, "midcall", total)
		var repeated []string
		for name, n := range counts {
			if strings.HasPrefix(name, "midcall-") && n > 1 {
				repeated = append(repeated, name)
			}
		}
		sort.Strings(repeated)
		t.Logf("dispatcher %s cut off from NATS after beginning %d calls: every event delivered within %s of the cut; %d duplicate calls %v (bound: its calls in flight, at most %d)",
			victim, held, redelivered.Round(time.Millisecond), dups, repeated, workers)
		require.LessOrEqual(t, dups, held, "duplicates: at most the calls the cut-off dispatcher had begun")
		require.LessOrEqual(t, held, workers)
	})
}
