package dispatch

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/hook/hooktest"
	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/streams/cloudevent"
	"github.com/khook/khook/streams/deadletter"
)

const (
	srePath    = "/api/a2a/kagent/sre/"
	legacyPath = "/api/a2a/kagent/legacy-sre/"
)

// Two tasks of one event dead-lettered together are two dead letters: the dead letter's id
// is scoped by the task, not by the hook, so the second is not dropped as a duplicate of the
// first while the event is acknowledged.
func TestTwoTasksOfOneEventAreBothDeadLettered(t *testing.T) {
	h := newHarness(t, testConfig(), "1.0")
	h.faults.set(func(int64) (int, string) { return http.StatusBadRequest, "" })
	// Critical: both deploy-failed entries of the hook match, sre and legacy-sre.
	h.publish(t, mapping.Event{ID: "e1", Type: "deploy-failed", Severity: "critical", Resource: mapping.Resource{Name: "cart"}})
	h.settled(t, 1)
	dl := h.deadLetters(t)
	require.Len(t, dl, 2, "one dead letter per task")
	targets := []string{dl[0].Header.Get(deadletter.HeaderTarget), dl[1].Header.Get(deadletter.HeaderTarget)}
	require.ElementsMatch(t, []string{"kagent " + h.url + srePath, "kagent " + h.url + legacyPath}, targets)
}

// A task that was dead-lettered is settled: when the same event comes back because another
// of its tasks is still retrying, the dead-lettered agent is not called again.
func TestDeadLetteredTaskIsNeverCalledAgain(t *testing.T) {
	h := newHarness(t, testConfig(), "1.0")
	h.faults.setByPath(func(path string, n int64) (int, string) {
		switch {
		case path == srePath:
			return http.StatusBadRequest, "" // permanent: dead-lettered at once
		case path == legacyPath && n <= 3:
			return http.StatusServiceUnavailable, "0" // retried: the event comes back 3 times
		}
		return 0, ""
	})
	h.publish(t, mapping.Event{ID: "e1", Type: "deploy-failed", Severity: "critical", Resource: mapping.Resource{Name: "cart"}})
	h.settled(t, 1)
	require.Equal(t, int64(4), h.faults.calls(legacyPath), "legacy-sre: 3 failures, then delivered")
	require.Equal(t, int64(1), h.faults.calls(srePath), "the dead-lettered task was called once")
	require.Len(t, h.deadLetters(t), 1)
	require.Equal(t, 1, countAgent(h.agent.Received(), "kagent/legacy-sre"))
}

// Reordering a Hook's eventConfigurations while an event is in flight does not call again
// the agent that already has its task: task ids and suppression keys come from what an
// entry is, not from where it stands.
func TestReorderedEntriesDoNotRepeatCalls(t *testing.T) {
	h := newHarness(t, testConfig(), "1.0")
	idx := hooktest.Index(t, hooktest.Doc("shop", "deploys", `      - eventType: deploy-failed
        agentRef: {name: legacy-sre, namespace: kagent}
        minSeverity: critical
        prompt: "Legacy: {{.ResourceName}}"
      - eventType: deploy-failed
        agentRef: {name: sre, namespace: kagent}
        prompt: "Deployment {{.ResourceName}} failed ({{.Severity}}, team {{.Tags.team}})"
`))
	h.faults.setByPath(func(path string, n int64) (int, string) {
		if path == legacyPath && n <= 2 {
			if n == 2 {
				// The second failure comes after the reorder: the redelivery that follows
				// sees the new order.
				h.d.SetHooks(idx)
			}
			return http.StatusServiceUnavailable, "0"
		}
		return 0, ""
	})
	h.publish(t, mapping.Event{ID: "e1", Type: "deploy-failed", Severity: "critical", Resource: mapping.Resource{Name: "cart"}})
	h.settled(t, 1)
	require.Equal(t, int64(1), h.faults.calls(srePath), "sre got its task once, before and after the reorder")
	require.Equal(t, int64(3), h.faults.calls(legacyPath))
}

// With slow agents, messages the dispatcher has received but not yet started must not
// outlive the ack wait: a redelivered copy would be handled beside the stale one, and both
// would call the agent. Every message is owned, and kept alive by heartbeats, from the
// moment it is received.
func TestSlowAgentsDoNotGetRedeliveredCopies(t *testing.T) {
	cfg := testConfig()
	cfg.Workers = 2
	h := newHarnessAckWait(t, cfg, "1.0", time.Second)
	h.agent.OnMessage = func(demoagent.Received) error {
		time.Sleep(700 * time.Millisecond) // a slow agent, not synchronisation
		return nil
	}
	const n = 16
	for i := range n {
		h.publish(t, mapping.Event{ID: fmt.Sprintf("e%d", i), Type: "deploy-failed", Resource: mapping.Resource{Name: fmt.Sprintf("svc-%d", i)}})
	}
	h.settled(t, n)
	cons, err := h.js.Consumer(context.Background(), h.topo.Events.Name, h.topo.Dispatcher.Durable)
	require.NoError(t, err)
	info, err := cons.Info(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(n), info.Delivered.Consumer, "the server delivered each message once: none outlived its ack wait while the dispatcher held it")
	got := h.agent.Received()
	perMessage := map[string]int{}
	for _, r := range got {
		perMessage[r.MessageID]++
	}
	for id, calls := range perMessage {
		require.Equal(t, 1, calls, "message %s called %d times", id, calls)
	}
	require.Len(t, got, n)
}

// The same event sent again after its suppression window (a sender retrying long after,
// past JetStream's duplicate window) is not called again: its delivery record says it was
// delivered. The window its redelivery opened has no call behind it, so it is released, and
// the next event of the resource is delivered, not suppressed.
func TestResentEventAfterItsWindowIsNeitherCalledNorSuppressing(t *testing.T) {
	cfg := testConfig()
	cfg.SuppressionWindow = hook.MinWindow
	h := newHarness(t, cfg, "1.0")
	ctx := context.Background()
	first := mapping.Event{ID: "e1", Type: "deploy-failed", Resource: mapping.Resource{Name: "cart"}}
	h.publish(t, first)
	h.settled(t, 1)
	require.Len(t, h.agent.Received(), 1)

	kv, err := h.js.KeyValue(ctx, h.topo.DispatchBucket)
	require.NoError(t, err)
	claims := func() []string {
		lister, err := kv.ListKeysFiltered(ctx, "claim.>")
		require.NoError(t, err)
		var keys []string
		for k := range lister.Keys() {
			keys = append(keys, k)
		}
		return keys
	}
	require.Eventually(t, func() bool { return len(claims()) == 0 }, 30*time.Second, 20*time.Millisecond, "the window ends")

	// Sent again under another JetStream message id, so the stream's deduplication does not
	// drop it.
	data, err := json.Marshal(mapping.Event{ID: "e1", Type: "deploy-failed", Namespace: "shop", Severity: "error", Resource: first.Resource})
	require.NoError(t, err)
	body, err := cloudevent.Encode(&cloudevent.Event{ID: "e1", Source: "webhook", Type: "deploy-failed", Data: data})
	require.NoError(t, err)
	msg := nats.NewMsg("khook.events.deploy-failed")
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, "e1-resent")
	_, err = h.js.PublishMsg(ctx, msg)
	require.NoError(t, err)
	h.settled(t, 2)
	require.Len(t, h.agent.Received(), 1, "a delivered task is not called again")
	require.Empty(t, claims(), "the window the resent event opened is released")

	h.publish(t, mapping.Event{ID: "e2", Type: "deploy-failed", Resource: first.Resource})
	h.settled(t, 3)
	require.Len(t, h.agent.Received(), 2, "the next event of the resource is delivered")
}
