package mapping

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Encode writes Data as it is, so Data must be one JSON value: data that completes the
// event's object into a valid document (`{},"id":"someone-else"`) would smuggle members
// into the event. (Found by an adversarial review.)
func TestEncodeRefusesDataThatIsNotOneJSONValue(t *testing.T) {
	ev := Event{ID: "ev-1", Source: "webhook", SourceType: "t", Type: "t", Severity: "info",
		Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		Data: []byte(`{},"severity":"critical","id":"someone-else"`)}
	body, err := ev.Encode()
	if err == nil {
		got, derr := DecodeEvent(body)
		require.NoError(t, derr)
		t.Fatalf("Encode accepted data that is not one JSON value; round trip: id %q -> %q, severity %q -> %q",
			ev.ID, got.ID, ev.Severity, got.Severity)
	}
}
