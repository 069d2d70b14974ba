package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/internal/demoagent"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/streams/outcome"
)

// describeHooks are the Hooks of the outcome test, beside shop-deployments (deploy-failed
// to kagent/sre-agent): one grouped, one whose agent has a budget of one task an hour, and
// one whose agent refuses every task.
const describeHooks = `- apiVersion: kagent.dev/v1alpha2
  kind: Hook
  metadata: {name: crashes, namespace: shop}
  spec:
    groupBy: [namespace]
    groupWait: 1s
    groupInterval: 1m
    eventConfigurations:
      - eventType: pod-crash
        agentRef: {name: k8s-agent, namespace: kagent}
        prompt: "{{.Group.Count}} crashes in {{.Group.Labels.namespace}}"
- apiVersion: kagent.dev/v1alpha2
  kind: Hook
  metadata: {name: budgeted, namespace: shop}
  spec:
    eventConfigurations:
      - eventType: budget-test
        agentRef: {name: budget-agent, namespace: kagent}
        prompt: "{{.ResourceName}}"
- apiVersion: kagent.dev/v1alpha2
  kind: Hook
  metadata: {name: broken, namespace: shop}
  spec:
    eventConfigurations:
      - eventType: broken-test
        agentRef: {name: broken, namespace: kagent}
        prompt: "{{.ResourceName}}"
`

const describeMappings = `  - eventSource: webhook
    eventType: pod-crash
    severity: warning
  - eventSource: webhook
    eventType: budget-test
    severity: warning
  - eventSource: webhook
    eventType: broken-test
    severity: error
  - eventSource: webhook
    eventType: deploy-ok
    severity: info
  - eventSource: webhook
    eventType: old-rule
    severity: info
    enabled: false
`

// post sends one webhook event and returns the id of its 202 answer.
func post(t *testing.T, port int, typ, resource, msg string) string {
	t.Helper()
	body := fmt.Sprintf(`{"type":%q,"namespace":"shop","resourceName":%q,"message":%q}`, typ, resource, msg)
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/webhook", port), "application/json", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, string(b))
	var a struct{ ID string }
	require.NoError(t, json.Unmarshal(b, &a))
	require.NotEmpty(t, a.ID)
	return a.ID
}

// describeUntil runs `khook events describe id -o json` until done accepts what it says.
func describeUntil(t *testing.T, cfg, natsURL, id string, done func(d ops.Description) bool) ops.Description {
	t.Helper()
	var d ops.Description
	var last string
	require.Eventually(t, func() bool {
		code, out := khookCmd(t, "events", "describe", id, "--config", cfg, "--nats-url", natsURL, "-o", "json")
		last = out
		if code != 0 {
			return false
		}
		d = ops.Description{}
		require.NoError(t, json.Unmarshal([]byte(out), &d), out)
		return done(d)
	}, 30*time.Second, 100*time.Millisecond, "describe %s: %s", id, func() string { return last })
	return d
}

func onlyTask(t *testing.T, d ops.Description) ops.TaskOutcome {
	t.Helper()
	require.Len(t, d.Tasks, 1, "%+v", d)
	return d.Tasks[0]
}

// TestEventsDescribeEveryOutcome drives a real `khook run` through every outcome an event
// can have and asks `khook events describe` about each: delivered, suppressed, grouped,
// waiting for a budget, dead-lettered, unmatched, unmapped and disabled. Then it replays the
// suppressed events: the dry run predicts the suppression, the real run counts it and says
// so, and --ignore-suppression delivers them; khook status counts it all per Hook.
func TestEventsDescribeEveryOutcome(t *testing.T) {
	agent, agentURL := startAgent(t)
	refusing := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		http.Error(rw, "this agent refuses every task", http.StatusBadRequest)
	}))
	t.Cleanup(refusing.Close)
	f := embeddedPipeline(t, agentURL)
	f.extraHooks, f.extraMappings = describeHooks, describeMappings
	apiPort := freePort(t)
	tokenFile := filepath.Join(f.dir, "api-token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("let-me-in\n"), 0o600))
	f.extraConfig = fmt.Sprintf(`dispatcher:
  budgets:
    - agent: kagent/budget-agent
      max_tasks_per_hour: 1
  routes:
    - agent: kagent/broken
      type: http
      url: %s
api:
  enabled: true
  addr: 127.0.0.1:%d
  token_file: %s
`, refusing.URL, apiPort, tokenFile)
	cfg := f.write(t)
	p := start(t, "khook run", bins.khook(), "run", "--config", cfg)
	waitReady(t, p, f.probes)
	url := f.embeddedURL()

	// Delivered, then suppressed by it.
	first := post(t, f.webhook, "deploy-failed", "cart", "first")
	d := describeUntil(t, cfg, url, first, func(d ops.Description) bool {
		return len(d.Tasks) == 1 && d.Tasks[0].Outcome == outcome.Delivered
	})
	require.Equal(t, first, d.ID)
	require.Equal(t, "mapped", d.Mapping)
	require.Equal(t, "matched", d.Dispatch)
	require.NotNil(t, d.Raw)
	require.NotZero(t, d.Raw.Seq)
	require.Equal(t, "webhook", d.Raw.Source)
	require.Equal(t, "deploy-failed", d.Raw.Type)
	require.NotNil(t, d.Event)
	require.Equal(t, "deploy-failed", d.Event.Type)
	require.Equal(t, d.Raw.Seq, d.Event.RawSeq)
	delivered := onlyTask(t, d)
	require.Equal(t, "shop/shop-deployments", delivered.Hook)
	require.Equal(t, "kagent/sre-agent", delivered.Agent)
	require.NotEmpty(t, delivered.MessageID)
	require.Equal(t, 1, delivered.Latest.Attempt)
	require.Positive(t, time.Duration(delivered.Latest.Took))
	require.NotEmpty(t, delivered.Latest.TaskState)
	require.Equal(t, delivered.MessageID, agent.Received()[0].MessageID, "the message id the agent got")

	// The same event by its sequence in the events stream.
	bySeq := describeUntil(t, cfg, url, fmt.Sprint(d.Event.Seq), func(ops.Description) bool { return true })
	require.Equal(t, first, bySeq.ID)
	require.Equal(t, d.Tasks, bySeq.Tasks)

	second := post(t, f.webhook, "deploy-failed", "cart", "second")
	d = describeUntil(t, cfg, url, second, func(d ops.Description) bool { return len(d.Tasks) == 1 })
	suppressed := onlyTask(t, d)
	require.Equal(t, outcome.Suppressed, suppressed.Outcome)
	require.Equal(t, delivered.MessageID, suppressed.Latest.SuppressedBy)
	require.Equal(t, first, suppressed.Latest.SuppressedByEvent)
	require.True(t, suppressed.Latest.Until.After(time.Now()), "the window is still open: %s", suppressed.Latest.Until)

	// Grouped: both events go in the group's one task, delivered after groupWait.
	crashes := []string{post(t, f.webhook, "pod-crash", "web-0", "crash"), post(t, f.webhook, "pod-crash", "web-1", "crash")}
	var groupTask string
	for _, id := range crashes {
		d = describeUntil(t, cfg, url, id, func(d ops.Description) bool {
			return len(d.Tasks) == 1 && d.Tasks[0].Group != nil && d.Tasks[0].Group.Outcome == outcome.Delivered
		})
		g := onlyTask(t, d)
		require.Equal(t, outcome.Grouped, g.Outcome)
		require.Equal(t, "shop/crashes", g.Hook)
		require.NotEmpty(t, g.Group.Key)
		require.Equal(t, 2, g.Group.Latest.Events, "one task for both events")
		if groupTask == "" {
			groupTask = g.Group.MessageID
		}
		require.Equal(t, groupTask, g.Group.MessageID)
	}

	// Waiting for a budget: the agent's one task of the hour goes to the first event.
	budgetFirst := post(t, f.webhook, "budget-test", "b-0", "first")
	describeUntil(t, cfg, url, budgetFirst, func(d ops.Description) bool {
		return len(d.Tasks) == 1 && d.Tasks[0].Outcome == outcome.Delivered
	})
	budgetSecond := post(t, f.webhook, "budget-test", "b-1", "second")
	d = describeUntil(t, cfg, url, budgetSecond, func(d ops.Description) bool { return len(d.Tasks) == 1 })
	waiting := onlyTask(t, d)
	require.Equal(t, outcome.Waiting, waiting.Outcome)
	require.Equal(t, "kagent/budget-agent", waiting.Agent)
	require.NotEmpty(t, waiting.MessageID)

	// Dead-lettered: the agent refuses it, and the dead letter is the one dlq shows.
	broken := post(t, f.webhook, "broken-test", "x", "refused")
	d = describeUntil(t, cfg, url, broken, func(d ops.Description) bool {
		return len(d.Tasks) == 1 && d.Tasks[0].Outcome == outcome.DeadLettered
	})
	dead := onlyTask(t, d).Latest
	require.Equal(t, "permanent", dead.Reason)
	require.Contains(t, dead.Error, "400")
	require.NotZero(t, dead.DeadLetterSeq)
	code, out := khookCmd(t, "dlq", "show", fmt.Sprint(dead.DeadLetterSeq), "--config", cfg, "--nats-url", url)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "permanent")
	require.Contains(t, out, dead.MessageID)

	// No Hook matches; no rule maps; the rule is disabled.
	d = describeUntil(t, cfg, url, post(t, f.webhook, "deploy-ok", "cart", "fine"), func(d ops.Description) bool { return d.Dispatch == "unmatched" })
	require.Equal(t, "mapped", d.Mapping)
	require.Empty(t, d.Tasks)
	d = describeUntil(t, cfg, url, post(t, f.webhook, "nothing-maps-this", "cart", "?"), func(d ops.Description) bool { return d.Mapping == "unmapped" })
	require.Contains(t, d.MappingReason, `no mapping rule for source "webhook" type "nothing-maps-this"`)
	require.Nil(t, d.Event)
	require.NotNil(t, d.Raw)
	d = describeUntil(t, cfg, url, post(t, f.webhook, "old-rule", "cart", "?"), func(d ops.Description) bool { return d.Mapping == "disabled" })
	require.Contains(t, d.MappingReason, "disabled")

	// The table says the same for people; an unknown id is an error that says where it
	// looked.
	code, out = khookCmd(t, "events", "describe", second, "--config", cfg, "--nats-url", url)
	require.Equal(t, 0, code, out)
	require.Regexp(t, `shop/shop-deployments\s+kagent/sre-agent\s+suppressed\s+\S+\s+by task `+delivered.MessageID, out)
	code, out = khookCmd(t, "events", "describe", "webhook/no-such-event", "--config", cfg, "--nats-url", url)
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "event not found")

	// The events API gives the same description.
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/api/v1/events/%s", apiPort, first), nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer let-me-in")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	var fromAPI ops.Description
	require.NoError(t, json.Unmarshal(body, &fromAPI))
	require.Equal(t, outcome.Delivered, onlyTask(t, fromAPI).Outcome)

	replayDeployFailures(t, cfg, url, agent, first, delivered.MessageID)

	// Replaying the crashes while their group is still open (groupInterval 1m): the group
	// counted the originals, so the copies add nothing, and both the dry run and the
	// replay say so rather than promising a task.
	before := len(agent.Received())
	code, out = khookCmd(t, "replay", "--config", cfg, "--nats-url", url, "--type", "pod-crash", "--dry-run")
	require.Equal(t, 0, code, out)
	require.Equal(t, 2, strings.Count(out, "counted it already: it would add nothing"), out)
	code, out = khookCmd(t, "replay", "--config", cfg, "--nats-url", url, "--type", "pod-crash")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "0 grouped, 2 already counted by their group", out)
	require.Len(t, agent.Received(), before)
	d = describeUntil(t, cfg, url, crashes[0], func(d ops.Description) bool { return len(d.Tasks) == 2 })
	require.Equal(t, groupTask, d.Tasks[0].Group.MessageID, "the original's task")
	require.True(t, d.Tasks[1].Latest.Repeat, "the copy was counted before")
	require.Nil(t, d.Tasks[1].Group, "and goes in no task")

	// khook status counts the outcomes of the last hour per Hook.
	code, out = khookCmd(t, "status", "--config", cfg, "--nats-url", url, "-o", "json")
	require.Equal(t, 0, code, out)
	var st ops.Status
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.NotNil(t, st.Outcomes)
	counts := map[string]ops.HookCounts{}
	for _, h := range st.Outcomes.Hooks {
		counts[h.Hook] = h
	}
	// deploy-failed: 2 events, then 2 suppressed copies and 2 delivered ones.
	require.Equal(t, ops.HookCounts{Hook: "shop/shop-deployments", Matched: 6, Delivered: 3, Suppressed: 3}, counts["shop/shop-deployments"])
	require.Equal(t, ops.HookCounts{Hook: "shop/crashes", Matched: 4, Delivered: 1, Grouped: 2}, counts["shop/crashes"],
		"the replayed copies matched, and added nothing")
	require.Equal(t, ops.HookCounts{Hook: "shop/budgeted", Matched: 2, Delivered: 1, Waiting: 2}, counts["shop/budgeted"])
	require.Equal(t, ops.HookCounts{Hook: "shop/broken", Matched: 1, DeadLettered: 1}, counts["shop/broken"])
	require.Equal(t, 1, st.Outcomes.Unmatched)
	require.Equal(t, 1, st.Outcomes.Unmapped)
	require.Equal(t, 1, st.Outcomes.Disabled)
	code, out = khookCmd(t, "status", "--config", cfg, "--nats-url", url)
	require.Equal(t, 0, code, out)
	require.Regexp(t, `OUTCOMES \(LAST 1H\)\s+MATCHED\s+DELIVERED`, out)
	require.Regexp(t, `shop/crashes\s+4\s+1\s+0\s+2\s`, out)
}

// replayDeployFailures replays the two deploy-failed events while the first one's window
// holds: the dry run says both would be suppressed and by what, the replay counts both as
// suppressed and says so on stderr, and with --ignore-suppression both reach the agent.
func replayDeployFailures(t *testing.T, cfg, url string, agent *demoagent.Server, first, holder string) {
	t.Helper()
	base := []string{"replay", "--config", cfg, "--nats-url", url, "--through", "mapper", "--type", "deploy-failed"}
	run := func(args ...string) (stdout, stderr string) {
		t.Helper()
		cmd := exec.Command(bins.khook(), args...)
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e
		require.NoError(t, cmd.Run(), "%s\n%s", o.String(), e.String())
		return o.String(), e.String()
	}

	out, _ := run(append(base, "--dry-run", "-o", "json")...)
	var dry struct {
		DryRun  bool             `json:"dryRun"`
		Checked int              `json:"checked"`
		Sent    int              `json:"sent"`
		Events  []ops.Prediction `json:"events"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &dry), out)
	require.True(t, dry.DryRun)
	require.Equal(t, 2, dry.Checked)
	require.Zero(t, dry.Sent)
	require.Len(t, dry.Events, 2)
	for _, p := range dry.Events {
		require.Equal(t, ops.PredictTasks, p.Outcome)
		require.Equal(t, "deploy-failed", p.Type)
		require.Len(t, p.Tasks, 1)
		require.Equal(t, ops.TaskSuppressed, p.Tasks[0].Outcome, "%+v", p)
		require.Equal(t, holder, p.Tasks[0].SuppressedBy)
		require.True(t, p.Tasks[0].Until.After(time.Now()))
	}
	require.NotContains(t, out, "0001-01-01", "no zero times")

	stdout, stderr := run(append(base, "--dry-run")...)
	require.Equal(t, 2, strings.Count(stdout, "(--ignore-suppression would send it)"), stdout)
	require.Contains(t, stdout, "checked 2 events")
	require.Contains(t, stdout, "suppressed 2")
	require.Contains(t, stderr, "2 checked")
	require.NotContains(t, stderr, "sent")
	require.Contains(t, stderr, "every task of this replay would be suppressed")

	before := len(agent.Received())
	stdout, stderr = run(base...)
	require.Contains(t, stdout, "sent 2 events, skipped 0; complete")
	require.Contains(t, stdout, "tasks: 0 delivered, 2 suppressed, 0 grouped")
	require.Contains(t, stderr, "was suppressed by an earlier task's window: no agent was called; replay with --ignore-suppression")
	require.Len(t, agent.Received(), before, "the replay called nobody")

	// Describing the original shows its replayed copy's task after its own.
	d := describeUntil(t, cfg, url, first, func(d ops.Description) bool { return len(d.Tasks) == 2 })
	require.Equal(t, outcome.Delivered, d.Tasks[0].Outcome)
	require.Empty(t, d.Tasks[0].ReplayID)
	require.Equal(t, outcome.Suppressed, d.Tasks[1].Outcome)
	require.NotEmpty(t, d.Tasks[1].ReplayID)
	require.Equal(t, first+"/replay-"+d.Tasks[1].ReplayID, d.Tasks[1].EventID)
	// And the copy by its own id.
	cp := describeUntil(t, cfg, url, d.Tasks[1].EventID, func(d ops.Description) bool { return len(d.Tasks) == 1 })
	require.Equal(t, outcome.Suppressed, cp.Tasks[0].Outcome)

	stdout, _ = run(append(base, "--ignore-suppression")...)
	require.Contains(t, stdout, "tasks: 2 delivered, 0 suppressed")
	require.Len(t, agent.Received(), before+2)
}
