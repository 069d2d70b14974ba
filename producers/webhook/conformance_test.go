package webhook

import (
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/khook/khook/producers"
	"github.com/khook/khook/producers/producertest"
)

// addresses remembers where each webhook under test listens.
type addresses struct {
	mu sync.Mutex
	m  map[producers.EventSource]chan net.Addr
}

func (a *addresses) prepare(t *testing.T, p producers.EventSource) {
	ch := make(chan net.Addr, 1)
	a.mu.Lock()
	a.m[p] = ch
	a.mu.Unlock()
	p.(*Webhook).OnListen = func(addr net.Addr) { ch <- addr }
}

func (a *addresses) post(t *testing.T, p producers.EventSource, path, contentType, body string) {
	t.Helper()
	a.mu.Lock()
	ch := a.m[p]
	a.mu.Unlock()
	addr := <-ch
	ch <- addr // keep it for later calls
	resp, err := http.Post("http://"+addr.String()+path, contentType, strings.NewReader(body))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
}

func TestConformance(t *testing.T) {
	a := &addresses{m: map[producers.EventSource]chan net.Addr{}}
	producertest.Run(t, producertest.Case{
		Name:    Name,
		Build:   FromSpec,
		Config:  "address: 127.0.0.1\nport: 0\n",
		Prepare: a.prepare,
		Trigger: func(t *testing.T, p producers.EventSource) {
			a.post(t, p, "/webhook", "application/json", `{"type":"deploy-failed","resourceName":"cart"}`)
		},
		BadConfigs: map[string]string{
			"port":         "port: 70000\n",
			"path":         "path: no-slash\n",
			"prot":         "prot: 1\n",
			"maxBodyBytes": "maxBodyBytes: -1\n",
			"tokenFile":    "token: a\ntokenFile: b\n",
			"endpoints[0]": "endpoints:\n  - path: /x\n    source: Not A Token\n",
		},
	})
}
