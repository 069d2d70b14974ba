package streams

import (
	"errors"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MsgSize is the number of bytes a message takes against the server's max_payload: its body
// and its encoded headers.
func MsgSize(m *nats.Msg) int {
	n := len(m.Data)
	if len(m.Header) > 0 {
		n += len("NATS/1.0\r\n\r\n")
		for k, vs := range m.Header {
			for _, v := range vs {
				n += len(k) + len(v) + 4
			}
		}
	}
	return n
}

// MaxPayload is the largest message the connected server accepts (its max_payload, learnt
// when the connection was made), or 0 when it is not known.
func MaxPayload(js jetstream.JetStream) int {
	if nc := js.Conn(); nc != nil {
		return int(nc.MaxPayload())
	}
	return 0
}

// Unstorable reports whether a publish failed because the message can never be stored as it
// is: larger than the server's max_payload or the stream's maximum message size. Retrying
// cannot help, so a stage dead-letters its input, and a producer refuses the event, instead
// of trying again forever.
func Unstorable(err error) bool {
	if errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum) {
		return true
	}
	var api *jetstream.APIError
	return errors.As(err, &api) && api.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}
