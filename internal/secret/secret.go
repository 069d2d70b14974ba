// Package secret holds credentials read from configuration or files, and the constant-time
// bearer token check the webhook and the events API share.
package secret

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Value is a credential from config or from a file. A file is re-read whenever its size or
// modification time changes (a Kubernetes Secret update swaps the file behind a symlink), so
// credentials rotate without a restart. The value is never logged.
type Value struct {
	static []byte
	path   string

	mu      sync.Mutex
	value   []byte
	modTime time.Time
	size    int64
}

// New returns the credential given as value or kept in the file at path, or nil when both
// are empty (no credential required).
func New(value, path string) *Value {
	if value == "" && path == "" {
		return nil
	}
	return &Value{static: []byte(value), path: path}
}

// Get returns the current value, or an error when the file cannot be read.
func (s *Value) Get() ([]byte, error) {
	if s.path == "" {
		return s.static, nil
	}
	fi, err := os.Stat(s.path)
	if err != nil {
		return nil, fmt.Errorf("secret file: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// File times can be coarse (a kernel tick on many file systems), so a rewrite of the
	// same length moments after the last read may keep both the time and the size. A file
	// changed in the last two seconds is therefore read again, as git re-checks "racily
	// clean" files; older ones are trusted by their time and size, which keeps the webhook's
	// hot path to one stat.
	recent := time.Since(fi.ModTime()) < 2*time.Second
	if s.value == nil || recent || !fi.ModTime().Equal(s.modTime) || fi.Size() != s.size {
		b, err := os.ReadFile(s.path)
		if err != nil {
			return nil, fmt.Errorf("secret file: %w", err)
		}
		s.value, s.modTime, s.size = bytes.TrimSpace(b), fi.ModTime(), fi.Size()
	}
	return s.value, nil
}

// Require returns an error when the credential cannot be read or is empty. Services call it
// at start-up for every credential that is configured: one that resolves empty (an empty
// Secret, a file not yet written) must stop the service rather than run it unprotected or
// send an empty token. A nil Value (none configured) passes.
func (s *Value) Require(what string) error {
	if s == nil {
		return nil
	}
	v, err := s.Get()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if len(v) == 0 {
		return fmt.Errorf("%s: the secret is empty; refusing to start without it", what)
	}
	return nil
}

// Bearer returns the Authorization header value for an outgoing request. An unreadable or
// empty credential is an error: a request is never sent with an empty token, which an
// agent might accept as anonymous.
func (s *Value) Bearer(what string) (string, error) {
	v, err := s.Get()
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	if len(v) == 0 {
		return "", fmt.Errorf("%s: the token is empty; not sending the request without it", what)
	}
	return "Bearer " + string(v), nil
}

// ErrBearer is a missing or wrong bearer token.
var ErrBearer = errors.New("missing or wrong bearer token")

// CheckBearer returns nil when the request's Authorization header carries the token. Its
// errors never contain either token.
func (s *Value) CheckBearer(h http.Header) error {
	want, err := s.Get()
	if err != nil {
		return err
	}
	got, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	if !ok || !Equal([]byte(strings.TrimSpace(got)), want) {
		return ErrBearer
	}
	return nil
}

// Equal compares two secrets without leaking where they differ or how long the expected one
// is: both are hashed to a fixed length first. An empty expected secret matches nothing.
func Equal(got, want []byte) bool {
	g, w := sha256.Sum256(got), sha256.Sum256(want)
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1 && len(want) > 0
}
