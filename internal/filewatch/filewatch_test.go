package filewatch

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func watch(t *testing.T, path string, initial []byte, poll time.Duration) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan string, 10)
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, path, initial, poll, func(b []byte) { changes <- string(b) }) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return changes
}

func next(t *testing.T, changes <-chan string) string {
	t.Helper()
	select {
	case c := <-changes:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no change seen within 10s")
		return ""
	}
}

func TestWatchPlainFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.yaml")
	require.NoError(t, os.WriteFile(path, []byte("a"), 0o600))
	changes := watch(t, path, []byte("a"), time.Hour)

	require.NoError(t, os.WriteFile(path, []byte("b"), 0o600))
	require.Equal(t, "b", next(t, changes))
	// Rewriting the same content is not a change.
	require.NoError(t, os.WriteFile(path, []byte("b"), 0o600))
	require.NoError(t, os.WriteFile(path, []byte("c"), 0o600))
	require.Equal(t, "c", next(t, changes))
}

// TestWatchConfigMapSwap reproduces how the kubelet updates a mounted ConfigMap: the file is
// a symlink through ..data, and an update atomically renames a new ..data symlink into place.
func TestWatchConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	writeVersion := func(name, content string) {
		require.NoError(t, os.Mkdir(filepath.Join(dir, name), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, name, "f.yaml"), []byte(content), 0o600))
	}
	writeVersion("..v1", "one")
	require.NoError(t, os.Symlink("..v1", filepath.Join(dir, "..data")))
	require.NoError(t, os.Symlink("..data/f.yaml", filepath.Join(dir, "f.yaml")))
	path := filepath.Join(dir, "f.yaml")
	changes := watch(t, path, []byte("one"), time.Hour)

	writeVersion("..v2", "two")
	require.NoError(t, os.Symlink("..v2", filepath.Join(dir, "..data_tmp")))
	require.NoError(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	require.NoError(t, os.RemoveAll(filepath.Join(dir, "..v1")))
	require.Equal(t, "two", next(t, changes))
}

func TestWatchSeesChangeBeforeStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.yaml")
	require.NoError(t, os.WriteFile(path, []byte("new"), 0o600))
	changes := watch(t, path, []byte("old"), time.Hour)
	require.Equal(t, "new", next(t, changes))
}

func TestWatchPollsWithoutNotifications(t *testing.T) {
	// A file in a directory that is replaced wholesale loses its inotify watch; polling
	// still sees the change.
	root := t.TempDir()
	dir := filepath.Join(root, "conf")
	require.NoError(t, os.Mkdir(dir, 0o755))
	path := filepath.Join(dir, "f.yaml")
	require.NoError(t, os.WriteFile(path, []byte("a"), 0o600))
	changes := watch(t, path, []byte("a"), 20*time.Millisecond)

	other := filepath.Join(root, "conf2")
	require.NoError(t, os.Mkdir(other, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(other, "f.yaml"), []byte("b"), 0o600))
	require.NoError(t, os.RemoveAll(dir))
	require.NoError(t, os.Rename(other, dir))
	require.Equal(t, "b", next(t, changes))
}

func TestWatchEmptyFileNeedsConfirmation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.yaml")
	require.NoError(t, os.WriteFile(path, []byte("a"), 0o600))
	changes := watch(t, path, []byte("a"), time.Hour)
	// A file that stays empty is a real change, seen once confirmed.
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	require.Equal(t, "", next(t, changes))
}
