package test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestComposeMulticluster runs docker-compose.multicluster.yaml on the Docker engine with the
// images built here: `up --wait` brings the hub, the agent and two edges up healthy; an
// event posted to each edge reaches the agent from its cluster; the hub reports both edges
// connected; an edge stopped keeps its events and forwards them when started again; and
// `down -v` leaves nothing behind.
func TestComposeMulticluster(t *testing.T) {
	e := dockerEngine(t)
	khookImage, _ := images(t, e)
	dir := t.TempDir()
	require.NoError(t, os.Chmod(dir, 0o755))
	copyFile(t, "../docker-compose.multicluster.yaml", filepath.Join(dir, "docker-compose.multicluster.yaml"))
	cfgDir := filepath.Join(dir, "examples", "multicluster", "compose")
	require.NoError(t, os.MkdirAll(cfgDir, 0o755))
	entries, err := os.ReadDir("../examples/multicluster/compose")
	require.NoError(t, err)
	for _, f := range entries {
		copyFile(t, filepath.Join("../examples/multicluster/compose", f.Name()), filepath.Join(cfgDir, f.Name()))
	}
	eu, us := freePort(t), freePort(t)
	c := &composeProject{e: e, dir: dir, name: fmt.Sprintf("khookmc%d", os.Getpid())}
	c.env = []string{"KHOOK_IMAGE=" + khookImage, "KHOOK_PULL_POLICY=never", "LEAF_PASSWORD=test-leaf-secret",
		fmt.Sprintf("EU_WEBHOOK_PORT=%d", eu), fmt.Sprintf("US_WEBHOOK_PORT=%d", us), fmt.Sprintf("HUB_NATS_PORT=%d", freePort(t))}
	c.file = "docker-compose.multicluster.yaml"
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.state())
		}
		if out, err := c.try("down", "-v", "--remove-orphans", "--timeout", "30"); err != nil {
			t.Errorf("docker compose down -v: %v\n%s", err, out)
		}
	})

	began := time.Now()
	c.run(t, "up", "--detach", "--wait", "--wait-timeout", "120")
	t.Logf("docker compose -f docker-compose.multicluster.yaml up --wait: healthy after %s", time.Since(began).Round(time.Millisecond))
	got := map[string]int{}
	for _, ct := range c.containers(t) {
		got[ct.Service]++
		require.Equal(t, "healthy", ct.Health, ct.Name)
	}
	require.Equal(t, map[string]int{"agent": 1, "hub": 1, "edge-eu-1": 1, "edge-us-1": 1}, got)

	post := func(port int, resource string) {
		code, body, err := postStatus(port, resource)
		require.NoError(t, err)
		require.Equal(t, http.StatusAccepted, code, body)
	}
	post(eu, "cart")
	post(us, "cart")
	c.waitLogs(t, "agent", "The deployment cart in namespace shop of cluster eu-1 failed", time.Minute)
	c.waitLogs(t, "agent", "The deployment cart in namespace shop of cluster us-1 failed", time.Minute)
	_, hubPort, err := net.SplitHostPort(c.port(t, "hub", 1, 8080))
	require.NoError(t, err)
	port, err := strconv.Atoi(hubPort)
	require.NoError(t, err)
	for _, cl := range []string{"eu-1", "us-1"} {
		waitFor(t, func() bool { return metric(t, port, `khook_edge_connected{cluster="`+cl+`"}`) == 1 }, time.Minute, "the hub reporting "+cl+" connected")
	}

	// An edge stopped and started again keeps what it stored and forwards what it takes.
	c.run(t, "stop", "edge-us-1")
	c.run(t, "start", "edge-us-1")
	waitFor(t, func() bool {
		code, _, err := postStatus(us, "after-restart")
		return err == nil && code == http.StatusAccepted
	},
		time.Minute, "edge us-1 taking events again")
	c.waitLogs(t, "agent", "The deployment after-restart in namespace shop of cluster us-1 failed", 3*time.Minute)
	require.Equal(t, 1, strings.Count(c.run(t, "logs", "--no-color", "agent"), "cart in namespace shop of cluster us-1"),
		"the stored event is not forwarded twice")
}
