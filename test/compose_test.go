package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// composeProject is the repository's docker-compose.yaml, copied with examples/compose into
// a directory of its own (so the test can edit the mounted config), run under a project name
// of its own.
type composeProject struct {
	e       *engine
	dir     string
	name    string
	env     []string
	webhook int
	// file is the compose file in dir, when not docker-compose.yaml.
	file string
}

func (c *composeProject) try(args ...string) (string, error) {
	base := []string{"compose", "-p", c.name}
	if c.file != "" {
		base = append(base, "-f", c.file)
	}
	return c.e.tryIn(context.Background(), c.dir, c.env, nil, append(base, args...)...)
}

func (c *composeProject) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.try(args...)
	require.NoError(t, err, "docker compose %s:\n%s\n%s", strings.Join(args, " "), out, c.state())
	return strings.TrimSpace(out)
}

// state is what a failure report needs: every container's state and the recent logs.
func (c *composeProject) state() string {
	ps, _ := c.try("ps", "-a")
	logs, _ := c.try("logs", "--no-color", "--tail", "40")
	return "--- docker compose ps -a\n" + ps + "--- docker compose logs --tail 40\n" + logs
}

// container is one line of `docker compose ps --format json`.
type container struct {
	Name, Service, State, Health string
	ExitCode                     int
}

func (c *composeProject) containers(t *testing.T) []container {
	t.Helper()
	out := c.run(t, "ps", "-a", "--format", "json")
	var cs []container
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var ct container
		require.NoError(t, json.Unmarshal([]byte(line), &ct), line)
		cs = append(cs, ct)
	}
	return cs
}

// port is the host address a service's container port is published on.
func (c *composeProject) port(t *testing.T, service string, index, port int) string {
	t.Helper()
	return c.run(t, "port", "--index", fmt.Sprint(index), service, fmt.Sprint(port))
}

// agentTasks counts the tasks the demo agent printed, by resource.
func (c *composeProject) agentTasks(t *testing.T) map[string]int {
	t.Helper()
	out := c.run(t, "logs", "--no-color", "--no-log-prefix", "agent")
	counts := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^Resource: (\S+)$`).FindAllStringSubmatch(out, -1) {
		counts[m[1]]++
	}
	return counts
}

// TestComposeUp runs the repository's docker-compose.yaml on the Docker engine, with the
// khook and NATS images built here in place of the public ones, as a user would: every
// service becomes healthy, the README's curl reaches the demo agent, an edit of the mounted
// mappings applies without a restart, a restart and a SIGKILL of stages mid-stream lose
// nothing, and `down -v` leaves nothing behind.
func TestComposeUp(t *testing.T) {
	e := dockerEngine(t)
	khookImage, natsImage := images(t, e)

	dir := t.TempDir()
	// The services run as a non-root user and read the mounted config directory.
	require.NoError(t, os.Chmod(dir, 0o755))
	copyFile(t, "../docker-compose.yaml", filepath.Join(dir, "docker-compose.yaml"))
	cfgDir := filepath.Join(dir, "examples", "compose")
	require.NoError(t, os.MkdirAll(cfgDir, 0o755))
	entries, err := os.ReadDir("../examples/compose")
	require.NoError(t, err)
	for _, f := range entries {
		copyFile(t, filepath.Join("../examples/compose", f.Name()), filepath.Join(cfgDir, f.Name()))
	}

	c := &composeProject{e: e, dir: dir, name: fmt.Sprintf("khooktest%d", os.Getpid()), webhook: freePort(t)}
	natsPort, monitorPort := freePort(t), freePort(t)
	c.env = []string{
		"KHOOK_IMAGE=" + khookImage, "NATS_IMAGE=" + natsImage,
		// The images exist locally; `build` would rebuild from source with the Dockerfile,
		// which TestDockerfile covers.
		"KHOOK_PULL_POLICY=never",
		fmt.Sprintf("NATS_PORT=%d", natsPort), fmt.Sprintf("NATS_MONITOR_PORT=%d", monitorPort), fmt.Sprintf("WEBHOOK_PORT=%d", c.webhook),
	}
	down := func() {
		if out, err := c.try("down", "-v", "--remove-orphans", "--timeout", "30"); err != nil {
			t.Errorf("docker compose down -v: %v\n%s", err, out)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.state())
		}
		down()
	})

	// With the file's default pull policy (build), `docker compose pull` skips khook's
	// services instead of failing on an image no registry has.
	out, err := c.e.tryIn(context.Background(), dir, append(c.env, "KHOOK_PULL_POLICY=build"), nil,
		"compose", "-p", c.name, "pull", "streams-apply", "producer", "mapper", "dispatcher", "agent")
	require.NoError(t, err, "docker compose pull:\n%s", out)
	require.Equal(t, 5, strings.Count(out, "Skipped"), out)

	began := time.Now()
	c.run(t, "up", "--detach", "--wait", "--wait-timeout", "120")
	t.Logf("docker compose up --wait: every service healthy after %s", time.Since(began).Round(time.Millisecond))

	// Every long-running service is up and healthy, the one-shot streams apply has exited 0.
	want := map[string]int{"nats": 1, "streams-apply": 1, "producer": 1, "mapper": 1, "dispatcher": 2, "agent": 1}
	got := map[string]int{}
	for _, ct := range c.containers(t) {
		got[ct.Service]++
		switch ct.Service {
		case "streams-apply":
			require.Equal(t, "exited", ct.State, ct.Name)
			require.Equal(t, 0, ct.ExitCode, ct.Name)
		case "nats":
			require.Equal(t, "running", ct.State, ct.Name)
		default:
			require.Equal(t, "running", ct.State, ct.Name)
			require.Equal(t, "healthy", ct.Health, ct.Name)
		}
	}
	require.Equal(t, want, got)

	// The NATS monitoring port, and every stage's metrics and probe ports, are published.
	code, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/healthz?js-enabled-only=true", monitorPort))
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, body)
	for _, s := range []struct {
		service string
		index   int
		metric  string
	}{{"producer", 1, "khook_plugin_events_total"}, {"mapper", 1, "khook_mapper_"}, {"dispatcher", 1, "khook_dispatcher_"}, {"dispatcher", 2, "khook_dispatcher_"}} {
		code, body, err := httpGet("http://" + c.port(t, s.service, s.index, 8080) + "/metrics")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, code)
		require.True(t, strings.Contains(body, s.metric), "%s %d serves %s", s.service, s.index, s.metric)
		code, body, err = httpGet("http://" + c.port(t, s.service, s.index, 8081) + "/readyz")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, code, body)
	}

	// The README's curl, exactly: 202, and the agent's log shows the task.
	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	m := regexp.MustCompile(`curl -X POST localhost:8090/webhook -H 'Content-Type: application/json' \\\n\s+-d '([^']+)'`).FindSubmatch(readme)
	require.NotNil(t, m, "the README's curl")
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/webhook", c.webhook), "application/json", strings.NewReader(string(m[1])))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	c.waitLogs(t, "agent", "The deployment cart in namespace shop failed", 30*time.Second)

	// An edit of the mounted mappings applies to the next event, without a restart: the
	// mapper's reload counter moves, then deploy-failed maps to test-failed, whose hook
	// prompt differs.
	startedAt := func() string { return c.e.run(t, "inspect", "-f", "{{.State.StartedAt}}", c.name+"-mapper-1") }
	before := startedAt()
	mappings := filepath.Join(cfgDir, "event-mappings.yaml")
	b, err := os.ReadFile(mappings)
	require.NoError(t, err)
	edited := strings.Replace(string(b), "    eventType: deploy-failed\n", "    eventType: deploy-failed\n    internalType: test-failed\n", 1)
	require.NotEqual(t, string(b), edited)
	// Written as editors and the kubelet do: a new file renamed over the old one.
	require.NoError(t, os.WriteFile(mappings+".new", []byte(edited), 0o644))
	require.NoError(t, os.Rename(mappings+".new", mappings))
	_, mapperPort, err := net.SplitHostPort(c.port(t, "mapper", 1, 8080))
	require.NoError(t, err)
	port, err := strconv.Atoi(mapperPort)
	require.NoError(t, err)
	waitFor(t, func() bool { return metric(t, port, `khook_mapper_rules_reloads_total{result="success"}`) == 1 },
		30*time.Second, "the mapper to reload the edited mappings")
	code, body = postEvent(t, c.webhook, "edited", "rollout stuck")
	require.Equal(t, http.StatusAccepted, code, body)
	c.waitLogs(t, "agent", "Tests failed for edited: rollout stuck", 30*time.Second)
	require.Equal(t, before, startedAt(), "the mapper was not restarted")

	// Mid-stream, `docker compose restart dispatcher` (SIGTERM, drain, start) and a SIGKILL
	// of the mapper (then `docker compose start`, as an operator would: Docker does not
	// restart a container it was told to kill) lose no event.
	const total = 400
	var posted atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range total {
			code, body, err := postStatus(c.webhook, fmt.Sprintf("mid-%d", i))
			if err != nil || code != http.StatusAccepted {
				errs <- fmt.Errorf("event %d: %d %s %w", i, code, body, err)
				return
			}
			posted.Add(1)
		}
	}()
	waitFor(t, func() bool { return posted.Load() >= total/4 }, 60*time.Second, "a quarter of the events posted")
	c.run(t, "restart", "dispatcher")
	waitFor(t, func() bool { return posted.Load() >= total/2 }, 60*time.Second, "half of the events posted")
	c.run(t, "kill", "-s", "KILL", "mapper")
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	c.run(t, "start", "mapper")
	deadline := time.Now().Add(2 * time.Minute)
	var counts map[string]int
	for {
		counts = c.agentTasks(t)
		n := 0
		for i := range total {
			if counts[fmt.Sprintf("mid-%d", i)] > 0 {
				n++
			}
		}
		if n == total {
			break
		}
		require.True(t, time.Now().Before(deadline), "the agent saw %d of %d events posted across the restart and the kill", n, total)
		time.Sleep(500 * time.Millisecond) // the agent's log is polled; there is nothing to await
	}
	dups := 0
	for i := range total {
		dups += counts[fmt.Sprintf("mid-%d", i)] - 1
	}
	t.Logf("%d events posted across `restart dispatcher` and `kill -s KILL mapper`: all delivered, %d duplicate calls", total, dups)
	// A restart drains (no duplicate); the mapper's kill can only re-publish raw events,
	// which the events stream's duplicate window absorbs.
	require.Zero(t, dups)

	// down -v removes every container, network and volume of the project.
	down()
	for _, kind := range [][]string{{"ps", "-a"}, {"network", "ls"}, {"volume", "ls"}} {
		out := c.e.run(t, append(kind, "-q", "--filter", "label=com.docker.compose.project="+c.name)...)
		require.Empty(t, out, "docker %s after down -v", strings.Join(kind, " "))
	}
}

// waitLogs waits until a service's logs contain text.
func (c *composeProject) waitLogs(t *testing.T, service, text string, timeout time.Duration) {
	t.Helper()
	waitFor(t, func() bool {
		out, err := c.try("logs", "--no-color", service)
		return err == nil && strings.Contains(out, text)
	}, timeout, fmt.Sprintf("%q in the logs of %s", text, service))
}

// waitFor polls cond every 200ms until it holds, failing with what was awaited after timeout.
func waitFor(t *testing.T, cond func() bool, timeout time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// postStatus POSTs a deploy-failed event for resource and returns the status, without
// failing the test, so that it can run outside the test's goroutine.
func postStatus(port int, resource string) (int, string, error) {
	body := fmt.Sprintf(`{"type":"deploy-failed","namespace":"shop","resourceName":%q,"message":"m"}`, resource)
	c := http.Client{Timeout: 30 * time.Second}
	resp, err := c.Post(fmt.Sprintf("http://127.0.0.1:%d/webhook", port), "application/json", strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Status, nil
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, b, 0o644))
}
