package test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/khook/khook/consumers/dispatch/state"
	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/deadletter"
	"github.com/khook/khook/streams/outcome"
)

// Agent behaviours the soak switches between.
const (
	agentNormal   int32 = iota
	agentSlow           // answers after 800 ms
	agentFailing        // 503: retried
	agentRefusing       // 400: dead-lettered
)

// fault is one thing the soak's driver did, and when.
type fault struct {
	at   time.Time
	what string
}

// TestSoakGuarantees is the randomized soak of the delivery guarantees. A producer, three
// mappers and three dispatchers run as processes, with hooks from a real API server, while
// 20,000 webhook events are sent (each retried until it is accepted with 202, as a sender
// would). Three kinds of events take the three paths a task can take:
//
//   - pod-restart, one per pod: an ungrouped Hook, one task per event (the per-event path);
//   - incident, one per resource, whose reason cycles so that groups open, are sent, end
//     and recur: a grouped Hook (groupBy reason) whose agent has a budget of 2 tasks at once;
//   - disk-full: an ungrouped Hook whose agent has a budget of 1 task at once (the queue).
//
// Meanwhile a driver, every half second or so, does one of: SIGTERM and restart a replica
// (a rolling restart), SIGKILL and restart one, restart NATS, make the agent slow, failing
// or refusing for a moment, edit the Hooks (a label, a Hook created and deleted), edit the
// grouped Hook's prompt while its groups wait, create and delete a second grouped Hook (its
// waiting events are dead-lettered when it goes), or run the real `khook replay` of the
// recent incidents. At the end:
//
//   - every event accepted with 202 was delivered (in its own task, or listed in its
//     group's) or dead-lettered with a reason;
//   - no task was called after it settled, and every second call of a task, and every event
//     in two group tasks, falls in a documented window (a dispatcher killed, NATS restarted,
//     or a replay, between the two);
//   - no budget was exceeded at any moment: the agent counts the calls in flight per agent.
//
// A recurring incident whose task were dropped, or a waiting group lost to a Hook edit,
// would leave its events neither delivered nor dead-lettered. The seed is printed;
// SOAK_SEED=<seed> replays the same fault sequence, SOAK_EVENTS changes the number of
// events.
func TestSoakGuarantees(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SOAK_SEED"); s != "" {
		var err error
		seed, err = strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "SOAK_SEED")
	}
	total := 20000
	if s := os.Getenv("SOAK_EVENTS"); s != "" {
		var err error
		total, err = strconv.Atoi(s)
		require.NoError(t, err, "SOAK_EVENTS")
	}
	t.Logf("soak seed %d (SOAK_SEED=%d replays it), %d events", seed, seed, total)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	began := time.Now()

	// The cluster and its Hooks.
	c := startHookCluster(t, "soak")
	hooks := c.hooks
	_, err := hooks.Create(context.Background(), hookObject("soak", "restarts", "Pod {{.ResourceName}} restarted", ""), metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = hooks.Create(context.Background(), incidentsHook("incidents", "grouped", 0), metav1.CreateOptions{})
	require.NoError(t, err)
	disks := hookObject("soak", "disks", "Disk {{.ResourceName}} full", "")
	setEntry(disks, "disk-full", "disks")
	_, err = hooks.Create(context.Background(), disks, metav1.CreateOptions{})
	require.NoError(t, err)

	// The agent, behind a switch that makes it slow, failing or refusing, and a count of the
	// calls each agent has in flight, for the budgets.
	agent := demoagent.New()
	var mode atomic.Int32
	budgets := newInFlight()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer budgets.enter(r.URL.Path)()
		switch mode.Load() {
		case agentSlow:
			time.Sleep(800 * time.Millisecond) // a slow agent, not synchronisation
		case agentFailing:
			http.Error(w, "injected outage", http.StatusServiceUnavailable)
			return
		case agentRefusing:
			http.Error(w, "injected refusal", http.StatusBadRequest)
			return
		}
		agent.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)

	// Half the seeds run the producer as the edge of a cluster of many (khook edge, cluster
	// soak-eu): the events are stored at the edge, forwarded over a leaf connection to the
	// NATS server the other stages use (the hub), and every key, suppression window, group
	// and delivery id is scoped by the cluster. The same guarantees must hold, through the
	// edge's restarts and the hub's.
	cluster := ""
	if rng.IntN(2) == 0 {
		cluster = "soak-eu"
	}
	t.Logf("cluster: %q", cluster)

	// NATS, and the stages as processes.
	dir := t.TempDir()
	natsPort := freePort(t)
	natsArgs := []string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(natsPort), "-sd", dir + "/nats"}
	leafPort := freePort(t)
	if cluster != "" {
		conf := filepath.Join(dir, "hub.conf")
		require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf(
			"jetstream { store_dir: %q, domain: hub }\nleafnodes { listen: 127.0.0.1:%d, no_advertise: true, authorization { user: edge, password: soak } }\n",
			dir+"/nats", leafPort)), 0o600))
		natsArgs = []string{"-a", "127.0.0.1", "-p", strconv.Itoa(natsPort), "-c", conf}
	}
	natsProc, natsURL := startNATSArgs(t, natsPort, natsArgs...)
	hubConfig := ""
	if cluster != "" {
		hubConfig = "clusters:\n  - name: " + cluster + "\n"
	}
	base := pipelineFiles{dir: dir, natsURL: natsURL, agentURL: srv.URL, webhook: freePort(t), metrics: freePort(t), probes: freePort(t),
		mapperAckWait: "2s", dispatcherAckWait: "4s", kubeconfig: c.Kubeconfig,
		extraMappings: "  - eventSource: webhook\n    eventType: pod-restart\n    severity: warning\n" +
			"  - eventSource: webhook\n    eventType: incident\n    severity: error\n" +
			"  - eventSource: webhook\n    eventType: disk-full\n    severity: critical\n",
		extraConfig: hubConfig + "dispatcher:\n  budgets:\n" +
			"    - {agent: kagent/grouped, max_concurrent_tasks: 2, max_tasks_per_hour: 10000}\n" +
			"    - {agent: kagent/disks, max_concurrent_tasks: 1}\n" + os.Getenv("SOAK_EXTRA_CONFIG")}
	runOnce(t, "streams", "apply", "--config", base.write(t))
	var producers *stageSet
	var edgeURL string
	if cluster == "" {
		producers = newStageSet(t, "producer", base, 1)
	} else {
		// The producer is the cluster's edge: its own NATS server, a leaf of the hub's.
		edge := base
		edge.natsURL, edge.storeDir = "", dir+"/edge"
		edge.embeddedListen = "127.0.0.1:" + strconv.Itoa(freePort(t))
		edgeURL = "nats://" + edge.embeddedListen
		password := filepath.Join(dir, "leaf-password")
		require.NoError(t, os.WriteFile(password, []byte("soak\n"), 0o600))
		edge.extraConfig = fmt.Sprintf("cluster: %s\nedge:\n  hub:\n    url: nats-leaf://127.0.0.1:%d\n    username: edge\n    password_file: %s\n",
			cluster, leafPort, password)
		producers = newStageSet(t, "edge", edge, 1)
	}
	mappers := newStageSet(t, "mapper", base, 3)
	dispatchers := newStageSet(t, "dispatcher", base, 3)

	// The senders: every event is posted until it is accepted, as a webhook sender retries
	// on 503 or a refused connection.
	var accepted sync.Map   // resource → the id khook answered
	var acceptedAt sync.Map // resource → when
	var sent atomic.Int64
	next := make(chan int)
	var senders sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	for range 8 {
		senders.Go(func() {
			for i := range next {
				resource, body := soakEvent(i)
				for {
					req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/webhook", base.webhook), strings.NewReader(body))
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("Idempotency-Key", "soak-"+resource)
					resp, err := client.Do(req)
					if err == nil {
						var out struct{ ID string }
						_ = json.NewDecoder(resp.Body).Decode(&out)
						resp.Body.Close()
						if resp.StatusCode == http.StatusAccepted {
							accepted.Store(resource, out.ID)
							acceptedAt.Store(resource, time.Now())
							sent.Add(1)
							break
						}
					}
					time.Sleep(50 * time.Millisecond) // a sender's retry delay, not synchronisation
				}
			}
		})
	}
	go func() {
		for i := range total {
			next <- i
		}
		close(next)
	}()

	// The fault driver, on the test goroutine. It runs while events are sent, and a little
	// longer, so the tail of the run sees faults too.
	var faults []fault
	record := func(what string) { faults = append(faults, fault{at: time.Now(), what: what}) }
	sendersDone := make(chan struct{})
	go func() { senders.Wait(); close(sendersDone) }()
	tail := time.After(24 * time.Hour)
	edits, prompts, extra := 0, 0, false
	var replays []string
drive:
	for {
		select {
		case <-sendersDone:
			sendersDone = nil
			tail = time.After(5 * time.Second)
		case <-tail:
			break drive
		case <-time.After(time.Duration(300+rng.IntN(500)) * time.Millisecond):
		}
		set := []*stageSet{producers, mappers, dispatchers}[rng.IntN(3)]
		i := rng.IntN(len(set.procs))
		switch action := rng.IntN(13); {
		case action < 2:
			record("sigterm " + set.stage)
			set.terminateAndRestart(i)
		case action < 4:
			record("sigkill " + set.stage)
			set.killAndRestart(i)
		case action == 4:
			record("nats restart")
			require.NoError(t, natsProc.stop(t))
			natsProc, _ = startNATSArgs(t, natsPort, natsArgs...)
		case action < 8:
			m := []int32{agentSlow, agentFailing, agentRefusing}[rng.IntN(3)]
			record(fmt.Sprintf("agent mode %d", m))
			mode.Store(m)
			time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond) // how long the agent misbehaves
			mode.Store(agentNormal)
		case action == 10:
			// The grouped Hook's prompt changes while its groups gather and wait.
			prompts++
			record("prompt edit")
			patch := fmt.Sprintf(`{"spec":{"eventConfigurations":[{"eventType":"incident","agentRef":{"name":"grouped","namespace":"kagent"},"prompt":%q}]}}`,
				incidentPrompt(prompts))
			_, err := hooks.Patch(context.Background(), "incidents", types.MergePatchType, []byte(patch), metav1.PatchOptions{})
			require.NoError(t, err)
		case action == 11:
			// A second grouped Hook for incidents comes and goes: what it gathered when it
			// goes is dead-lettered.
			if extra {
				record("extra hook deleted")
				require.NoError(t, hooks.Delete(context.Background(), "extra", metav1.DeleteOptions{}))
			} else {
				record("extra hook created")
				_, err := hooks.Create(context.Background(), incidentsHook("extra", "extra", 0), metav1.CreateOptions{})
				require.NoError(t, err)
			}
			extra = !extra
		case action == 12:
			// The operator replays the recent incidents: copies of events their groups
			// already counted are not counted again; the others make new tasks.
			record("replay")
			code, out := khookCmd(t, "replay", "--config", dispatchers.cfgs[0], "--through", "mapper", "--type", "incident", "--since", "20s")
			replays = append(replays, fmt.Sprintf("exit %d: %s", code, strings.TrimSpace(lastLine(out))))
		default:
			// Edits that do not change what a task is: a label on the Hook, and a second
			// Hook for another event type, created and deleted.
			edits++
			record("hook edit")
			// A merge patch, as kubectl label does: the status writer updates the Hook too.
			patch := fmt.Sprintf(`{"metadata":{"labels":{"edit":"%d"}}}`, edits)
			_, err := hooks.Patch(context.Background(), "restarts", types.MergePatchType, []byte(patch), metav1.PatchOptions{})
			require.NoError(t, err)
			if edits%2 == 1 {
				other := hookObject("soak", "other", "OOM {{.ResourceName}}", "")
				other.Object["spec"].(map[string]any)["eventConfigurations"].([]any)[0].(map[string]any)["eventType"] = "oom-kill"
				_, err = hooks.Create(context.Background(), other, metav1.CreateOptions{})
			} else {
				err = hooks.Delete(context.Background(), "other", metav1.DeleteOptions{})
			}
			require.NoError(t, err)
		}
	}
	mode.Store(agentNormal)
	sending := time.Since(began)

	// Everything settles: what the edge stored to the hub, the raw stream through the
	// mappers, the events through the dispatchers.
	js := connectJS(t, natsURL)
	topo := streams.Default()
	if cluster != "" {
		edgeJS := connectJS(t, edgeURL)
		hubTopo := topo
		hubTopo.Edges = []string{cluster}
		forwarding := time.Now()
		require.Eventually(t, func() bool {
			st, err := edgeJS.Stream(context.Background(), topo.Raw.Name)
			if err != nil {
				return false
			}
			edges, err := streams.Edges(context.Background(), js, hubTopo)
			return err == nil && edges[0].Forwarded == st.CachedInfo().State.LastSeq && edges[0].Lag == 0
		}, 5*time.Minute, 100*time.Millisecond, "the hub has every event the edge stored")
		t.Logf("the hub had every event of the edge %s after the senders and faults stopped", time.Since(forwarding).Round(time.Millisecond))
	}
	for _, s := range []struct{ stream, durable string }{{topo.Raw.Name, topo.Mapper.Durable}, {topo.Events.Name, topo.Dispatcher.Durable}} {
		st, err := js.Stream(context.Background(), s.stream)
		require.NoError(t, err)
		info, err := st.Info(context.Background())
		require.NoError(t, err)
		waitSettled(t, js, s.stream, s.durable, info.State.LastSeq)
	}
	require.Equal(t, int64(total), sent.Load())
	// Then the work that waits: every group sent and every queued task done. The queue of
	// a budget of one task at a time drains at the agent's pace.
	settling := time.Now()
	dstate, err := state.Open(context.Background(), js, topo)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		groups, err := dstate.Groups(context.Background())
		if err != nil {
			return false
		}
		for _, g := range groups {
			if g.Open() {
				return false
			}
		}
		return true
	}, 10*time.Minute, 100*time.Millisecond, "every group sent and every queued task done")
	t.Logf("waiting work drained in %s", time.Since(settling).Round(time.Millisecond))

	// What the agents received, and what was dead-lettered, per event: each call lists the
	// events it is about (its resource names), and so does each dead letter.
	var calls []demoagent.Received
	byEvent := map[string][]soakCall{}
	for _, r := range agent.Received() {
		calls = append(calls, r)
		for _, resource := range soakResources(t, r) {
			byEvent[resource] = append(byEvent[resource], soakCall{id: r.MessageID, at: r.At, agent: r.Agent})
		}
	}
	dead := map[string]time.Time{}
	deadReasons := map[string]int{}
	_, err = ops.Scan(context.Background(), js, ops.Range{Stream: topo.DLQ.Name}, func(m ops.Msg) error {
		reason := m.Header.Get(deadletter.HeaderReason)
		require.NotEmpty(t, reason, "every dead letter has a reason")
		require.Equal(t, "dispatcher", m.Header.Get(deadletter.HeaderStage), "only the dispatcher gives up")
		hook := m.Header.Get(deadletter.HeaderHook)
		deadReasons[hook+" "+reason]++
		if reason == "hook-deleted" {
			require.Equal(t, "soak/extra", hook, "only the Hook the driver deletes loses its waiting events")
			return nil
		}
		if hook == "soak/extra" {
			return nil // the extra Hook's events are the main Hook's too
		}
		ce, err := cloudevent.Decode(m.Data)
		require.NoError(t, err)
		var ev mapping.Event
		require.NoError(t, json.Unmarshal(ce.Data, &ev))
		dead[ev.Resource.Name] = m.Time
		return nil
	})
	require.NoError(t, err)

	// Every accepted event was delivered or dead-lettered, and duplicates have a cause.
	var lost []string
	causes := map[string]int{}
	unexplained := 0
	accepted.Range(func(k, _ any) bool {
		resource := k.(string)
		var got []soakCall
		for _, c := range byEvent[resource] {
			if c.agent != "kagent/extra" { // the extra Hook's tasks come on top
				got = append(got, c)
			}
		}
		deadAt, dl := dead[resource]
		if len(got) == 0 && !dl {
			lost = append(lost, resource)
		}
		grouped := strings.HasPrefix(resource, "inc-")
		type pair struct{ first, again time.Time }
		var dups []pair
		for n := 1; n < len(got); n++ {
			if !grouped {
				require.Equal(t, got[0].id, got[n].id, "every call of one task has the task's messageId (%s)", resource)
			}
			dups = append(dups, pair{got[0].at, got[n].at})
		}
		if dl && len(got) > 0 {
			// Dead-lettered and also delivered, in either order.
			first, again := deadAt, got[0].at
			if again.Before(first) {
				first, again = again, first
			}
			dups = append(dups, pair{first, again})
		}
		for _, d := range dups {
			cause := explain(faults, d.first, d.again)
			if at, _ := acceptedAt.Load(resource); grouped && cause == "" && replayed(faults, at.(time.Time), d.again) {
				cause = "replayed"
			}
			if cause != "" {
				causes[cause]++
			} else {
				unexplained++
				t.Logf("duplicate for %s: calls at %s and %s, no fault between", resource, d.first.Format(time.StampMilli), d.again.Format(time.StampMilli))
			}
		}
		return true
	})
	// The same task called twice (one message id), whatever it lists, also needs a cause.
	firstCall := map[string]time.Time{}
	for _, r := range calls {
		if at, ok := firstCall[r.MessageID]; ok {
			if explain(faults, at, r.At) == "" {
				unexplained++
				t.Logf("task %s (%s) called at %s and again at %s, no fault between", r.MessageID, r.Agent, at.Format(time.StampMilli), r.At.Format(time.StampMilli))
			}
			continue
		}
		firstCall[r.MessageID] = r.At
	}
	sort.Strings(lost)
	kinds := map[string]int{}
	for _, f := range faults {
		kinds[f.what]++
	}
	limits := map[string]int{"/api/a2a/kagent/grouped/": 2, "/api/a2a/kagent/disks/": 1}
	peaks := budgets.peaks()
	t.Logf("soak seed %d: %d events in %s (sending and faults %s); faults %v; calls %d; dead letters %v; duplicate calls by cause %v, unexplained %d; budget peaks %v; replays %q",
		seed, total, time.Since(began).Round(time.Millisecond), sending.Round(time.Millisecond), kinds, len(calls), deadReasons, causes, unexplained, peaks, replays)
	if len(lost) > 0 {
		for _, r := range calls {
			for _, line := range strings.Split(r.Text, "\n") {
				if strings.Contains(line, "not listed") {
					t.Logf("task %s to %s: %s", r.MessageID, r.Agent, line)
				}
			}
		}
	}
	require.Empty(t, lost, "events accepted with 202 and neither delivered nor dead-lettered")
	checkDescribed(t, js, topo, rng, &accepted, byEvent, dead, cluster)
	require.Zero(t, unexplained, "duplicate calls outside the documented windows")
	for path, limit := range limits {
		require.LessOrEqual(t, peaks[path], limit, "calls in flight at once to %s, whose budget is %d", path, limit)
		require.Positive(t, peaks[path], "%s was called", path)
	}
	hourly := 0
	for _, r := range calls {
		if r.Agent == "kagent/grouped" {
			hourly++
		}
	}
	require.LessOrEqual(t, hourly, 10000, "kagent/grouped's hourly budget")
}

// soakEvent is the i-th event the soak sends: its resource (unique per event) and body.
func soakEvent(i int) (resource, body string) {
	switch i % 10 {
	case 0:
		// Ten reasons in turn, each for a few hundred events, then quiet for the others:
		// its group is sent, ends after groupInterval, and the incident recurs.
		resource = fmt.Sprintf("inc-%d", i)
		return resource, fmt.Sprintf(`{"type":"incident","namespace":"soak","resourceName":%q,"reason":"r%d","message":"down"}`, resource, i/400%10)
	case 5:
		resource = fmt.Sprintf("disk-%d", i)
		return resource, fmt.Sprintf(`{"type":"disk-full","namespace":"soak","resourceName":%q,"message":"full"}`, resource)
	}
	resource = fmt.Sprintf("pod-%d", i)
	return resource, fmt.Sprintf(`{"type":"pod-restart","namespace":"soak","resourceName":%q,"message":"back-off"}`, resource)
}

// soakCall is one call an event was part of.
type soakCall struct {
	id, agent string
	at        time.Time
}

// soakResources returns the events a call is about, from its first line: "Pod pod-1
// restarted", "Disk disk-2 full", or a group's "Incident r3 v1: inc-5 inc-10".
func soakResources(t *testing.T, r demoagent.Received) []string {
	line, _, _ := strings.Cut(r.Text, "\n")
	f := strings.Fields(line)
	require.GreaterOrEqual(t, len(f), 2, r.Text)
	if f[0] == "Incident" || f[0] == "Extra" {
		_, list, _ := strings.Cut(line, ":")
		return strings.Fields(list)
	}
	return f[1:2]
}

// incidentPrompt is the grouped Hook's prompt, version v.
func incidentPrompt(v int) string {
	return fmt.Sprintf("Incident {{.Group.Labels.reason}} v%d:{{range .Events}} {{.Resource.Name}}{{end}}", v)
}

// incidentsHook is a grouped Hook for incidents, by reason, calling agent.
func incidentsHook(name, agent string, v int) *unstructured.Unstructured {
	prompt := incidentPrompt(v)
	if name == "extra" {
		prompt = "Extra " + strings.TrimPrefix(prompt, "Incident ")
	}
	h := hookObject("soak", name, prompt, "")
	setEntry(h, "incident", agent)
	spec := h.Object["spec"].(map[string]any)
	spec["groupBy"] = []any{"reason"}
	spec["groupWait"] = "500ms"
	spec["groupInterval"] = "2s"
	// Every event is listed, so that each can be found in its task: past maxEventsPerTask
	// events are counted, not listed (docs/grouping.md), and a group that waits long for
	// its budget gathers more than the default 100.
	spec["maxEventsPerTask"] = int64(1000)
	return h
}

// setEntry sets the event type and agent of a Hook object's one entry.
func setEntry(h *unstructured.Unstructured, eventType, agent string) {
	ec := h.Object["spec"].(map[string]any)["eventConfigurations"].([]any)[0].(map[string]any)
	ec["eventType"] = eventType
	ec["agentRef"] = map[string]any{"name": agent, "namespace": "kagent"}
}

// inFlight counts the calls in flight per agent (URL path), and the most there ever were.
type inFlight struct {
	mu       sync.Mutex
	now, max map[string]int
}

func newInFlight() *inFlight { return &inFlight{now: map[string]int{}, max: map[string]int{}} }

// enter counts a call to path from now until the returned function is called.
func (f *inFlight) enter(path string) func() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now[path]++
	f.max[path] = max(f.max[path], f.now[path])
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.now[path]--
	}
}

func (f *inFlight) peaks() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]int, len(f.max))
	for k, v := range f.max {
		out[k] = v
	}
	return out
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndex(s, "\n")+1:]
}

// replayReach is how far back the soak's replays reach (their --since), with a margin for
// the time between an event's 202 and its storage.
const replayReach = 25 * time.Second

// replayed reports whether an event accepted at accepted was in the reach of a replay that
// ran before again: its copy, handled after its group ended, is the next incarnation's
// event, and makes a task of its own.
func replayed(faults []fault, accepted, again time.Time) bool {
	for _, f := range faults {
		if f.what == "replay" && f.at.Before(again) && !accepted.Before(f.at.Add(-replayReach)) && !accepted.After(f.at) {
			return true
		}
	}
	return false
}

// explain names the documented cause of a second call for a task first called at first and
// again at again: a dispatcher killed, or NATS restarted, between the agent's answer and the
// settled record. The fault may come up to the agent's timeout (2 s) plus a second before
// the first call was recorded, since that call may have been under way when it happened.
// For an event of a group, the same faults between its group's write and its
// acknowledgement make it come back; after its group ended, it is the next incarnation's.
func explain(faults []fault, first, again time.Time) string {
	for _, f := range faults {
		if f.at.Before(first.Add(-3*time.Second)) || f.at.After(again) {
			continue
		}
		switch f.what {
		case "sigkill dispatcher":
			return "dispatcher killed after the call"
		case "nats restart":
			return "nats restarted after the call"
		}
	}
	return ""
}

// terminateAndRestart sends SIGTERM to replica i, waits for it to drain and exit, and
// starts a new process in its place: one step of a rolling restart.
func (s *stageSet) terminateAndRestart(i int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	require.NoError(s.t, s.procs[i].stop(s.t), "%s %d exits 0 on SIGTERM", s.stage, i)
	s.procs[i] = start(s.t, fmt.Sprintf("khook %s %d (restarted)", s.stage, i), bins.khook(), s.stage, "--config", s.cfgs[i])
}

// checkDescribed asks `khook events describe` (ops.Describe) about 200 of the soak's events,
// chosen by the seed, and holds its answer to what the agents and the dead-letter stream
// saw: every event was mapped and matched; its own task ended (nothing left waiting or
// retrying); a task described as delivered, itself or through its group's task, names a
// message id the agent received for that event; and an event only dead-lettered is
// described as dead-lettered, with a dead letter's sequence; every id and event is of the
// producer's cluster, when it has one.
func checkDescribed(t *testing.T, js jetstream.JetStream, topo streams.Config, rng *rand.Rand, accepted *sync.Map,
	byEvent map[string][]soakCall, dead map[string]time.Time, cluster string) {
	t.Helper()
	var resources []string
	accepted.Range(func(k, _ any) bool {
		resources = append(resources, k.(string))
		return true
	})
	sort.Strings(resources)
	rng.Shuffle(len(resources), func(i, j int) { resources[i], resources[j] = resources[j], resources[i] })
	outcomes := map[outcome.Kind]int{}
	for _, resource := range resources[:min(200, len(resources))] {
		id, _ := accepted.Load(resource)
		d, err := ops.Describe(context.Background(), js, topo, id.(string))
		require.NoError(t, err, resource)
		require.Equal(t, "mapped", d.Mapping, "%s: %+v", resource, d)
		require.Equal(t, "matched", d.Dispatch, "%s: %+v", resource, d)
		if cluster != "" {
			require.True(t, strings.HasPrefix(d.ID, "webhook/@"+cluster+"/"), "%s: id %s is scoped by its cluster", resource, d.ID)
		}
		require.Equal(t, cluster, d.Event.Cluster, resource)
		called := map[string]bool{}
		for _, c := range byEvent[resource] {
			called[c.id] = true
		}
		var own []ops.TaskOutcome
		for _, task := range d.Tasks {
			if task.EventID == d.ID && task.ReplayID == "" && task.Hook != "soak/extra" {
				own = append(own, task)
			}
		}
		require.Len(t, own, 1, "%s: one task of its own Hook: %+v", resource, d.Tasks)
		task := own[0]
		kind, msgID, deadSeq := task.Outcome, task.MessageID, task.Latest.DeadLetterSeq
		if task.Outcome == outcome.Grouped {
			require.NotNil(t, task.Group, resource)
			kind, msgID = task.Group.Outcome, task.Group.MessageID
		}
		outcomes[kind]++
		_, dl := dead[resource]
		switch kind {
		case outcome.Delivered:
			require.True(t, called[msgID], "%s is described as delivered in task %s, which the agent did not get for it (it got %v)", resource, msgID, called)
		case outcome.DeadLettered:
			require.True(t, dl, "%s is described as dead-lettered, and no dead letter holds it", resource)
			if task.Outcome == outcome.DeadLettered {
				require.NotZero(t, deadSeq, resource)
			}
		default:
			require.Failf(t, "an event's task did not end", "%s: %s (%+v)", resource, kind, task)
		}
	}
	t.Logf("described %d events: %v", min(200, len(resources)), outcomes)
}
