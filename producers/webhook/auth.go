package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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

// checkHeaders checks what the headers alone can prove: the bearer token. It runs before
// the body is read, so an unauthenticated caller never holds a request slot or makes the
// server read its body.
func (a authenticator) checkHeaders(h http.Header) error {
	if a.token != nil {
		return a.token.CheckBearer(h)
	}
	return nil
}

// needsBody reports whether the credentials can only be checked against the body (HMAC).
func (a authenticator) needsBody() bool { return a.hmacKey != nil }

// checkBody checks the HMAC signature of the body, when the endpoint requires one. Its
// errors name what failed for the server's log, never the expected values.
func (a authenticator) checkBody(h http.Header, body []byte) error {
	if a.hmacKey == nil {
		return nil
	}
	key, err := a.hmacKey.Get()
	if err != nil {
		return err
	}
	if len(key) == 0 {
		// A secret file emptied at run time: with an empty key anyone can sign. Refused, as
		// an empty bearer token is.
		return errors.New("the hmac secret is empty; refusing every signature until it is set")
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
	return nil
}
