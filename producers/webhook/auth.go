package webhook

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// secret is a credential from config or from a file. A file is re-read whenever its size or
// modification time changes (a Kubernetes Secret update swaps the file behind a symlink), so
// credentials rotate without a restart. The value is never logged.
type secret struct {
	static []byte
	path   string

	mu      sync.Mutex
	value   []byte
	modTime time.Time
	size    int64
}

func newSecret(value, path string) *secret {
	if value == "" && path == "" {
		return nil
	}
	return &secret{static: []byte(value), path: path}
}

// get returns the current value, or an error when the file cannot be read.
func (s *secret) get() ([]byte, error) {
	if s.path == "" {
		return s.static, nil
	}
	fi, err := os.Stat(s.path)
	if err != nil {
		return nil, fmt.Errorf("secret file: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.value == nil || !fi.ModTime().Equal(s.modTime) || fi.Size() != s.size {
		b, err := os.ReadFile(s.path)
		if err != nil {
			return nil, fmt.Errorf("secret file: %w", err)
		}
		s.value, s.modTime, s.size = bytes.TrimSpace(b), fi.ModTime(), fi.Size()
	}
	return s.value, nil
}

// authenticator checks one endpoint's credentials: a bearer token, an HMAC signature of the
// body, both, or neither.
type authenticator struct {
	token      *secret
	hmacKey    *secret
	hmacHeader string
}

func newAuthenticator(e Endpoint) authenticator {
	return authenticator{
		token:      newSecret(e.Token, e.TokenFile),
		hmacKey:    newSecret(e.HMACSecret, e.HMACSecretFile),
		hmacHeader: e.HMACHeader,
	}
}

// check returns nil when the request carries every credential the endpoint requires. Its
// errors name what failed for the server's log, never the expected values.
func (a authenticator) check(h http.Header, body []byte) error {
	if a.token != nil {
		want, err := a.token.get()
		if err != nil {
			return err
		}
		got, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
		if !ok || !equalConstantTime([]byte(strings.TrimSpace(got)), want) {
			return fmt.Errorf("missing or wrong bearer token")
		}
	}
	if a.hmacKey != nil {
		key, err := a.hmacKey.get()
		if err != nil {
			return err
		}
		sig := strings.TrimPrefix(h.Get(a.hmacHeader), "sha256=")
		got, err := hex.DecodeString(sig)
		if err != nil || len(got) == 0 {
			return fmt.Errorf("missing or malformed %s", a.hmacHeader)
		}
		mac := hmac.New(sha256.New, key)
		mac.Write(body)
		if !hmac.Equal(got, mac.Sum(nil)) {
			return fmt.Errorf("wrong %s", a.hmacHeader)
		}
	}
	return nil
}

// equalConstantTime compares two secrets without leaking where they differ or how long the
// expected one is: both are hashed to a fixed length first.
func equalConstantTime(got, want []byte) bool {
	g, w := sha256.Sum256(got), sha256.Sum256(want)
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1 && len(want) > 0
}
