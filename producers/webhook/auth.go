package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"

	"github.com/khook/khook/internal/secret"
)

// authenticator checks one endpoint's credentials: a bearer token, an HMAC signature of the
// body, both, or neither.
type authenticator struct {
	token      *secret.Value
	hmacKey    *secret.Value
	hmacHeader string
}

func newAuthenticator(e Endpoint) authenticator {
	return authenticator{
		token:      secret.New(e.Token, e.TokenFile),
		hmacKey:    secret.New(e.HMACSecret, e.HMACSecretFile),
		hmacHeader: e.HMACHeader,
	}
}

// check returns nil when the request carries every credential the endpoint requires. Its
// errors name what failed for the server's log, never the expected values.
func (a authenticator) check(h http.Header, body []byte) error {
	if a.token != nil {
		if err := a.token.CheckBearer(h); err != nil {
			return err
		}
	}
	if a.hmacKey != nil {
		key, err := a.hmacKey.Get()
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
