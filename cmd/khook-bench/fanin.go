package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/streams"
)

// FanIn is the fan-in scenario's figures: a hub whose raw stream sources the raw streams of
// fanInEdges edges over leaf node connections, as `khook edge` and a hub run them.
type FanIn struct {
	Edges int `json:"edges"`
	// BacklogMiB per edge, stored before the hub sourced it, and the time the hub took to
	// store all of it (the catch-up after an outage).
	BacklogMiB       float64 `json:"backlogMiBPerEdge"`
	BacklogEvents    int     `json:"backlogEventsPerEdge"`
	CatchUpSeconds   float64 `json:"catchUpSeconds"`
	CatchUpMiBPerSec float64 `json:"catchUpMiBPerSec"`
	// LiveEvents per edge, published at every edge at once while the hub sources them; the
	// scenario's events/s is the hub's storing rate of all of them.
	LiveEvents int `json:"liveEventsPerEdge"`
}

const fanInEdges = 3

// fanIn runs a hub and three edges as nats-server processes configured as khook configures
// its embedded servers (a leaf port with a password and no advertise at the hub; a domain
// per edge and khook's subjects denied both ways on the leaf connection), and khook's own
// stream topology (streams.ApplyEdge at the edges, streams.Apply with the edges at the hub).
func fanIn(e *env, r *Result) error {
	ctx := context.Background()
	topo := streams.Default()
	leaf := freePort()
	hubURL, err := e.fanInServer("hub", fmt.Sprintf(`leafnodes { listen: 127.0.0.1:%d, no_advertise: true, authorization { user: edge, password: bench } }`, leaf))
	if err != nil {
		return err
	}
	var edges []jetstream.JetStream
	for i := range fanInEdges {
		deny := `["` + strings.Join(topo.LeafDeny(), `","`) + `"]`
		url, err := e.fanInServer(fmt.Sprintf("edge-%d", i), fmt.Sprintf(`leafnodes { reconnect: "1s", remotes [ { url: "nats-leaf://edge:bench@127.0.0.1:%d", deny_exports: %s, deny_imports: %s } ] }`, leaf, deny, deny))
		if err != nil {
			return err
		}
		nc, err := nats.Connect(url)
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(jsInflight))
		if err != nil {
			return err
		}
		if _, err := streams.ApplyEdge(ctx, js, topo, streams.EdgeBuffer{MaxAge: time.Hour, MaxBytes: 8 << 30}); err != nil {
			return fmt.Errorf("edge %d: %w", i, err)
		}
		edges = append(edges, js)
		topo.Edges = append(topo.Edges, fmt.Sprintf("edge-%d", i))
	}
	hnc, err := nats.Connect(hubURL)
	if err != nil {
		return err
	}
	defer hnc.Close()
	hjs, err := jetstream.New(hnc)
	if err != nil {
		return err
	}

	// The backlog: each edge stores its share while no hub sources it, as during an outage.
	backlog := max(1, int(e.cfg.fanInMiB*(1<<20))/fanInEventBytes)
	f := &FanIn{Edges: fanInEdges, BacklogEvents: backlog, BacklogMiB: float64(backlog*fanInEventBytes) / (1 << 20)}
	if err := publishEdges(edges, 0, backlog); err != nil {
		return err
	}
	e.resetAnon()
	began := time.Now()
	if _, err := streams.Apply(ctx, hjs, topo); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	if err := e.waitHub(hjs, topo, uint64(fanInEdges*backlog)); err != nil {
		return fmt.Errorf("catch-up: %w", err)
	}
	f.CatchUpSeconds = time.Since(began).Seconds()
	f.CatchUpMiBPerSec = float64(fanInEdges) * f.BacklogMiB / f.CatchUpSeconds

	// Live: every edge publishes at once, and the hub stores as it sources.
	f.LiveEvents = e.cfg.events
	run := e.startSaturation()
	if err := publishEdges(edges, backlog, f.LiveEvents); err != nil {
		return err
	}
	if err := e.waitHub(hjs, topo, uint64(fanInEdges*(backlog+f.LiveEvents))); err != nil {
		return fmt.Errorf("live: %w", err)
	}
	run.finish(r, fanInEdges*f.LiveEvents)
	r.FanIn = f
	_, _, peaks := e.usage()
	r.PeakRSSMiB = map[string]float64{}
	for name, b := range peaks {
		r.PeakRSSMiB[name] = float64(b) / (1 << 20)
	}
	return nil
}

// fanInEventBytes is the size of one fan-in event's payload: 1 KiB, as the other scenarios'.
const fanInEventBytes = 1024

// fanInServer starts a nats-server process named name, with JetStream in the domain of the
// same name (an edge's is its cluster's, as `khook edge` sets it) and the extra
// configuration, and returns its URL.
func (e *env) fanInServer(name, extra string) (string, error) {
	port := freePort()
	conf := filepath.Join(e.dir, name+".conf")
	body := fmt.Sprintf("server_name: %s\nlisten: 127.0.0.1:%d\njetstream { store_dir: %q, domain: %s }\n%s\n",
		name, port, filepath.Join(e.dir, name), name, extra)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return "", err
	}
	p, err := e.startStage("nats "+name, nil, e.cfg.natsBin, "-c", conf)
	if err != nil {
		return "", err
	}
	if err := waitListening(fmt.Sprintf("127.0.0.1:%d", port), p); err != nil {
		return "", err
	}
	return fmt.Sprintf("nats://127.0.0.1:%d", port), nil
}

// publishEdges publishes n events, from sequence from on, at every edge at once, pipelined.
func publishEdges(edges []jetstream.JetStream, from, n int) error {
	body := []byte(strings.Repeat("x", fanInEventBytes))
	var wg sync.WaitGroup
	errs := make([]error, len(edges))
	for i, js := range edges {
		wg.Go(func() {
			for k := from; k < from+n; k++ {
				m := nats.NewMsg("khook.raw.webhook.bench")
				m.Data = body
				m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("webhook/@edge-%d/%d", i, k))
				if _, err := js.PublishMsgAsync(m); err != nil {
					errs[i] = err
					return
				}
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(5 * time.Minute):
				errs[i] = errors.New("publishes not acknowledged within 5 minutes")
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// waitHub waits until the hub's raw stream holds want events, or a server exits.
func (e *env) waitHub(js jetstream.JetStream, topo streams.Config, want uint64) error {
	deadline := time.Now().Add(max(e.cfg.timeout, 5*time.Minute))
	for {
		st, err := js.Stream(context.Background(), topo.Raw.Name)
		if err == nil && st.CachedInfo().State.Msgs >= want {
			return nil
		}
		if err := e.exited(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			var have uint64
			if st != nil {
				have = st.CachedInfo().State.Msgs
			}
			return fmt.Errorf("the hub stored %d of %d events", have, want)
		}
		time.Sleep(20 * time.Millisecond) // polling the stream's count; there is nothing to await
	}
}
