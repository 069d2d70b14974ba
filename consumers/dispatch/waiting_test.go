package dispatch

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/consumers/dispatch/state"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/hook/hooktest"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/deadletter"
)

// The tests of work that waits: groups gathering, tasks queued for a budget. What waits must
// end in a delivered task or a dead letter, whatever happens meanwhile.

// groupsGone waits until every group record is deleted: every group is over.
func (h *harness) groupsGone(t *testing.T) {
	t.Helper()
	h.groupsWhen(t, func(gs map[string]state.GroupRecord) bool { return len(gs) == 0 })
}

// dlqOps lists the dead letters as khook dlq list does.
func (h *harness) dlqOps(t *testing.T) []ops.DeadLetter {
	t.Helper()
	letters, err := ops.ListDeadLetters(context.Background(), h.js, h.topo, ops.DLQFilter{}, 0)
	require.NoError(t, err)
	return letters
}

// The same incident recurring after its group ended (deleted once groupInterval passed
// quietly) is a new task, not taken for the first one, whose delivery record still exists:
// the recurrence calls the agent again. So does a recurrence after a task that failed.
func TestRecurringIncidentIsSentAgain(t *testing.T) {
	h := newHarnessHooks(t, testConfig(), "1.0", 30*time.Second, groupedHooks)
	h.faults.set(func(n int64) (int, string) {
		if n == 1 {
			return http.StatusBadRequest, "" // the first incident's task fails for good
		}
		return 0, ""
	})
	for round := range 3 {
		h.publish(t, restart(fmt.Sprint("crash-", round), "web-00", "web"))
		h.settled(t, uint64(round+1))
		h.groupsGone(t)
	}
	got := h.agent.Received()
	require.Len(t, got, 2, "the second and third incidents reach the agent")
	require.NotEqual(t, got[0].MessageID, got[1].MessageID)
	letters := h.dlqOps(t)
	require.Len(t, letters, 1, "the first one's event is dead-lettered")
	require.Equal(t, "permanent", letters[0].Reason)
}

// Editing a grouped Hook's prompt while its group gathers sends the group, with every event
// it gathered, with the new prompt; so does a task queued for its agent's budget, under the
// ids it was queued with.
func TestPromptEditKeepsWaitingWork(t *testing.T) {
	cfg := testConfig()
	cfg.Budgets = []state.Budget{{Agent: "kagent/budgeted", MaxConcurrentTasks: 1}}
	slow := strings.Replace(groupedHooks, "groupWait: 1s", "groupWait: 3s", 1)
	h := newHarnessHooks(t, cfg, "1.0", 30*time.Second, slow)
	calls, release := h.agent.HoldFirst()
	h.publish(t, mapping.Event{ID: "first", Type: "incident", Severity: "info", Resource: mapping.Resource{Name: "first"}})
	require.Eventually(t, func() bool { return calls.Load() == 1 }, 30*time.Second, 5*time.Millisecond)
	h.publish(t, mapping.Event{ID: "queued", Type: "incident", Severity: "warning", Resource: mapping.Resource{Name: "queued"}})
	for i := range 3 {
		h.publish(t, restart(fmt.Sprint("r", i), fmt.Sprintf("web-%02d", i), "web"))
	}
	h.settled(t, 5)
	h.groupsWhen(t, func(gs map[string]state.GroupRecord) bool { return len(gs) == 3 })
	queuedID := ""
	for _, g := range h.groupsWhen(t, func(gs map[string]state.GroupRecord) bool { return len(gs) == 3 }) {
		if g.Single && g.Events[0].Resource.Name == "queued" {
			queuedID = g.Task
		}
	}
	require.NotEmpty(t, queuedID)
	edited := strings.NewReplacer(`prompt: "{{.Group.Count}} restarts in`, `prompt: "EDITED {{.Group.Count}} restarts in`,
		`prompt: "{{.Severity}} incident`, `prompt: "EDITED {{.Severity}} incident`).Replace(slow)
	require.NotEqual(t, slow, edited)
	h.d.SetHooks(hooktest.Index(t, edited))
	release()
	got := waitReceivedN(t, h.agent, 3)
	texts := map[string]string{}
	ids := map[string]string{}
	for _, r := range got[1:] {
		texts[r.Agent] = r.Text
		ids[r.Agent] = r.MessageID
	}
	require.True(t, strings.HasPrefix(texts["kagent/sre"], "EDITED 3 restarts in Deployment/web:"), texts["kagent/sre"])
	require.Equal(t, pods("web", 0, 3), podsIn(texts["kagent/sre"]), "with every event it gathered")
	require.True(t, strings.HasPrefix(texts["kagent/budgeted"], "EDITED warning incident queued"), texts["kagent/budgeted"])
	require.Equal(t, queuedID, ids["kagent/budgeted"], "the queued task keeps the ids it was queued with")
	require.Empty(t, h.dlqOps(t))
}

// Deleting a grouped Hook while its group gathers dead-letters the gathered events, one per
// distinct event with its count and group, instead of dropping them; retrying them once the
// Hook is back gathers them into one task.
func TestDeletedHookDeadLettersWaitingEvents(t *testing.T) {
	slow := strings.Replace(groupedHooks, "groupWait: 1s", "groupWait: 2s", 1)
	h := newHarnessHooks(t, testConfig(), "1.0", 30*time.Second, slow)
	for i := range 4 {
		h.publish(t, restart(fmt.Sprint("r", i), fmt.Sprintf("web-%02d", i%2), "web"))
	}
	h.settled(t, 4)
	h.groupsWhen(t, func(gs map[string]state.GroupRecord) bool {
		for _, g := range gs {
			return g.Pending == 4
		}
		return false
	})
	withoutCrashes := slow[strings.Index(slow, "- apiVersion: kagent.dev/v1alpha2\n  kind: Hook\n  metadata: {name: incidents"):]
	h.d.SetHooks(hooktest.Index(t, withoutCrashes))
	var letters []ops.DeadLetter
	require.Eventually(t, func() bool { letters = h.dlqOps(t); return len(letters) == 2 }, 30*time.Second, 10*time.Millisecond)
	for _, l := range letters {
		require.Equal(t, "hook-deleted", l.Reason)
		require.Equal(t, "shop/crashes", l.Hook)
		require.Equal(t, "2", l.Header.Get(deadletter.HeaderCount))
		require.NotEmpty(t, l.Header.Get(deadletter.HeaderGroup))
	}
	h.groupsWhen(t, func(gs map[string]state.GroupRecord) bool {
		for _, g := range gs {
			return g.Pending == 0
		}
		return true
	})
	require.Empty(t, h.agent.Received())

	h.d.SetHooks(hooktest.Index(t, slow))
	for _, l := range letters {
		require.NoError(t, ops.RetryDeadLetter(context.Background(), h.js, h.topo, l))
	}
	got := waitReceivedN(t, h.agent, 1)
	require.True(t, strings.HasPrefix(got[0].Text, "2 restarts in Deployment/web:"), got[0].Text)
	require.Equal(t, pods("web", 0, 2), podsIn(got[0].Text))
	require.Empty(t, h.dlqOps(t), "retried letters are deleted")
}

// A grouped task that fails for good dead-letters its group's events, which `khook dlq
// retry` sends again as one task; a budgeted task that fails for good is dead-lettered as
// an unbudgeted one is, and retried the same way.
func TestWaitingTasksThatFailAreDeadLettered(t *testing.T) {
	cfg := testConfig()
	cfg.Budgets = []state.Budget{{Agent: "kagent/budgeted", MaxConcurrentTasks: 1}}
	h := newHarnessHooks(t, cfg, "1.0", 30*time.Second, groupedHooks)
	refuse := true
	h.faults.set(func(int64) (int, string) {
		if refuse {
			return http.StatusBadRequest, ""
		}
		return 0, ""
	})
	h.publish(t, mapping.Event{ID: "budgeted", Type: "incident", Severity: "critical", Resource: mapping.Resource{Name: "db"}})
	for i := range 3 {
		h.publish(t, restart(fmt.Sprint("r", i), fmt.Sprintf("web-%02d", i), "web"))
	}
	h.settled(t, 4)
	var letters []ops.DeadLetter
	require.Eventually(t, func() bool { letters = h.dlqOps(t); return len(letters) == 4 }, 30*time.Second, 10*time.Millisecond)
	byHook := map[string]int{}
	for _, l := range letters {
		require.Equal(t, "permanent", l.Reason)
		require.NotEmpty(t, l.Task)
		byHook[l.Hook]++
	}
	require.Equal(t, map[string]int{"shop/incidents": 1, "shop/crashes": 3}, byHook)
	require.Equal(t, 4.0, testutil.ToFloat64(h.d.metrics.deadLetters.WithLabelValues("permanent")))
	h.groupsWhen(t, func(gs map[string]state.GroupRecord) bool {
		for _, g := range gs {
			if g.Open() {
				return false
			}
		}
		return true
	})

	refuse = false
	for _, l := range letters {
		require.NoError(t, ops.RetryDeadLetter(context.Background(), h.js, h.topo, l))
	}
	got := waitReceivedN(t, h.agent, 2)
	texts := map[string]string{}
	for _, r := range got {
		texts[r.Agent] = r.Text
	}
	require.True(t, strings.HasPrefix(texts["kagent/budgeted"], "critical incident db"), texts["kagent/budgeted"])
	require.True(t, strings.HasPrefix(texts["kagent/sre"], "3 restarts in Deployment/web:"), texts["kagent/sre"])
	require.Equal(t, pods("web", 0, 3), podsIn(texts["kagent/sre"]))
}

// A task whose record cannot be stored in the budget queue (its event's payload fills the
// server's max_payload) is dead-lettered at once with its reason, instead of coming back for
// ever while holding a slot of the consumer's max_ack_pending.
func TestEventTooLargeToQueueIsDeadLettered(t *testing.T) {
	cfg := testConfig()
	cfg.Budgets = []state.Budget{{Agent: "kagent/budgeted", MaxConcurrentTasks: 1}}
	h := newHarnessHooks(t, cfg, "1.0", 30*time.Second, groupedHooks)
	limit := streams.MaxPayload(h.js)
	require.Positive(t, limit)
	payload, err := json.Marshal(map[string]string{"blob": strings.Repeat("x", limit-1200)})
	require.NoError(t, err)
	h.publish(t, mapping.Event{ID: "big", Type: "incident", Severity: "critical", Resource: mapping.Resource{Name: "db"}, Data: payload})
	h.publish(t, mapping.Event{ID: "small", Type: "incident", Severity: "critical", Resource: mapping.Resource{Name: "web"}})
	h.settled(t, 2)
	letters := h.dlqOps(t)
	require.Len(t, letters, 1)
	require.Equal(t, "too-large", letters[0].Reason)
	require.Equal(t, "big", letters[0].EventID)
	got := waitReceivedN(t, h.agent, 1)
	require.True(t, strings.HasPrefix(got[0].Text, "critical incident web"))
}

// A storm whose prompt lists every event's message would pass the prompt limit: the task
// lists fewer events, says how many it leaves out, and is sent. How the publisher's pace
// splits the storm into groups is not the point, so the test adds up every task the agent
// got: each counts all its events, and lists them all or says it could not.
func TestStormPromptIsSentWithFewerEvents(t *testing.T) {
	hooks := strings.Replace(groupedHooks,
		`prompt: "{{.Group.Count}} restarts in {{.Group.Labels.owner}}:{{range .Events}} {{.Resource.Name}}{{end}}"`,
		`prompt: "{{.Group.Count}} restarts:{{range .Events}}\n{{.Resource.Name}}: {{.Message}}{{end}}"`, 1)
	hooks = strings.Replace(hooks, "groupWait: 1s", "groupWait: 5s", 1)
	h := newHarnessHooks(t, testConfig(), "1.0", 30*time.Second, hooks)
	const events = 100
	for i := range events {
		ev := restart(fmt.Sprint("r", i), fmt.Sprintf("web-%02d", i), "web")
		ev.Message = strings.Repeat("m", 1000)
		h.publish(t, ev)
	}
	// Once every event is acknowledged, each is in a group; once no group is open, every
	// group's task is sent.
	h.settled(t, events)
	h.groupsWhen(t, func(gs map[string]state.GroupRecord) bool {
		for _, g := range gs {
			if g.Open() {
				return false
			}
		}
		return len(gs) > 0
	})
	var counted, degraded int
	for _, r := range h.agent.Received() {
		var n int
		_, err := fmt.Sscanf(r.Text, "%d restarts:", &n)
		require.NoError(t, err, r.Text[:40])
		require.LessOrEqual(t, len(r.Text), hook.MaxPromptOutput)
		counted += n
		// A task lists all its events, or says it could not.
		if strings.Contains(r.Text, "more events not listed, to keep the task within the prompt limit") {
			degraded++
		} else {
			require.Equal(t, n, strings.Count(r.Text, "\nweb-"))
		}
	}
	require.Equal(t, events, counted)
	require.Positive(t, degraded, "no task was large enough to need fewer events")
	require.Empty(t, h.dlqOps(t))
}
