package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// compose is the part of docker-compose.yaml the test reads.
type compose struct {
	Services map[string]struct {
		Image       string                 `yaml:"image"`
		Build       any                    `yaml:"build"`
		Command     []string               `yaml:"command"`
		Volumes     []string               `yaml:"volumes"`
		Ports       []string               `yaml:"ports"`
		DependsOn   map[string]any         `yaml:"depends_on"`
		Healthcheck map[string]any         `yaml:"healthcheck"`
		Deploy      struct{ Replicas int } `yaml:"deploy"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

// TestComposeFile checks docker-compose.yaml's structure, then runs its services' commands
// as local processes (no Docker engine runs here): the official NATS image's command against
// a nats-server built from the module, and every khook service with the compose config,
// its host names pointed at loopback. A POST to the producer reaches the demo agent.
func TestComposeFile(t *testing.T) {
	b, err := os.ReadFile("../docker-compose.yaml")
	require.NoError(t, err)
	var c compose
	require.NoError(t, yaml.Unmarshal(b, &c))

	for _, name := range []string{"nats", "streams-apply", "producer", "mapper", "dispatcher", "agent"} {
		require.Contains(t, c.Services, name)
	}
	require.True(t, strings.HasPrefix(c.Services["nats"].Image, "nats:"), "the official NATS image")
	require.Contains(t, c.Services["nats"].Command, "-js")
	require.Contains(t, c.Services["nats"].Volumes, "nats-data:/data")
	require.Contains(t, c.Volumes, "nats-data")
	require.Equal(t, 2, c.Services["dispatcher"].Deploy.Replicas)
	require.Equal(t, []string{"streams", "apply", "--config", "/etc/khook/khook.yaml"}, c.Services["streams-apply"].Command)
	for _, name := range []string{"nats", "producer", "mapper", "dispatcher"} {
		require.NotEmpty(t, c.Services[name].Healthcheck, "%s has a healthcheck", name)
	}
	require.Contains(t, c.Services["producer"].Ports, "8090:8090")
	require.Contains(t, c.Services["producer"].DependsOn, "streams-apply")

	// The compose config, with the service host names and fixed ports of a container network
	// replaced by loopback and free ports.
	natsPort, agentPort, webhookPort := freePort(t), freePort(t), freePort(t)
	dir := t.TempDir()
	for _, f := range []string{"khook.yaml", "plugins.yaml", "event-mappings.yaml", "hooks.yaml"} {
		body, err := os.ReadFile(filepath.Join("../examples/compose", f))
		require.NoError(t, err)
		s := strings.NewReplacer(
			"nats://nats:4222", fmt.Sprintf("nats://127.0.0.1:%d", natsPort),
			"http://agent:8083", fmt.Sprintf("http://127.0.0.1:%d", agentPort),
			"port: 8090", fmt.Sprintf("port: %d", webhookPort),
		).Replace(string(body))
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), []byte(s), 0o600))
	}
	args := func(service string) []string {
		out := []string{}
		for _, a := range c.Services[service].Command {
			out = append(out, strings.ReplaceAll(a, "/etc/khook", dir))
		}
		return out
	}

	natsArgs := append([]string{"-a", "127.0.0.1", "-p", strconv.Itoa(natsPort)}, c.Services["nats"].Command...)
	for i, a := range natsArgs {
		if a == "/data" {
			natsArgs[i] = filepath.Join(dir, "nats-data")
		}
	}
	start(t, "nats (compose)", bins.natsServer, natsArgs...)
	agentArgs := args("agent")
	agentArgs[len(agentArgs)-1] = fmt.Sprintf("127.0.0.1:%d", agentPort)
	agent := start(t, "agent (compose)", bins.khook, agentArgs...)
	runOnce(t, args("streams-apply")...)

	services := []string{"producer", "mapper"}
	for range c.Services["dispatcher"].Deploy.Replicas {
		services = append(services, "dispatcher")
	}
	for i, name := range services {
		metrics, probes := freePort(t), freePort(t)
		t.Setenv("KHOOK_SERVER_METRICS_ADDR", fmt.Sprintf("127.0.0.1:%d", metrics))
		t.Setenv("KHOOK_SERVER_PROBES_ADDR", fmt.Sprintf("127.0.0.1:%d", probes))
		p := start(t, fmt.Sprintf("%s %d (compose)", name, i), bins.khook, args(name)...)
		waitReady(t, p, probes)
		// The healthcheck the compose file runs, against this process.
		runOnce(t, "probe", fmt.Sprintf("http://127.0.0.1:%d/readyz", probes))
	}

	code, body := postEvent(t, webhookPort, "cart", "rollout stuck")
	require.Equal(t, 202, code, body)
	require.Eventually(t, func() bool {
		return strings.Contains(agent.out.String(), "agent kagent/demo-agent received a task")
	}, 30*time.Second, 20*time.Millisecond)
	require.Contains(t, agent.out.String(), "The deployment cart in namespace shop failed")
}
