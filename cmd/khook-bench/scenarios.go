package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/khook/khook/consumers/dispatch"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams/cloudevent"
)

// env is one scenario's world: a fresh NATS server with file storage, the processes under
// test, an A2A agent in the harness, and the receipts of events.
type env struct {
	cfg     *benchConfig
	name    string // the scenario's
	dir     string
	nats    *proc
	natsURL string
	nc      *nats.Conn
	js      jetstream.JetStream
	stages  []*proc
	agent   *demoagent.Server
	agentTS *httptest.Server
	recv    *receipts
	// stageEnv is added to every khook stage's environment (settings as KHOOK_ variables).
	stageEnv []string
	run      atomic.Int64 // distinguishes the ids of successive runs
}

func newEnv(cfg *benchConfig, name string) (*env, error) {
	dir, err := os.MkdirTemp(cfg.workDir, name+"-")
	if err != nil {
		return nil, err
	}
	e := &env{cfg: cfg, name: name, dir: dir, recv: newReceipts()}
	port := freePort()
	e.natsURL = fmt.Sprintf("nats://127.0.0.1:%d", port)
	if e.nats, err = startProc("nats-server", nil, cfg.natsBin, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", filepath.Join(dir, "nats")); err != nil {
		return nil, err
	}
	if err := waitListening(fmt.Sprintf("127.0.0.1:%d", port), e.nats); err != nil {
		return nil, err
	}
	if e.nc, err = nats.Connect(e.natsURL); err != nil {
		return nil, err
	}
	if e.js, err = jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(4096)); err != nil {
		return nil, err
	}
	// The agent answers every task at once (a no-op executor) and records when the task
	// named by its first line arrived.
	e.agent = demoagent.New()
	e.agent.OnMessage = func(r demoagent.Received) error {
		id, _, _ := strings.Cut(r.Text, "\n")
		e.recv.add(id, r.At)
		return nil
	}
	e.agentTS = httptest.NewServer(e.agent.Handler())
	return e, nil
}

func (e *env) close() {
	for _, p := range e.stages {
		p.stop()
	}
	if e.nc != nil {
		e.nc.Close()
	}
	if e.agentTS != nil {
		e.agentTS.Close()
	}
	if e.nats != nil {
		e.nats.stop()
	}
	_ = os.RemoveAll(e.dir)
}

// receipts records when each event id reached the end of the pipeline under test.
type receipts struct {
	mu     sync.Mutex
	at     map[string]time.Time
	notify chan struct{}
}

func newReceipts() *receipts {
	return &receipts{at: map[string]time.Time{}, notify: make(chan struct{}, 1)}
}

func (r *receipts) add(id string, t time.Time) {
	r.mu.Lock()
	if _, dup := r.at[id]; !dup {
		r.at[id] = t
	}
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *receipts) get(id string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.at[id]
	return t, ok
}

// waitAll waits until every id has a receipt, the timeout passes, or dead reports a stage
// that exited (nil: none did). It returns how many arrived and why it stopped early.
func (r *receipts) waitAll(ids []string, timeout time.Duration, dead func() error) (int, error) {
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		n := 0
		for _, id := range ids {
			if _, ok := r.at[id]; ok {
				n++
			}
		}
		r.mu.Unlock()
		if n == len(ids) {
			return n, nil
		}
		if err := dead(); err != nil {
			return n, err
		}
		select {
		case <-r.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			return n, fmt.Errorf("%d of %d events arrived within %s", n, len(ids), timeout)
		}
	}
}

// exited reports the first of the scenario's processes (its stages and the NATS server)
// that has exited, with the end of its output: a run waiting on a dead stage would
// otherwise wait out its whole timeout and blame the events.
func (e *env) exited() error {
	for _, p := range append([]*proc{e.nats}, e.stages...) {
		select {
		case <-p.done:
			status := "exit status 0"
			if p.err != nil {
				status = p.err.Error()
			}
			return fmt.Errorf("%s exited (%s); its last output:\n%s", p.name, status, tail(p.out.String(), 2000))
		default:
		}
	}
	return nil
}

// ids returns n fresh event ids for one run.
func (e *env) ids(n int) []string {
	run := e.run.Add(1)
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("r%d-%d", run, i)
	}
	return out
}

// payload is the event body: about 1 KiB of JSON naming the event id as its resource.
func payload(id string) []byte {
	pad := strings.Repeat("x", 1024-120-len(id))
	return []byte(fmt.Sprintf(`{"type":"deploy-failed","namespace":"bench","resourceName":%q,"message":"rollout stuck: %s"}`, id, pad))
}

// stageUsage sums what the stage processes (and separately NATS) used.
func (e *env) usage() (stages usage, natsU usage, peaks map[string]int64) {
	peaks = map[string]int64{}
	for _, p := range e.stages {
		u := p.usage()
		stages.CPU += u.CPU
		stages.RSS += u.RSS
		peaks[p.name] = u.Peak
	}
	return stages, e.nats.usage(), peaks
}

// measure runs the scenario's saturation run and its fixed-load runs and fills r.
//
// inflight bounds the sends in progress: HTTP requests on keep-alive connections, or
// JetStream publishes awaiting their acknowledgement.
func (e *env) measure(r *Result, inflight int, send func(id string) error) error {
	// Saturation: every event offered at once; the figure is events delivered per second.
	ids := e.ids(e.cfg.events)
	run := e.startSaturation()
	failed := offer(len(ids), inflight, func(i int) error { return send(ids[i]) })
	got, err := e.recv.waitAll(ids, e.cfg.timeout, e.exited)
	if err != nil {
		return fmt.Errorf("saturation run: %w (%d send errors)", err, failed)
	}
	run.finish(r, got)

	// Fixed offered loads: events sent on a schedule regardless of how the pipeline keeps up
	// (latency counts from the scheduled time, so a stall is not hidden). The scenarios that
	// compare end-to-end latency add one load relative to this machine: a fraction of the
	// raw two-stage pipeline's capacity with the agent call, measured in this run.
	rates := slices.Clone(e.cfg.rates)
	if r.Name == relativeTo {
		e.cfg.relativeRate = int(e.cfg.relative * r.EventsPerSec)
	}
	relative := 0
	if relativeScenarios[r.Name] && e.cfg.relativeRate > 0 {
		relative = e.cfg.relativeRate
		rates = append(rates, relative)
	}
	sem := make(chan struct{}, inflight)
	for i, rate := range rates {
		n := int(float64(rate) * e.cfg.rateDuration.Seconds())
		ids := e.ids(n)
		sent := make([]time.Time, n)
		e.resetAnon()
		begin := time.Now()
		var wg sync.WaitGroup
		for i, id := range ids {
			due := begin.Add(time.Duration(float64(i) / float64(rate) * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
			sent[i] = due
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				_ = send(id)
			}()
		}
		wg.Wait()
		// A fixed load past a scenario's capacity may leave events still queued at the
		// timeout: the summary counts those that arrived. A stage that died fails the run.
		if _, err := e.recv.waitAll(ids, e.cfg.timeout, e.exited); err != nil && e.exited() != nil {
			return fmt.Errorf("%d/s for %s: %w", rate, e.cfg.rateDuration, err)
		}
		var lat []time.Duration
		for i, id := range ids {
			if t, ok := e.recv.get(id); ok {
				lat = append(lat, t.Sub(sent[i]))
			}
		}
		l := summarize(rate, n, lat)
		l.Relative = relative > 0 && i == len(rates)-1
		if i == 0 {
			r.LowAnonMiB = e.anonPeak()
		}
		r.Latency = append(r.Latency, l)
	}
	// A stage that exited during the runs makes them meaningless: say so, with its output.
	if err := e.exited(); err != nil {
		return err
	}
	// Idle: what the stages hold once the load has passed.
	time.Sleep(2 * time.Second) // let the last batches' buffers be released; not synchronisation
	for _, p := range e.stages {
		u := p.usage()
		if rss := float64(u.RSS) / (1 << 20); rss > r.IdleRSSMiB {
			r.IdleRSSMiB, r.IdleAnonMiB = rss, float64(u.Anon)/(1<<20)
		}
	}
	_, _, peaks := e.usage()
	r.PeakRSSMiB = map[string]float64{}
	for name, b := range peaks {
		r.PeakRSSMiB[name] = float64(b) / (1 << 20)
	}
	return nil
}

// measureBatches is the saturation run for senders of batches: every event offered at once,
// batchSize to a request, with inflight requests in progress.
func (e *env) measureBatches(r *Result, inflight int, send func(ids []string) error) error {
	ids := e.ids(e.cfg.events)
	batches := slices.Collect(slices.Chunk(ids, batchSize))
	run := e.startSaturation()
	failed := offer(len(batches), inflight, func(i int) error { return send(batches[i]) })
	got, err := e.recv.waitAll(ids, e.cfg.timeout, e.exited)
	if err != nil {
		return fmt.Errorf("saturation run: %w (%d failed batches)", err, failed)
	}
	run.finish(r, got)
	return nil
}

// offer calls send for 0 … n-1, at most inflight calls at once, and returns how many failed.
func offer(n, inflight int, send func(i int) error) int64 {
	var failed atomic.Int64
	sem := make(chan struct{}, inflight)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := send(i); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	return failed.Load()
}

// saturation is one saturation run's clock and the processes' usage at its start.
type saturation struct {
	e             *env
	start         time.Time
	stages, natsU usage
}

// resetAnon starts a new peak of the stages' anonymous RSS.
func (e *env) resetAnon() {
	for _, p := range e.stages {
		p.anonPeak.Store(0)
	}
}

// anonPeak is the largest anonymous RSS of any stage since resetAnon, in MiB.
func (e *env) anonPeak() float64 {
	var peak int64
	for _, p := range e.stages {
		peak = max(peak, p.anonPeak.Load())
	}
	return float64(peak) / (1 << 20)
}

func (e *env) startSaturation() saturation {
	e.resetAnon()
	stages, natsU, _ := e.usage()
	return saturation{e: e, start: time.Now(), stages: stages, natsU: natsU}
}

// finish fills r's throughput, CPU per 10k events and peak RSS for events delivered now.
func (s saturation) finish(r *Result, events int) {
	elapsed := time.Since(s.start)
	stages, natsU, peaks := s.e.usage()
	r.Events = events
	r.EventsPerSec = float64(events) / elapsed.Seconds()
	per10k := 10000 / float64(max(events, 1))
	r.CPUPer10k = (stages.CPU - s.stages.CPU).Seconds() * per10k
	r.NATSCPUPer10k = (natsU.CPU - s.natsU.CPU).Seconds() * per10k
	r.PeakRSSMiB = map[string]float64{}
	for name, b := range peaks {
		r.PeakRSSMiB[name] = float64(b) / (1 << 20)
	}
	r.LoadAnonMiB = s.e.anonPeak()
}

func summarize(rate, sent int, lat []time.Duration) Latency {
	l := Latency{Rate: rate, Sent: sent, Received: len(lat)}
	if len(lat) == 0 {
		return l
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		i := int(p * float64(len(lat)-1))
		return float64(lat[i].Microseconds()) / 1000
	}
	l.P50, l.P99, l.P999, l.Max = pct(0.50), pct(0.99), pct(0.999), float64(lat[len(lat)-1].Microseconds())/1000
	return l
}

// publish stores body on subject with id as its message id and returns once JetStream
// acknowledged it; many run at once, so the publishes are pipelined.
func (e *env) publish(subject, id string, body []byte, header map[string]string) error {
	m := nats.NewMsg(subject)
	m.Data = body
	m.Header.Set(jetstream.MsgIDHeader, id)
	for k, v := range header {
		m.Header.Set(k, v)
	}
	f, err := e.js.PublishMsgAsync(m)
	if err != nil {
		return err
	}
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	}
}

func (e *env) createStream(name string, subjects ...string) error {
	_, err := e.js.CreateStream(context.Background(), jetstream.StreamConfig{Name: name, Subjects: subjects, Storage: jetstream.FileStorage})
	return err
}

func (e *env) createConsumer(stream, durable string) error {
	_, err := e.js.CreateOrUpdateConsumer(context.Background(), stream, jetstream.ConsumerConfig{
		Durable: durable, AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 1024, AckWait: 30 * time.Second})
	return err
}

func (e *env) startStage(name string, env []string, args ...string) (*proc, error) {
	p, err := startProc(name, env, args[0], args[1:]...)
	if err != nil {
		return nil, err
	}
	e.stages = append(e.stages, p)
	return p, nil
}

// The raw ceilings.

func rawPublish(e *env, r *Result) error {
	if err := e.createStream(streamS1, "bench.s1.>"); err != nil {
		return err
	}
	return e.measure(r, jsInflight, func(id string) error {
		err := e.publish(subjectS1, id, payload(id), nil)
		if err == nil {
			e.recv.add(id, time.Now())
		}
		return err
	})
}

// rawRelay is one stage: pull, republish, ack; arrival is the republished event's
// appearance on its subject.
func rawRelay(e *env, r *Result) error {
	if err := rawTopology(e); err != nil {
		return err
	}
	sub, err := e.nc.Subscribe(subjectS2, func(m *nats.Msg) { e.recv.add(m.Header.Get(jetstream.MsgIDHeader), time.Now()) })
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if _, err := e.startStage("relay", nil, e.cfg.self, "relay", "relay", e.natsURL); err != nil {
		return err
	}
	return e.measure(r, jsInflight, func(id string) error { return e.publish(subjectS1, id, payload(id), nil) })
}

// rawTwoStage is the minimal two-stage pipeline: relay, then pull and ack.
func rawTwoStage(e *env, r *Result) error {
	if err := rawTopology(e); err != nil {
		return err
	}
	sub, err := e.nc.Subscribe(subjectDone, func(m *nats.Msg) { e.recv.add(string(m.Data), time.Now()) })
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if _, err := e.startStage("relay", nil, e.cfg.self, "relay", "relay", e.natsURL); err != nil {
		return err
	}
	if _, err := e.startStage("consume", nil, e.cfg.self, "relay", "consume", e.natsURL); err != nil {
		return err
	}
	return e.measure(r, jsInflight, func(id string) error { return e.publish(subjectS1, id, payload(id), nil) })
}

// rawTwoStageCall is the two-stage pipeline whose second stage makes the agent call: what
// khook's end-to-end path does, without khook.
func rawTwoStageCall(e *env, r *Result) error {
	if err := rawTopology(e); err != nil {
		return err
	}
	if _, err := e.startStage("relay", nil, e.cfg.self, "relay", "relay", e.natsURL); err != nil {
		return err
	}
	if _, err := e.startStage("call", nil, e.cfg.self, "relay", "call", e.natsURL, e.agentTS.URL); err != nil {
		return err
	}
	return e.measure(r, jsInflight, func(id string) error { return e.publish(subjectS1, id, payload(id), nil) })
}

// rawCall is the dispatcher's baseline: pull, the same A2A call, ack.
func rawCall(e *env, r *Result) error {
	if err := rawTopology(e); err != nil {
		return err
	}
	if _, err := e.startStage("call", nil, e.cfg.self, "relay", "call", e.natsURL, e.agentTS.URL); err != nil {
		return err
	}
	return e.measure(r, jsInflight, func(id string) error { return e.publish(subjectS2, id, payload(id), nil) })
}

// rawCallConcurrent is the dispatcher's fair ceiling: the same A2A call with as many calls
// in flight as the dispatcher has workers.
func rawCallConcurrent(e *env, r *Result) error {
	if err := rawTopology(e); err != nil {
		return err
	}
	workers := strconv.Itoa(dispatch.DefaultConfig().Workers)
	if _, err := e.startStage("call", nil, e.cfg.self, "relay", "call", e.natsURL, e.agentTS.URL, workers); err != nil {
		return err
	}
	return e.measure(r, jsInflight, func(id string) error { return e.publish(subjectS2, id, payload(id), nil) })
}

// rawIngress is the webhook's fair ceiling: a net/http handler that publishes each body and
// answers 202 once JetStream stored it, under the same load generator.
func rawIngress(e *env, r *Result) error {
	if err := e.createStream(streamS1, "bench.s1.>"); err != nil {
		return err
	}
	port := freePort()
	p, err := e.startStage("ingress", nil, e.cfg.self, "relay", "ingress", e.natsURL, strconv.Itoa(port))
	if err != nil {
		return err
	}
	if err := waitListening(fmt.Sprintf("127.0.0.1:%d", port), p); err != nil {
		return err
	}
	return e.measure(r, httpInflight, e.postStored(fmt.Sprintf("http://127.0.0.1:%d/", port)))
}

func rawTopology(e *env) error {
	if err := e.createStream(streamS1, "bench.s1.>"); err != nil {
		return err
	}
	if err := e.createStream(streamS2, "bench.s2.>"); err != nil {
		return err
	}
	if err := e.createConsumer(streamS1, "s1"); err != nil {
		return err
	}
	return e.createConsumer(streamS2, "s2")
}

// khook's stages, as the processes users run.

func (e *env) khookConfig(webhookPort int) (string, error) {
	files := map[string]string{
		// The dispatcher may make as many calls at once to its one agent as it has workers,
		// as raw-call-16 does; by default it makes at most 8 to one endpoint.
		"khook.yaml": fmt.Sprintf("nats:\n  url: %s\nkagent:\n  url: %s\n  user_id: bench\nlog:\n  level: warn\nkubernetes:\n  hooks: file\n"+
			"dispatcher:\n  workers: %d\n  per_target_concurrency: %[3]d\n", e.natsURL, e.agentTS.URL, dispatch.DefaultConfig().Workers),
		"plugins.yaml": fmt.Sprintf("plugins:\n  - name: webhook\n    config:\n      address: 127.0.0.1\n      port: %d\n      path: /webhook\n      maxConcurrentRequests: 1024\n"+
			"      endpoints:\n        - path: /batch\n          batch: true\n          maxBatchSize: %d\n", webhookPort, batchSize),
		"event-mappings.yaml": "mappings:\n  - eventSource: webhook\n    eventType: deploy-failed\n    severity: error\n",
		"hooks.yaml": `- apiVersion: kagent.dev/v1alpha2
  kind: Hook
  metadata: {name: bench, namespace: bench}
  spec:
    eventConfigurations:
      - eventType: deploy-failed
        agentRef: {name: agent, namespace: bench}
        prompt: "{{.ResourceName}}"
`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(e.dir, name), []byte(body), 0o600); err != nil {
			return "", err
		}
	}
	return filepath.Join(e.dir, "khook.yaml"), nil
}

func (e *env) khookStage(stage, cfg string, extra ...string) error {
	return e.khookReplica(stage, stage, cfg, extra...)
}

// khookReplica starts `khook STAGE` as the process called name (dispatcher-2, say).
func (e *env) khookReplica(name, stage, cfg string, extra ...string) error {
	if e.cfg.profiles != "" {
		if err := os.MkdirAll(e.cfg.profiles, 0o755); err != nil {
			return err
		}
		extra = append(extra, "--cpuprofile", filepath.Join(e.cfg.profiles, e.name+"-"+name+".pprof"))
	}
	metrics, probes := freePort(), freePort()
	env := append([]string{fmt.Sprintf("KHOOK_SERVER_METRICS_ADDR=127.0.0.1:%d", metrics), fmt.Sprintf("KHOOK_SERVER_PROBES_ADDR=127.0.0.1:%d", probes)},
		e.stageEnv...)
	p, err := e.startStage(name, env, append([]string{e.cfg.khookBin, stage, "--config", cfg}, extra...)...)
	if err != nil {
		return err
	}
	return waitReady(fmt.Sprintf("http://127.0.0.1:%d/readyz", probes), p)
}

var httpClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024, MaxConnsPerHost: 1024}, Timeout: 60 * time.Second}

func post(url, id string) error {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(payload(id)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Id", id) // the raw ingress's message id
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("webhook answered %d", resp.StatusCode)
	}
	return nil
}

// startProducer starts khook's producer with the webhook plugin, and returns its port.
func (e *env) startProducer() (int, error) {
	port := freePort()
	cfg, err := e.khookConfig(port)
	if err != nil {
		return 0, err
	}
	return port, e.khookStage("producer", cfg)
}

// postStored is the sender for an HTTP ingress that answers 202 only once JetStream stored
// the event: the answer is the event's arrival.
func (e *env) postStored(url string) func(id string) error {
	return func(id string) error {
		err := post(url, id)
		if err == nil {
			e.recv.add(id, time.Now())
		}
		return err
	}
}

func khookWebhook(e *env, r *Result) error {
	port, err := e.startProducer()
	if err != nil {
		return err
	}
	return e.measure(r, httpInflight, e.postStored(fmt.Sprintf("http://127.0.0.1:%d/webhook", port)))
}

// batchSize is how many events one batch request carries.
const batchSize = 100

// khookWebhookBatch posts JSON arrays of batchSize events: the webhook's path for senders that
// can batch, compared with raw asynchronous publish.
func khookWebhookBatch(e *env, r *Result) error {
	port, err := e.startProducer()
	if err != nil {
		return err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/batch", port)
	return e.measureBatches(r, httpInflight/4, func(ids []string) error {
		var body bytes.Buffer
		body.WriteByte('[')
		for i, id := range ids {
			if i > 0 {
				body.WriteByte(',')
			}
			body.Write(payload(id))
		}
		body.WriteByte(']')
		resp, err := httpClient.Post(url, "application/json", &body)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return fmt.Errorf("webhook answered %d", resp.StatusCode)
		}
		now := time.Now()
		for _, id := range ids {
			e.recv.add(id, now)
		}
		return nil
	})
}

// khookStorm is a cluster-wide incident: --storm raw events (20,000) through the mapper and
// the dispatcher processes, 99% of them repeats of one resource inside the hook's
// suppression window, so the dispatcher's filtering path is measured without the agent call.
// It is done when the dispatcher has acknowledged every event; the agent must have received
// one task per distinct resource.
func khookStorm(e *env, r *Result) error {
	return storm(e, r, "", e.cfg.storm/100+1) // the repeated resource's first event, and each distinct one
}

// khookStormGrouped is the same incident with the hook grouping by namespace: the whole
// storm must become one task. groupWait covers the storm (5 s and 1 s per 1,000 events, 25 s
// for 20,000), as a hook's author sets it to the length of the incidents it gathers; the
// task goes when it ends. It is done when the agent has that task.
func khookStormGrouped(e *env, r *Result) error {
	wait := 5*time.Second + time.Duration(e.cfg.storm)*time.Millisecond
	return storm(e, r, fmt.Sprintf("    groupBy: [namespace]\n    groupWait: %s\n    groupInterval: 1h\n", wait), 1)
}

// storm runs the storm with the hook's spec extended by grouping, and checks the agent's
// task count. r's throughput is events acknowledged by the dispatcher per second; its
// TaskSeconds is the time from the first publish to the last task's arrival at the agent.
func storm(e *env, r *Result, grouping string, wantCalls int) error {
	stormEvents := e.cfg.storm
	cfg, err := e.khookConfig(freePort())
	if err != nil {
		return err
	}
	if grouping != "" {
		hooks := filepath.Join(e.dir, "hooks.yaml")
		b, err := os.ReadFile(hooks)
		if err != nil {
			return err
		}
		if err := os.WriteFile(hooks, []byte(strings.Replace(string(b), "  spec:\n", "  spec:\n"+grouping, 1)), 0o600); err != nil {
			return err
		}
	}
	for _, stage := range []string{"mapper", "dispatcher"} {
		if err := e.khookStage(stage, cfg); err != nil {
			return err
		}
	}
	ids := e.ids(stormEvents)
	resource := func(i int) string {
		if i%100 == 99 {
			return ids[i]
		}
		return "storm-pod"
	}
	began := time.Now()
	run := e.startSaturation()
	failed := offer(len(ids), jsInflight, func(i int) error {
		body := fmt.Sprintf(`{"type":"deploy-failed","namespace":"bench","resourceName":%q,"message":"crash loop %s"}`, resource(i), ids[i])
		env, _ := cloudevent.Encode(&cloudevent.Event{ID: ids[i], Source: "webhook", Type: "deploy-failed", Time: time.Now().UTC(),
			DataContentType: "application/json", Data: []byte(body)})
		return e.publish("khook.raw.webhook.deploy-failed", ids[i], env, nil)
	})
	if n := failed; n > 0 {
		return fmt.Errorf("%d publishes failed", n)
	}
	ctx := context.Background()
	deadline := time.Now().Add(e.cfg.timeout)
	for {
		cons, err := e.js.Consumer(ctx, "KHOOK_EVENTS", "khook-dispatcher")
		if err == nil {
			info, err := cons.Info(ctx)
			if err == nil && info.AckFloor.Stream >= uint64(stormEvents) && info.NumPending == 0 && info.NumAckPending == 0 {
				break
			}
		}
		if err := e.exited(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the dispatcher did not acknowledge %d events within %s", stormEvents, e.cfg.timeout)
		}
		time.Sleep(5 * time.Millisecond) // polling the consumer's state; nothing to wait on
	}
	run.finish(r, stormEvents)
	// A grouped task goes when its groupWait ends, after the events are acknowledged.
	for len(e.agent.Received()) < wantCalls && time.Now().Before(deadline) {
		select {
		case <-e.agent.Changed():
		case <-time.After(time.Until(deadline)):
		}
	}
	got := e.agent.Received()
	if len(got) != wantCalls {
		return fmt.Errorf("the agent received %d tasks, want %d", len(got), wantCalls)
	}
	if grouping != "" && !strings.Contains(got[0].Text, fmt.Sprintf("Events: %d on ", stormEvents)) {
		return fmt.Errorf("the task does not count all %d events:\n%s", stormEvents, got[0].Text)
	}
	last := began
	for _, g := range got {
		last = maxTime(last, g.At)
	}
	r.AgentCalls = len(got)
	r.TaskSeconds = last.Sub(began).Seconds()
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func rawEnvelope(id string) []byte {
	b, _ := cloudevent.Encode(&cloudevent.Event{ID: id, Source: "webhook", Type: "deploy-failed", Time: time.Now().UTC(),
		DataContentType: "application/json", Data: payload(id)})
	return b
}

func khookMapper(e *env, r *Result) error {
	cfg, err := e.khookConfig(freePort())
	if err != nil {
		return err
	}
	if err := e.khookStage("mapper", cfg); err != nil {
		return err
	}
	// The mapper scopes each id by its source (cloudevent.Key): "webhook/<id>".
	sub, err := e.nc.Subscribe("khook.events.>", func(m *nats.Msg) {
		e.recv.add(strings.TrimPrefix(m.Header.Get(jetstream.MsgIDHeader), "webhook/"), time.Now())
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	return e.measure(r, jsInflight, func(id string) error { return e.publish("khook.raw.webhook.deploy-failed", id, rawEnvelope(id), nil) })
}

func khookDispatcher(e *env, r *Result) error {
	cfg, err := e.khookConfig(freePort())
	if err != nil {
		return err
	}
	if err := e.khookStage("dispatcher", cfg); err != nil {
		return err
	}
	return e.measure(r, jsInflight, func(id string) error {
		ev := mapping.Event{ID: id, Source: "webhook", SourceType: "deploy-failed", Type: "deploy-failed", Severity: "error",
			Namespace: "bench", Resource: mapping.Resource{Name: id}, Message: "rollout stuck", Time: time.Now().UTC(), Data: payload(id)}
		data, _ := json.Marshal(ev)
		body, _ := cloudevent.Encode(&cloudevent.Event{ID: id, Source: "webhook", Type: "deploy-failed", Time: ev.Time,
			DataContentType: "application/json", Data: data})
		return e.publish("khook.events.deploy-failed", id, body, nil)
	})
}

func khookEndToEnd(e *env, r *Result) error {
	port := freePort()
	cfg, err := e.khookConfig(port)
	if err != nil {
		return err
	}
	for _, stage := range []string{"producer", "mapper", "dispatcher"} {
		if err := e.khookStage(stage, cfg); err != nil {
			return err
		}
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/webhook", port)
	return e.measure(r, httpInflight, func(id string) error { return post(url, id) })
}

// Sends in flight: JetStream publishes are pipelined deeply, as an async publisher does;
// HTTP clients hold a pool of keep-alive connections, as a busy webhook sender would.
const (
	jsInflight   = 1024
	httpInflight = 64
)
