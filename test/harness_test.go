// Package test holds khook's end-to-end tests: real JetStream, real khook processes, and a
// real A2A agent server, wired as a user would wire them.
package test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/khook/khook/app"
	"github.com/khook/khook/hook/hooktest"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/producers"
	"github.com/khook/khook/producers/webhook"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/streamstest"
)

// bins holds the binaries the tests run, each built on first use and once for the whole
// package, so that `go test -run` of an in-process test builds nothing.
var bins = &binaries{}

type binaries struct {
	dir                 string // made by TestMain, removed after every test
	khookOnce, natsOnce sync.Once
	khookPath, natsPath string
	khookErr, natsErr   error
}

// khook is the khook binary, built from this module.
func (b *binaries) khook() string {
	b.khookOnce.Do(func() { b.khookPath, b.khookErr = b.build("khook", "github.com/khook/khook/cmd/khook") })
	return must(b.khookPath, b.khookErr)
}

// natsServer is a standalone nats-server, built from the same module khook embeds, so the
// tests need nothing beyond the Go module proxy.
func (b *binaries) natsServer() string {
	b.natsOnce.Do(func() { b.natsPath, b.natsErr = b.build("nats-server", "github.com/nats-io/nats-server/v2") })
	return must(b.natsPath, b.natsErr)
}

func (b *binaries) build(name, pkg string) (string, error) {
	out := filepath.Join(b.dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %w\n%s", pkg, err, msg)
	}
	return out, nil
}

// must is a binary's path, or a panic that fails the test needing it with the build's error.
func must(path string, err error) string {
	if err != nil {
		panic(err)
	}
	return path
}

// atExit holds clean-ups of resources shared by several tests (container images), run after
// every test.
var atExit []func()

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "khook-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.dir = dir
	code := m.Run()
	for _, f := range atExit {
		f()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		// The kernel may hand a port it just freed out again before the process it was
		// meant for has bound it; a port is never given twice in one test binary.
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
}

var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// proc is a child process whose output is kept for the failure report.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs a process that is killed when the test ends; its output is logged if the test
// fails.
func start(t *testing.T, name string, bin string, args ...string) *proc {
	t.Helper()
	return startEnv(t, name, nil, bin, args...)
}

// startEnv is start with extra environment variables, which win over the test's own.
func startEnv(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(append(os.Environ(), "LOG_FORMAT=console"), env...)
	return startCmd(t, name, cmd)
}

// startCmd starts cmd, collecting its output, and kills it when the test ends (showing the
// output if the test failed).
func startCmd(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	require.NoError(t, p.cmd.Start(), name)
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("---- %s output ----\n%s", p.name, p.out.String())
		}
	})
	return p
}

// kill sends SIGKILL and waits for the process to exit.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and returns the exit error (nil for exit 0).
func (p *proc) stop(t *testing.T) error {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.done:
		return p.err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not stop within 30s of SIGTERM", p.name)
		return nil
	}
}

// waitReady waits until a khook process answers 200 on /readyz, failing early if it exits.
func waitReady(t *testing.T, p *proc, probesPort int) {
	t.Helper()
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", probesPort)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("%s exited before it was ready: %v\n%s", p.name, p.err, p.out.String())
		default:
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not ready after 60s\n%s", p.name, p.out.String())
}

// startNATS runs a standalone JetStream server process and returns its URL.
func startNATS(t *testing.T, storeDir string, port int) (*proc, string) {
	t.Helper()
	return startNATSArgs(t, port, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", storeDir)
}

func startNATSArgs(t *testing.T, port int, args ...string) (*proc, string) {
	t.Helper()
	p := start(t, "nats-server", bins.natsServer(), args...)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return p, url
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nats-server not listening\n%s", p.out.String())
	return nil, ""
}

// agent is a real a2a-go server on 127.0.0.1 that records every message.
func startAgent(t *testing.T) (*demoagent.Server, string) {
	t.Helper()
	a := demoagent.New()
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	return a, srv.URL
}

// waitReceived waits until the agent has received at least n messages and returns them.
func waitReceived(t *testing.T, a *demoagent.Server, n int, timeout time.Duration) []demoagent.Received {
	t.Helper()
	got, err := a.Await(n, timeout)
	require.NoError(t, err)
	return got
}

// pipelineFiles writes khook.yaml and its companion files for a test and returns the path
// of khook.yaml. ports: webhook, metrics, probes.
type pipelineFiles struct {
	dir                      string
	natsURL, agentURL        string
	webhook, metrics, probes int
	embeddedListen, storeDir string
	// mapperAckWait, when set, shortens how long a crashed mapper's messages wait for
	// redelivery.
	mapperAckWait string
	// dispatcherAckWait, when set, shortens redelivery after a dispatcher crash (the agent
	// timeout is lowered to fit under it).
	dispatcherAckWait string
	// hookWindow, when set, is the test hook's suppression window.
	hookWindow string
	// extraPlugins, extraMappings and extraHooks are appended to the generated files (list
	// items, indented as the files' own).
	extraPlugins, extraMappings, extraHooks string
	// extraNATS is appended under nats.embedded.
	extraNATS string
	// extraConfig is appended to khook.yaml (whole top-level sections other than streams);
	// extraStreams goes under streams (indented two spaces).
	extraConfig, extraStreams string
	// kubeconfig, when set, makes the dispatcher watch Hook resources in that cluster;
	// otherwise hooks come from hooks.yaml. hooksMode is then kubernetes.hooks (default
	// cluster).
	kubeconfig, hooksMode string
}

// embeddedPipeline is the files of a `khook run` on its own embedded NATS server (listening
// on a port of its own, for the test's reads) delivering to agentURL, with fresh ports.
func embeddedPipeline(t *testing.T, agentURL string) pipelineFiles {
	t.Helper()
	f := pipelineFiles{
		dir: t.TempDir(), agentURL: agentURL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		embeddedListen: "127.0.0.1:" + strconv.Itoa(freePort(t)),
	}
	f.storeDir = f.dir + "/data"
	return f
}

// embeddedURL is the embedded server's URL, for the test's own connection.
func (p pipelineFiles) embeddedURL() string { return "nats://" + p.embeddedListen }

func (p pipelineFiles) write(t *testing.T) string {
	t.Helper()
	natsBlock := "nats:\n  url: " + p.natsURL + "\n"
	if p.natsURL == "" {
		natsBlock = fmt.Sprintf("nats:\n  embedded:\n    store_dir: %s\n    listen: %s\n%s", p.storeDir, p.embeddedListen, p.extraNATS)
	}
	if p.mapperAckWait != "" || p.dispatcherAckWait != "" || p.extraStreams != "" {
		natsBlock += "streams:\n" + p.extraStreams
	}
	if p.mapperAckWait != "" {
		natsBlock += "  mapper:\n    ack_wait: " + p.mapperAckWait + "\n"
	}
	timeout := "10s"
	if p.dispatcherAckWait != "" {
		natsBlock += "  dispatcher:\n    ack_wait: " + p.dispatcherAckWait + "\n"
		timeout = "2s"
	}
	if p.kubeconfig != "" {
		natsBlock += "kubernetes:\n  hooks: " + cmp.Or(p.hooksMode, "cluster") + "\n  kubeconfig: " + p.kubeconfig + "\n  status_interval: 200ms\n"
	} else {
		natsBlock += "kubernetes:\n  hooks: file\n"
	}
	hooks := hooksYAML
	if p.hookWindow != "" {
		hooks = strings.Replace(hooks, "  spec:\n", "  spec:\n    suppressionWindow: "+p.hookWindow+"\n", 1)
	}
	files := map[string]string{
		"khook.yaml": natsBlock + fmt.Sprintf(`kagent:
  url: %s
  user_id: tester@example.com
  timeout: %s
server:
  metrics_addr: 127.0.0.1:%d
  probes_addr: 127.0.0.1:%d
`, p.agentURL, timeout, p.metrics, p.probes) + p.extraConfig,
		"plugins.yaml":        fmt.Sprintf("plugins:\n  - name: webhook\n    enabled: true\n    config:\n      address: 127.0.0.1\n      port: %d\n      path: /webhook\n", p.webhook) + p.extraPlugins,
		"event-mappings.yaml": "mappings:\n  - eventSource: webhook\n    eventType: deploy-failed\n    severity: error\n" + p.extraMappings,
		"hooks.yaml":          hooks + p.extraHooks,
	}
	for name, body := range files {
		require.NoError(t, os.WriteFile(filepath.Join(p.dir, name), []byte(body), 0o600))
	}
	return filepath.Join(p.dir, "khook.yaml")
}

// startStage starts one khook stage (producer, mapper, dispatcher) of the pipeline base
// describes, with its own directory and ports, and waits until it is ready.
func startStage(t *testing.T, base pipelineFiles, name string, args ...string) *proc {
	t.Helper()
	f := base
	f.dir, f.metrics, f.probes = t.TempDir(), freePort(t), freePort(t)
	p := start(t, name, bins.khook(), append(args, "--config", f.write(t))...)
	waitReady(t, p, f.probes)
	return p
}

var hooksYAML = hooktest.Fixture("hooks/shop-deployments.yaml")

// wantText is the message an agent receives for a deploy-failed event on resource with msg.
func wantText(resource, msg string) string {
	return "Deployment " + resource + " in shop failed: " + msg +
		"\nNamespace: shop\nMessage: " + msg + "\nResource: " + resource + "\nSource: webhook (deploy-failed)"
}

// postEvent POSTs a deploy-failed event and returns the status code and response body.
func postEvent(t *testing.T, port int, resource, msg string) (int, string) {
	t.Helper()
	body := fmt.Sprintf(`{"type":"deploy-failed","namespace":"shop","resourceName":%q,"message":%q}`, resource, msg)
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/webhook", port), "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// stripTime removes the trailing Time line, which depends on when the event was received.
func stripTime(text string) string {
	if i := strings.LastIndex(text, "\nTime: "); i >= 0 {
		return text[:i]
	}
	return text
}

// connectJS connects to a NATS server for the test's own reads and writes.
func connectJS(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return js
}

// publishBacklog publishes total deploy-failed raw events (ids ev-0 ...), exactly as the
// webhook producer publishes them.
func publishBacklog(t *testing.T, js jetstream.JetStream, total int) {
	t.Helper()
	pub := producers.NewPublisher(js, streams.Default().Subjects(), producers.NewMetrics(prometheus.NewRegistry()))
	go func() { _ = pub.Run(t.Context()) }()
	emit := pub.Emitter(webhook.Name)
	for i := range total {
		data := fmt.Sprintf(`{"type":"deploy-failed","namespace":"shop","resourceName":"svc-%d","message":"m"}`, i)
		_, err := emit(context.Background(), producers.Event{ID: fmt.Sprintf("ev-%d", i), Type: "deploy-failed", Data: json.RawMessage(data)})
		require.NoError(t, err)
	}
}

// inProcess is the whole pipeline in the test process, started as `khook run` starts it
// (app.New and Run, from khook.yaml and its files), on a JetStream server of the test's own,
// delivering to agentURL.
type inProcess struct {
	js      jetstream.JetStream
	topo    streams.Config
	webhook int // the webhook's port
	stop    func()
}

func startInProcess(t *testing.T, agentURL string) *inProcess {
	t.Helper()
	ns := streamstest.RunServer(t)
	files := pipelineFiles{dir: t.TempDir(), natsURL: ns.ClientURL(), agentURL: agentURL,
		webhook: freePort(t), metrics: freePort(t), probes: freePort(t)}
	cfg, err := config.Load(files.write(t), nil, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, app.All, zaptest.NewLogger(t))
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	// Ready means every stage runs: the webhook listens, and the dispatcher pulls.
	require.Eventually(t, func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", files.probes))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 10*time.Millisecond, "the pipeline gets ready")
	p := &inProcess{js: connectJS(t, ns.ClientURL()), topo: cfg.Streams, webhook: files.webhook}
	stopped := false
	p.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		require.NoError(t, <-errc, "every stage stops cleanly")
	}
	t.Cleanup(p.stop)
	return p
}

// rig is what a dispatcher test runs against: a NATS server with khook's streams, and an
// A2A agent.
type rig struct {
	dir, natsURL, agentURL string
	js                     jetstream.JetStream
	topo                   streams.Config
	agent                  *demoagent.Server
}

func startRig(t *testing.T) rig {
	t.Helper()
	r := rig{dir: t.TempDir(), topo: streams.Default()}
	_, r.natsURL = startNATS(t, r.dir+"/nats", freePort(t))
	r.js = connectJS(t, r.natsURL)
	_, err := streams.Apply(context.Background(), r.js, r.topo)
	require.NoError(t, err)
	r.agent, r.agentURL = startAgent(t)
	return r
}
