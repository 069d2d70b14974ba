package webhook

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"
)

// A plain body's "type" member is matched without regard to case, the last of several
// counting, as encoding/json matched it before the webhook read bodies in one pass: senders
// built bodies against that. (Found by an adversarial review.)
func TestPlainBodyTypeMatchesAsEncodingJSONDid(t *testing.T) {
	e := DefaultConfig().Endpoint
	h := http.Header{"Content-Type": {"application/json"}}
	for _, body := range []string{
		`{"Type":"deploy-failed"}`,
		`{"type":"deploy-failed","TYPE":5}`,
		`{"type":"a","Type":"deploy-failed"}`,
	} {
		var old struct {
			Type json.RawMessage `json:"type"`
		}
		require.NoError(t, json.Unmarshal([]byte(body), &old))
		var oldType string
		oldErr := json.Unmarshal(old.Type, &oldType)

		evs, _, err := decodeRequest(e, Name, h, url.Values{"type": {"from-query"}}, []byte(body))
		if oldErr != nil {
			require.Error(t, err, "%s: encoding/json refused its type (%v), the webhook accepts it", body, oldErr)
			continue
		}
		require.NoError(t, err, body)
		require.Equal(t, oldType, evs[0].Type, "%s: the event type the sender set", body)
	}
}

// Only JSON's whitespace (space, tab, CR, LF) may surround a body: , , U+0085 and
// U+00A0, which bytes.TrimSpace also strips, make a body that is not JSON, refused with a
// 400 like any other. (Found by an adversarial review.)
func TestBodyWithNonJSONWhitespaceIsRefused(t *testing.T) {
	e := DefaultConfig().Endpoint
	for _, ct := range []string{"application/json", "application/cloudevents+json"} {
		for _, body := range []string{
			"\f{\"type\":\"deploy-failed\",\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\"}",
			"{\"type\":\"deploy-failed\",\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\"}\u00a0",
		} {
			require.False(t, json.Valid([]byte(body)))
			_, _, err := decodeRequest(e, Name, http.Header{"Content-Type": {ct}}, nil, []byte(body))
			require.Error(t, err, "%s %q: not valid JSON, accepted", ct, body)
		}
	}
}
