package dispatch

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/khook/khook/consumers/dispatch/state"
	"github.com/khook/khook/hook/hooktest"
	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
)

var groupedHooks = hooktest.Fixture("grouped-hooks.yaml")

// restart is a pod-restart event of pod, owned by the Deployment owner.
func restart(id, pod, owner string) mapping.Event {
	data, _ := json.Marshal(map[string]any{"owner": map[string]string{"kind": "Deployment", "name": owner}})
	return mapping.Event{ID: id, Type: "pod-restart", Severity: "warning", Resource: mapping.Resource{Kind: "Pod", Name: pod},
		Reason: "BackOff", Message: "Back-off restarting failed container", Data: data}
}

// groups reads the group records until cond holds for them.
func (h *harness) groupsWhen(t *testing.T, cond func(map[string]state.GroupRecord) bool) map[string]state.GroupRecord {
	t.Helper()
	var got map[string]state.GroupRecord
	require.Eventually(t, func() bool {
		var err error
		got, err = h.d.State().Groups(context.Background())
		return err == nil && cond(got)
	}, 30*time.Second, 10*time.Millisecond, "group records: %+v", got)
	return got
}

func sentAll(n int) func(map[string]state.GroupRecord) bool {
	return func(gs map[string]state.GroupRecord) bool {
		sent := 0
		for _, g := range gs {
			if g.Open() {
				return false
			}
			sent += g.Sent
		}
		return sent == n
	}
}

// podsIn returns the pod names a grouped task's prompt lists (the fixture's prompt ends with
// them).
func podsIn(text string) []string {
	first, _, _ := strings.Cut(text, "\n")
	_, list, _ := strings.Cut(first, ":")
	pods := strings.Fields(list)
	slices.Sort(pods)
	return pods
}

func pods(prefix string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s-%02d", prefix, i))
	}
	slices.Sort(out)
	return out
}

// Events of one owner become one task naming every resource; another owner is another
// group; a redelivered event is counted once.
func TestGroupGathersAnIncidentIntoOneTask(t *testing.T) {
	h := newHarnessHooks(t, testConfig(), "1.0", 30*time.Second, groupedHooks)
	n := 0
	for round := range 4 {
		for i := range 10 {
			h.publish(t, restart(fmt.Sprintf("web-%d-%d", i, round), fmt.Sprintf("web-%02d", i), "web"))
			n++
		}
	}
	h.publish(t, restart("api-0", "api-00", "api"))
	h.publish(t, restart("api-1", "api-01", "api"))
	h.settled(t, uint64(n+2))
	h.groupsWhen(t, sentAll(2))
	got := h.agent.Received()
	require.Len(t, got, 2, "one task per owner")
	slices.SortFunc(got, func(a, b demoagent.Received) int { return strings.Compare(a.Text, b.Text) })
	require.True(t, strings.HasPrefix(got[0].Text, "2 restarts in Deployment/api: "), got[0].Text)
	require.Equal(t, pods("api", 0, 2), podsIn(got[0].Text))
	require.True(t, strings.HasPrefix(got[1].Text, "40 restarts in Deployment/web: "), got[1].Text)
	require.Equal(t, pods("web", 0, 10), podsIn(got[1].Text))
	require.Contains(t, got[1].Text, "\nGroup: owner=Deployment/web\nEvents: 40 on 10 resources")
	require.Contains(t, got[1].Text, "\n- shop Pod/web-03 ×4: BackOff Back-off restarting failed container")
	require.NotEqual(t, got[0].ContextID, got[1].ContextID)
	require.Equal(t, float64(n+2), testutil.ToFloat64(h.d.metrics.groupedEvents))
}

// After a task, the group is suppressed for groupInterval: what arrives meanwhile is sent in
// one more task when the interval ends, listing only what is new.
func TestGroupIntervalSendsOnlyWhatIsNew(t *testing.T) {
	h := newHarnessHooks(t, testConfig(), "1.0", 30*time.Second, groupedHooks)
	for i := range 5 {
		h.publish(t, restart(fmt.Sprint("a", i), fmt.Sprintf("web-%02d", i), "web"))
	}
	h.settled(t, 5)
	first := h.groupsWhen(t, sentAll(1))
	var notified time.Time
	for _, g := range first {
		notified = g.Notified
	}
	for i := 5; i < 8; i++ {
		h.publish(t, restart(fmt.Sprint("b", i), fmt.Sprintf("web-%02d", i), "web"))
	}
	h.settled(t, 8)
	// The burst is held, due when the interval ends, not groupWait after it.
	for _, g := range h.groupsWhen(t, func(gs map[string]state.GroupRecord) bool {
		for _, g := range gs {
			return g.Pending == 3
		}
		return false
	}) {
		if g.Sent == 1 {
			require.Equal(t, notified.Add(4*time.Second), g.Due)
		}
	}
	got := waitReceivedN(t, h.agent, 2)
	require.Len(t, got, 2)
	require.False(t, got[1].At.Before(notified.Add(4*time.Second)), "not sent within groupInterval")
	require.Equal(t, pods("web", 5, 8), podsIn(got[1].Text), "only the new pods")
	require.Contains(t, got[1].Text, "Events: 3 on 3 resources since the last task (1 tasks, 8 events in all)")
	require.Equal(t, got[0].ContextID, got[1].ContextID, "one agent session per group")
	require.NotEqual(t, got[0].MessageID, got[1].MessageID)
}

// Two dispatchers share the groups: each group is sent by exactly one of them.
func TestGroupIsSentByOneReplica(t *testing.T) {
	h := newHarnessHooks(t, testConfig(), "1.0", 30*time.Second, groupedHooks)
	second := h.replica(t)
	for g := range 6 {
		for i := range 10 {
			h.publish(t, restart(fmt.Sprint(g, "-", i), fmt.Sprintf("p%d-%02d", g, i%3), fmt.Sprint("owner", g)))
		}
	}
	h.settled(t, 60)
	h.groupsWhen(t, sentAll(6))
	require.Len(t, h.agent.Received(), 6)
	delivered := testutil.ToFloat64(h.d.metrics.groupTasks.WithLabelValues("delivered")) +
		testutil.ToFloat64(second.metrics.groupTasks.WithLabelValues("delivered"))
	require.Equal(t, 6.0, delivered)
}

// replica starts another dispatcher on the harness's streams and bucket.
func (h *harness) replica(t *testing.T) *Dispatcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := state.Open(ctx, h.js, h.topo)
	require.NoError(t, err)
	d := New(h.js, h.topo, h.d.cfg, st, h.d.Hooks(), h.d.router, prometheus.NewRegistry(), zaptest.NewLogger(t))
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return d
}

func waitReceivedN(t *testing.T, a *demoagent.Server, n int) []demoagent.Received {
	t.Helper()
	got, err := a.Await(n, 30*time.Second)
	require.NoError(t, err)
	return got
}

// An agent at its hourly budget gets no more tasks; the rest wait, visible as waiting, and
// are neither dropped nor dead-lettered.
func TestHourlyBudgetHoldsTasks(t *testing.T) {
	cfg := testConfig()
	cfg.Budgets = []state.Budget{{Agent: "kagent/*", MaxTasksPerHour: 3}}
	h := newHarnessHooks(t, cfg, "1.0", 30*time.Second, groupedHooks)
	for i := range 10 {
		h.publish(t, mapping.Event{ID: fmt.Sprint("i", i), Type: "incident", Severity: "warning", Resource: mapping.Resource{Name: fmt.Sprint("svc-", i)}})
	}
	h.settled(t, 10)
	waitReceivedN(t, h.agent, 3)
	h.groupsWhen(t, func(gs map[string]state.GroupRecord) bool {
		waiting := 0
		for _, g := range gs {
			if g.Waiting(time.Now()) {
				waiting++
			}
		}
		return waiting == 7
	})
	// The metrics say the same, from the view every replica keeps.
	want := map[string]float64{
		"khook_dispatcher_tasks_waiting kagent/budgeted":            7,
		"khook_dispatcher_budget_in_use kagent/budgeted concurrent": 0,
		"khook_dispatcher_budget_in_use kagent/budgeted hourly":     3,
		"khook_dispatcher_budget_limit kagent/budgeted concurrent":  0,
		"khook_dispatcher_budget_limit kagent/budgeted hourly":      3,
	}
	var got map[string]float64
	require.Eventually(t, func() bool {
		got = samples(t, &budgetCollector{d: h.d})
		return maps.Equal(want, got)
	}, 10*time.Second, 10*time.Millisecond, "metrics: %v", got)
	budgets, err := h.d.State().Budgets(context.Background())
	require.NoError(t, err)
	require.Len(t, budgets, 1)
	inFlight, lastHour := budgets[0].InUse(time.Now())
	require.Equal(t, [2]int{0, 3}, [2]int{inFlight, lastHour})
	require.Len(t, h.agent.Received(), 3, "no task past the budget")
	require.Empty(t, h.deadLetters(t))
}

// With one task at a time, waiting tasks go most severe first, whatever their order of
// arrival.
func TestWaitingTasksGoMostSevereFirst(t *testing.T) {
	cfg := testConfig()
	cfg.Budgets = []state.Budget{{Agent: "kagent/budgeted", MaxConcurrentTasks: 1}}
	h := newHarnessHooks(t, cfg, "1.0", 30*time.Second, groupedHooks)
	calls, release := h.agent.HoldFirst() // the first task holds the one slot until released
	h.publish(t, mapping.Event{ID: "first", Type: "incident", Severity: "info", Resource: mapping.Resource{Name: "first"}})
	require.Eventually(t, func() bool { return calls.Load() == 1 }, 30*time.Second, 5*time.Millisecond)
	sev := []string{"warning", "info", "critical", "warning", "error", "critical"}
	for i, s := range sev {
		h.publish(t, mapping.Event{ID: fmt.Sprint("e", i), Type: "incident", Severity: s, Resource: mapping.Resource{Name: fmt.Sprint("svc-", i)}})
	}
	h.settled(t, uint64(len(sev)+1))
	h.groupsWhen(t, func(gs map[string]state.GroupRecord) bool { return len(gs) == len(sev)+1 })
	release()
	got := waitReceivedN(t, h.agent, len(sev)+1)
	var order []string
	for _, r := range got[1:] {
		order = append(order, strings.Fields(r.Text)[0])
	}
	require.Equal(t, []string{"critical", "critical", "error", "warning", "warning", "info"}, order)
}

// A replay that does not ignore suppression respects grouping: events the group has
// counted are not counted again, and call nobody.
func TestReplayRespectsGrouping(t *testing.T) {
	h := newHarnessHooks(t, testConfig(), "1.0", 30*time.Second, groupedHooks)
	for i := range 3 {
		h.publish(t, restart(fmt.Sprint("r", i), fmt.Sprintf("web-%02d", i), "web"))
	}
	h.settled(t, 3)
	h.groupsWhen(t, sentAll(1))
	for i := range 3 {
		// khook replay republishes the stored event under a new message id.
		ev := restart(fmt.Sprint("r", i), fmt.Sprintf("web-%02d", i), "web")
		ev.Namespace, ev.Severity = "shop", "error"
		data, err := json.Marshal(ev)
		require.NoError(t, err)
		body, err := cloudevent.Encode(&cloudevent.Event{ID: ev.ID, Source: "webhook", Type: ev.Type, Data: data})
		require.NoError(t, err)
		msg := nats.NewMsg("khook.events." + ev.Type)
		msg.Data = body
		msg.Header.Set(jetstream.MsgIDHeader, "replay-"+ev.ID)
		msg.Header.Set(streams.HeaderReplayID, "replay-1")
		_, err = h.js.PublishMsg(context.Background(), msg)
		require.NoError(t, err)
	}
	h.settled(t, 6)
	for _, g := range h.groupsWhen(t, sentAll(1)) {
		require.Equal(t, 3, g.Total, "the replayed events were counted once, when they first came")
	}
	require.Len(t, h.agent.Received(), 1)
}

// A replay with --ignore-suppression bypasses grouping: each event is its own task.
func TestReplayIgnoringSuppressionBypassesGrouping(t *testing.T) {
	h := newHarnessHooks(t, testConfig(), "1.0", 30*time.Second, groupedHooks)
	for i := range 3 {
		ev := restart(fmt.Sprint("r", i), fmt.Sprintf("web-%02d", i), "web")
		h.publishWith(t, ev, map[string]string{streams.HeaderIgnoreSuppression: "true"})
	}
	h.settled(t, 3)
	got := waitReceivedN(t, h.agent, 3)
	require.Len(t, got, 3)
	groups, err := h.d.State().Groups(context.Background())
	require.NoError(t, err)
	require.Empty(t, groups)
}

// Two replicas racing for one task each hold their own slot: the loser's return gives back
// its slot and its share of the hour, never the winner's.
func TestBudgetHoldsArePerReplica(t *testing.T) {
	h := newHarnessHooks(t, testConfig(), "1.0", 30*time.Second, groupedHooks)
	s := h.d.State()
	ctx := context.Background()
	b := state.Budget{Agent: "kagent/x", MaxConcurrentTasks: 1, MaxTasksPerHour: 5}
	until := time.Now().Add(time.Minute)
	took, err := s.TakeBudget(ctx, b, "kagent/x", "task-1", "replica-a", until)
	require.NoError(t, err)
	require.True(t, took)
	took, err = s.TakeBudget(ctx, b, "kagent/x", "task-1", "replica-b", until)
	require.NoError(t, err)
	require.False(t, took, "the one concurrent slot is replica a's")
	took, err = s.TakeBudget(ctx, b, "kagent/x", "task-1", "replica-a", until)
	require.NoError(t, err)
	require.True(t, took, "taking again is keeping the same hold")
	require.NoError(t, s.ReturnBudget(ctx, "kagent/x", "task-1", "replica-b", true))
	budgets, err := s.Budgets(ctx)
	require.NoError(t, err)
	inFlight, lastHour := budgets[0].InUse(time.Now())
	require.Equal(t, [2]int{1, 1}, [2]int{inFlight, lastHour}, "replica b's return took nothing of replica a's")
	require.NoError(t, s.ReturnBudget(ctx, "kagent/x", "task-1", "replica-a", false))
	budgets, err = s.Budgets(ctx)
	require.NoError(t, err)
	inFlight, lastHour = budgets[0].InUse(time.Now())
	require.Equal(t, [2]int{0, 1}, [2]int{inFlight, lastHour}, "a sent task keeps its share of the hour")
}

// samples collects c and returns every sample's value by its name and label values.
func samples(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	families, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				key += " " + l.GetValue()
			}
			out[key] = m.GetGauge().GetValue()
		}
	}
	return out
}

// A grouped hook whose agent is at its budget keeps gathering: the events that arrive while
// its task waits are folded into that task, which goes when the budget frees.
func TestWaitingGroupKeepsGathering(t *testing.T) {
	cfg := testConfig()
	cfg.Budgets = []state.Budget{{Agent: "kagent/sre", MaxConcurrentTasks: 1}}
	h := newHarnessHooks(t, cfg, "1.0", 30*time.Second, groupedHooks)
	calls, release := h.agent.HoldFirst() // the first task holds the one slot until released
	h.publish(t, restart("api-0", "api-00", "api"))
	require.Eventually(t, func() bool { return calls.Load() == 1 }, 30*time.Second, 5*time.Millisecond)
	for i := range 3 {
		h.publish(t, restart(fmt.Sprint("web-a", i), fmt.Sprintf("web-%02d", i), "web"))
	}
	h.settled(t, 4)
	// The web group is due and waiting for the slot; more of its events arrive meanwhile.
	h.groupsWhen(t, func(gs map[string]state.GroupRecord) bool {
		for _, g := range gs {
			if g.Labels["owner"] == "Deployment/web" {
				return g.Waiting(time.Now())
			}
		}
		return false
	})
	for i := 3; i < 6; i++ {
		h.publish(t, restart(fmt.Sprint("web-b", i), fmt.Sprintf("web-%02d", i), "web"))
	}
	h.settled(t, 7)
	release()
	got := waitReceivedN(t, h.agent, 2)
	h.groupsWhen(t, sentAll(2))
	require.Len(t, h.agent.Received(), 2)
	require.True(t, strings.HasPrefix(got[1].Text, "6 restarts in Deployment/web: "), got[1].Text)
	require.Equal(t, pods("web", 0, 6), podsIn(got[1].Text), "the events that arrived while it waited are in the task")
}
