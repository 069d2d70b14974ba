package test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestDockerfile builds the repository's Dockerfile with BuildKit, as `make docker-build`
// does, with local stand-ins for what a registry would give: the Go image is this machine's
// Go toolchain with a static busybox for RUN's shell, the runtime image is scratch, and
// GOPROXY is this machine's module cache served over HTTP. Then it runs the image as a user
// would: non-root, read-only root file system, help by default, every subcommand starts, and
// `khook run` keeps its data in the writable /data.
func TestDockerfile(t *testing.T) {
	e := dockerEngine(t)
	tag := fmt.Sprintf("%d", os.Getpid())

	goImage := "khook-test/go:" + tag
	goroot := strings.TrimSpace(goEnv(t, "GOROOT"))
	busybox := os.Getenv("BUSYBOX")
	require.NotEmpty(t, busybox, "BUSYBOX: a static busybox, the stand-in Go image's shell (make test finds or installs it: test/busybox/find-busybox.sh)")
	files := []imageFile{
		{name: "bin", dir: true, mode: 0o755},
		{name: "bin/busybox", src: busybox, mode: 0o755},
		{name: "bin/sh", link: "busybox"},
		{name: "bin/mkdir", link: "busybox"},
		{name: "tmp", dir: true, mode: 0o1777},
		{name: "usr", dir: true, mode: 0o755},
		{name: "usr/local", dir: true, mode: 0o755},
	}
	files = append(files, treeFiles(t, goroot, "usr/local/go")...)
	require.NoError(t, importImage(e, goImage, files,
		"ENV PATH=/usr/local/go/bin:/bin", "ENV GOPATH=/go", "ENV HOME=/root", "ENV GOTOOLCHAIN=local"))
	t.Cleanup(func() { _, _ = e.try(context.Background(), "rmi", "-f", goImage) })

	// The module cache's download directory is a module proxy in the GOPROXY protocol. The
	// image's `go mod download` asks for every module go.mod lists, and `go test` fetches
	// only those a build needs, so the cache is completed first.
	download := exec.Command("go", "mod", "download")
	download.Dir = ".."
	downloaded, err := download.CombinedOutput()
	require.NoError(t, err, "go mod download:\n%s", downloaded)
	modcache := strings.TrimSpace(goEnv(t, "GOMODCACHE"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: http.FileServer(http.Dir(filepath.Join(modcache, "cache", "download"))), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	image := "khook-test/dockerfile:" + tag
	began := time.Now()
	// The build's RUN steps share the host's network to reach the proxy on loopback. (The
	// docker CLI needs the buildx plugin for BuildKit: DOCKER_BUILDKIT=1 alone fails.)
	out, err := e.tryIn(context.Background(), "..", nil, nil, "buildx", "build", "--network", "host", "--progress", "plain",
		"--build-arg", "GO_IMAGE="+goImage, "--build-arg", "RUNTIME_IMAGE=scratch",
		"--build-arg", "GOPROXY=http://"+ln.Addr().String(), "--build-arg", "VERSION=dockerfile-test",
		"--tag", image, ".")
	require.NoError(t, err, "docker buildx build:\n%s", out)
	t.Cleanup(func() { _, _ = e.try(context.Background(), "rmi", "-f", image) })
	t.Logf("docker buildx build of the Dockerfile: %s", time.Since(began).Round(time.Millisecond))

	require.Equal(t, "65532:65532", e.run(t, "image", "inspect", "-f", "{{.Config.User}}", image), "runs as non-root")

	// With no arguments the image prints its commands and exits 0.
	help := e.run(t, "run", "--rm", "--read-only", image)
	require.Contains(t, help, "Available Commands:")
	require.Contains(t, e.run(t, "run", "--rm", "--read-only", image, "version"), "khook dockerfile-test")
	// Every subcommand starts from the image: it parses its flags and prints its help.
	for _, cmd := range [][]string{{"run"}, {"producer"}, {"mapper"}, {"dispatcher"}, {"agent"}, {"publish"}, {"replay"}, {"status"},
		{"streams", "apply"}, {"dlq", "list"}, {"mappings", "check"}, {"events", "tail"}, {"probe"}} {
		out := e.run(t, append(append([]string{"run", "--rm", "--read-only", image}, cmd...), "-h")...)
		require.Contains(t, out, "khook "+strings.Join(cmd, " "), "%s -h", cmd)
	}

	// `khook run` with a read-only root file system keeps the embedded server's files in
	// /data, a volume initialised from the image's directory owned by the non-root user.
	// The README's local configuration, as a user would mount it.
	cfg := t.TempDir()
	require.NoError(t, os.Chmod(cfg, 0o755))
	for _, f := range []string{"khook.yaml", "plugins.yaml", "event-mappings.yaml", "hooks.yaml"} {
		copyFile(t, filepath.Join("../examples/local", f), filepath.Join(cfg, f))
	}
	name := "khook-test-run-" + tag
	e.run(t, "run", "--detach", "--name", name, "--read-only", "--volume", name+":/data", "--volume", cfg+":/etc/khook:ro",
		image, "run", "--config", "/etc/khook/khook.yaml")
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := e.try(context.Background(), "logs", name)
			t.Log(logs)
		}
		_, _ = e.try(context.Background(), "rm", "-f", "-v", name)
		_, _ = e.try(context.Background(), "volume", "rm", "-f", name)
	})
	waitFor(t, func() bool {
		_, err := e.try(context.Background(), "exec", name, "/khook", "probe", "http://localhost:8081/readyz")
		return err == nil
	}, 60*time.Second, "khook run in the image to become ready")
	require.Contains(t, e.run(t, "exec", name, "/khook", "status", "--nats-url", "nats://127.0.0.1:4222"), "KHOOK_RAW")
}

func goEnv(t *testing.T, key string) string {
	t.Helper()
	out, err := exec.Command("go", "env", key).Output()
	require.NoError(t, err)
	return string(out)
}
