// Package filewatch tells a component when the content of a configuration file changes.
//
// It watches the file's directory rather than the file, because Kubernetes updates a mounted
// ConfigMap by swapping a `..data` symlink in that directory: the file's own inode never
// changes. Every notification is confirmed by comparing a hash of the content, and a slow
// poll backs up filesystems without inotify, so a change is seen exactly once either way.
package filewatch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watch calls onChange with the new content each time the file at path changes, until ctx
// ends. initial is the content the caller already loaded, so a change that happens before
// Watch starts is not missed. A file that cannot be read is skipped until it can be (a
// ConfigMap swap removes and recreates links). poll is the fallback polling interval.
func Watch(ctx context.Context, path string, initial []byte, poll time.Duration, onChange func(content []byte)) error {
	last := sha256.Sum256(initial)
	// An editor or `>` redirection truncates the file before writing it, so an empty read
	// may be a write in progress; it counts only if the file is still empty a moment later.
	emptyOnce := false
	check := func() (again bool) {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		if len(b) == 0 && !emptyOnce {
			emptyOnce = true
			return true
		}
		emptyOnce = false
		sum := sha256.Sum256(b)
		if bytes.Equal(sum[:], last[:]) {
			return false
		}
		last = sum
		onChange(b)
		return false
	}

	var events <-chan fsnotify.Event
	if w, err := fsnotify.NewWatcher(); err == nil {
		defer w.Close()
		if err := w.Add(filepath.Dir(path)); err == nil {
			events = w.Events
		}
	}
	ticker := time.NewTicker(poll)
	defer ticker.Stop()
	// Writers often produce several events per change; wait for them to settle.
	var settle <-chan time.Time
	recheck := func(again bool) {
		if again {
			settle = time.After(100 * time.Millisecond)
		}
	}
	recheck(check()) // the file may have changed between the caller's load and now
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			settle = time.After(50 * time.Millisecond)
		case <-settle:
			settle = nil
			recheck(check())
		case <-ticker.C:
			recheck(check())
		}
	}
}
