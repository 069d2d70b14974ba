package test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The container tests run khook's images on the machine's Docker engine, through the docker
// CLI with the Compose v2 and buildx plugins. No registry is reachable, so every image is
// built here: khook and nats-server as static binaries on scratch, imported with
// `docker import`.

// engine runs the docker CLI with a private DOCKER_CONFIG whose cli-plugins are those built
// by test/docker/build-plugins.sh (DOCKER_PLUGINS), or the machine's own when it has both.
type engine struct {
	env []string
}

var engineOnce struct {
	sync.Once
	e   *engine
	err error
}

// dockerEngine returns the engine, failing the test with what is missing when there is none.
func dockerEngine(t *testing.T) *engine {
	t.Helper()
	engineOnce.Do(func() {
		env := os.Environ()
		if dir := os.Getenv("DOCKER_PLUGINS"); dir != "" {
			cfg := filepath.Join(bins.dir, "docker-config")
			if err := os.MkdirAll(filepath.Join(cfg, "cli-plugins"), 0o755); err != nil {
				engineOnce.err = err
				return
			}
			for _, p := range []string{"docker-compose", "docker-buildx"} {
				if err := os.Symlink(filepath.Join(dir, p), filepath.Join(cfg, "cli-plugins", p)); err != nil {
					engineOnce.err = err
					return
				}
			}
			env = append(env, "DOCKER_CONFIG="+cfg)
		}
		e := &engine{env: env}
		for _, probe := range [][]string{{"version", "--format", "{{.Server.Version}}"}, {"compose", "version"}, {"buildx", "version"}} {
			if out, err := e.try(context.Background(), probe...); err != nil {
				engineOnce.err = fmt.Errorf("docker %s: %v: %s\n(the container tests need a running Docker engine and the Compose v2 and buildx plugins; "+
					"`make test` builds the plugins with test/docker/build-plugins.sh and sets DOCKER_PLUGINS)", strings.Join(probe, " "), err, out)
				return
			}
		}
		engineOnce.e = e
	})
	require.NoError(t, engineOnce.err)
	return engineOnce.e
}

// try runs docker with args and returns its combined output.
func (e *engine) try(ctx context.Context, args ...string) (string, error) {
	return e.tryIn(ctx, "", nil, nil, args...)
}

// tryIn runs docker in dir with extra environment and stdin.
func (e *engine) tryIn(ctx context.Context, dir string, env []string, stdin io.Reader, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Dir, cmd.Env, cmd.Stdin = dir, append(append([]string{}, e.env...), env...), stdin
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// run is try that fails the test on error, with docker's output.
func (e *engine) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.try(context.Background(), args...)
	require.NoError(t, err, "docker %s:\n%s", strings.Join(args, " "), out)
	return strings.TrimSpace(out)
}

// testImages are the khook and NATS images built once for the package: static binaries on
// scratch, standing in for ghcr.io/khook/khook and the official nats image.
var testImages struct {
	sync.Once
	khook, nats string
	err         error
}

// images builds (once) and returns the khook and NATS test images. TestMain removes them.
func images(t *testing.T, e *engine) (khookImage, natsImage string) {
	t.Helper()
	testImages.Do(func() {
		tag := fmt.Sprintf("%d", os.Getpid())
		dir := filepath.Join(bins.dir, "static")
		for _, b := range [][]string{{"khook", "github.com/khook/khook/cmd/khook"}, {"nats-server", "github.com/nats-io/nats-server/v2"}} {
			cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=container-test", "-o", filepath.Join(dir, b[0]), b[1])
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				testImages.err = fmt.Errorf("building static %s: %w\n%s", b[0], err, out)
				return
			}
		}
		// The khook image is laid out as the Dockerfile's: /khook, a /data directory owned by
		// the non-root user, and that user.
		khook := "khook-test/khook:" + tag
		if err := importImage(e, khook, []imageFile{
			{name: "khook", src: filepath.Join(dir, "khook"), mode: 0o755},
			{name: "data", dir: true, mode: 0o755, uid: 65532},
			{name: "tmp", dir: true, mode: 0o1777},
		}, `ENTRYPOINT ["/khook"]`, `CMD ["--help"]`, "USER 65532:65532"); err != nil {
			testImages.err = err
			return
		}
		nats := "khook-test/nats:" + tag
		if err := importImage(e, nats, []imageFile{{name: "nats-server", src: filepath.Join(dir, "nats-server"), mode: 0o755}},
			`ENTRYPOINT ["/nats-server"]`, "EXPOSE 4222 6222 8222"); err != nil {
			testImages.err = err
			return
		}
		testImages.khook, testImages.nats = khook, nats
		atExit = append(atExit, func() { _, _ = e.try(context.Background(), "rmi", "-f", khook, nats) })
	})
	require.NoError(t, testImages.err)
	return testImages.khook, testImages.nats
}

// imageFile is one entry of an imported image's root file system.
type imageFile struct {
	name string // path inside the image, without the leading slash
	src  string // host file to copy; empty for a directory or a symlink
	link string // symlink target
	dir  bool
	mode fs.FileMode
	uid  int
}

// importImage writes files as a tar stream into `docker import`, with Dockerfile changes.
func importImage(e *engine, tag string, files []imageFile, changes ...string) error {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, files)) }()
	args := []string{"import"}
	for _, c := range changes {
		args = append(args, "--change", c)
	}
	out, err := e.tryIn(context.Background(), "", nil, pr, append(args, "-", tag)...)
	if err != nil {
		return fmt.Errorf("docker import %s: %w\n%s", tag, err, out)
	}
	return nil
}

func writeTar(w io.Writer, files []imageFile) error {
	tw := tar.NewWriter(w)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: int64(f.mode.Perm()), Uid: f.uid, Gid: f.uid, ModTime: time.Unix(0, 0)}
		if f.mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		switch {
		case f.dir:
			h.Typeflag, h.Name = tar.TypeDir, f.name+"/"
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
		case f.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.link
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
		default:
			src, err := os.Open(f.src)
			if err != nil {
				return err
			}
			st, err := src.Stat()
			if err != nil {
				src.Close()
				return err
			}
			h.Typeflag, h.Size = tar.TypeReg, st.Size()
			if err := tw.WriteHeader(h); err != nil {
				src.Close()
				return err
			}
			_, err = io.Copy(tw, src)
			src.Close()
			if err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// httpGet returns the status and body of a GET, or an error.
func httpGet(url string) (int, string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}

// treeFiles lists a host directory tree as image entries under prefix: directories, regular
// files and symlinks, with their modes.
func treeFiles(t *testing.T, root, prefix string) []imageFile {
	t.Helper()
	var files []imageFile
	require.NoError(t, filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(filepath.Join(prefix, rel))
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			files = append(files, imageFile{name: name, dir: true, mode: info.Mode()})
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			files = append(files, imageFile{name: name, link: target})
		case info.Mode().IsRegular():
			files = append(files, imageFile{name: name, src: path, mode: info.Mode()})
		}
		return nil
	}))
	return files
}
