package dispatch

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// heartbeats keeps the messages a dispatcher owns from being redelivered while it works on
// them: every interval it tells the server each one is still in progress. A message is
// added the moment it is received and removed once it is settled, so neither a long agent
// call nor a wait for a worker lets its ack wait run out, and the server never hands a
// second copy to another worker or replica while this one holds it.
type heartbeats struct {
	every time.Duration

	mu   sync.Mutex
	msgs map[jetstream.Msg]struct{}
}

func newHeartbeats(every time.Duration) *heartbeats {
	return &heartbeats{every: every, msgs: map[jetstream.Msg]struct{}{}}
}

func (h *heartbeats) add(m jetstream.Msg) {
	h.mu.Lock()
	h.msgs[m] = struct{}{}
	h.mu.Unlock()
}

func (h *heartbeats) remove(m jetstream.Msg) {
	h.mu.Lock()
	delete(h.msgs, m)
	h.mu.Unlock()
}

// run sends the heartbeats until the returned stop is called.
func (h *heartbeats) run() (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(h.every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			h.mu.Lock()
			owned := make([]jetstream.Msg, 0, len(h.msgs))
			for m := range h.msgs {
				owned = append(owned, m)
			}
			h.mu.Unlock()
			for _, m := range owned {
				_ = m.InProgress()
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}
