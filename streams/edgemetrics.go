package streams

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// EdgeActiveWithin is how recently a hub must have heard from an edge's source for the edge
// to count as connected. A source that is caught up still hears from its edge every second
// (the source consumer's heartbeats); a cut link stops them.
const EdgeActiveWithin = 10 * time.Second

// EdgeState is what a hub knows of one edge, from its raw stream's source.
type EdgeState struct {
	Cluster string `json:"cluster"`
	// Connected: the source heard from the edge within EdgeActiveWithin, without an error.
	Connected bool `json:"connected"`
	// Lag is how many of the edge's events the hub has not stored yet.
	Lag uint64 `json:"lag"`
	// Active is how long ago the source last heard from the edge; negative when it never
	// has. LastContactSeconds is the same in seconds, absent when never.
	Active             time.Duration `json:"-"`
	LastContactSeconds *float64      `json:"lastContactSeconds,omitempty"`
	// Forwarded is the edge stream's sequence the hub has stored up to.
	Forwarded uint64 `json:"forwarded"`
	Error     string `json:"error,omitempty"`
	// Sourced is false for a listed cluster the raw stream does not source (streams apply
	// has not run since it was added).
	Sourced bool `json:"sourced"`
}

// Edges reads the state of every edge the raw stream sources, in the order of topo.Edges.
func Edges(ctx context.Context, js jetstream.JetStream, topo Config) ([]EdgeState, error) {
	st, err := js.Stream(ctx, topo.Raw.Name)
	if err != nil {
		return nil, err
	}
	byEdge := map[string]*jetstream.StreamSourceInfo{}
	for _, si := range st.CachedInfo().Sources {
		if si == nil || si.Name != topo.Raw.Name || si.External == nil {
			continue
		}
		if edge := EdgeOf(&jetstream.StreamSource{External: si.External}); edge != "" {
			byEdge[edge] = si
		}
	}
	out := make([]EdgeState, 0, len(topo.Edges))
	for _, edge := range topo.Edges {
		es := EdgeState{Cluster: edge}
		if si := byEdge[edge]; si != nil {
			es.Sourced, es.Lag, es.Active, es.Forwarded = true, si.Lag, si.Active, si.Seq
			if si.Error != nil {
				es.Error = si.Error.Error()
			}
			// A source that has never been active reports -1 (as a duration: -1ns).
			es.Connected = es.Error == "" && es.Active >= 0 && es.Active <= EdgeActiveWithin
			if es.Active >= 0 {
				secs := es.Active.Seconds()
				es.LastContactSeconds = &secs
			}
		}
		out = append(out, es)
	}
	return out, nil
}

// HubCollector exports, per edge, what the hub's raw stream knows of it: connected, how far
// behind, and when an event last arrived from it.
type HubCollector struct {
	js      jetstream.JetStream
	topo    Config
	timeout time.Duration
	now     func() time.Time

	mu sync.Mutex
	// caughtUp and lastEvent remember, per edge, when its lag was last zero and when its
	// forwarded sequence last moved, across scrapes.
	caughtUp, lastEvent map[string]time.Time
	forwarded           map[string]uint64

	up, connected, lag, lagSeconds, lastEventTime, activeAge *prometheus.Desc
}

// NewHubCollector reports on the edges topo's raw stream sources.
func NewHubCollector(js jetstream.JetStream, topo Config) *HubCollector {
	l := []string{"cluster"}
	return &HubCollector{
		js: js, topo: topo, timeout: 2 * time.Second, now: time.Now,
		caughtUp: map[string]time.Time{}, lastEvent: map[string]time.Time{}, forwarded: map[string]uint64{},
		up: prometheus.NewDesc("khook_edges_up", "1 when the last scrape could read the raw stream's sources from JetStream, else 0.", nil, nil),
		connected: prometheus.NewDesc("khook_edge_connected",
			"1 when the hub's raw stream heard from the cluster's edge within the last 10s without an error, else 0.", l, nil),
		lag: prometheus.NewDesc("khook_edge_source_lag_messages",
			"Events stored at the cluster's edge that the hub has not stored yet.", l, nil),
		lagSeconds: prometheus.NewDesc("khook_edge_source_lag_seconds",
			"Seconds since the hub last had every event of the cluster's edge (0 when it has them all); counted from the hub's start when it never had.", l, nil),
		lastEventTime: prometheus.NewDesc("khook_edge_last_event_timestamp_seconds",
			"When the hub last stored a new event from the cluster's edge (Unix time); absent before the first since the hub started.", l, nil),
		activeAge: prometheus.NewDesc("khook_edge_last_contact_age_seconds",
			"Seconds since the hub's raw stream last heard from the cluster's edge.", l, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *HubCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.connected, c.lag, c.lagSeconds, c.lastEventTime, c.activeAge} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *HubCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	edges, err := Edges(ctx, c.js, c.topo)
	if err != nil {
		gauge(c.up, 0)
		return
	}
	gauge(c.up, 1)
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range edges {
		connected := 0.0
		if e.Connected {
			connected = 1
		}
		gauge(c.connected, connected, e.Cluster)
		gauge(c.lag, float64(e.Lag), e.Cluster)
		if _, seen := c.caughtUp[e.Cluster]; !seen || e.Lag == 0 && e.Connected {
			c.caughtUp[e.Cluster] = now
		}
		behind := 0.0
		if e.Lag > 0 || !e.Connected {
			behind = now.Sub(c.caughtUp[e.Cluster]).Seconds()
		}
		gauge(c.lagSeconds, behind, e.Cluster)
		if e.Forwarded > c.forwarded[e.Cluster] {
			if _, known := c.forwarded[e.Cluster]; known {
				c.lastEvent[e.Cluster] = now
			}
			c.forwarded[e.Cluster] = e.Forwarded
		} else if _, known := c.forwarded[e.Cluster]; !known {
			c.forwarded[e.Cluster] = e.Forwarded
		}
		if t, ok := c.lastEvent[e.Cluster]; ok {
			gauge(c.lastEventTime, float64(t.UnixNano())/1e9, e.Cluster)
		}
		if e.Sourced && e.Active >= 0 {
			gauge(c.activeAge, e.Active.Seconds(), e.Cluster)
		}
	}
}

// EdgeCollector exports an edge's view of its hub: whether the leaf connection is up. What
// the edge holds (events, bytes, the oldest one's age, its share of the buffer) is the
// producer's khook_stream_* series of the edge's raw stream. How much of it the hub has not
// taken is known only at the hub (khook_edge_source_lag_messages): the hub's source reads
// the edge's stream through a consumer that the edge's server does not list.
type EdgeCollector struct {
	connected func() bool
	hub       *prometheus.Desc
}

// NewEdgeCollector reports on an edge whose leaf connection connected reports.
func NewEdgeCollector(connected func() bool) *EdgeCollector {
	return &EdgeCollector{connected: connected,
		hub: prometheus.NewDesc("khook_edge_hub_connected", "1 while the edge's leaf connection to its hub is up, else 0.", nil, nil)}
}

// Describe implements prometheus.Collector.
func (c *EdgeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.hub }

// Collect implements prometheus.Collector.
func (c *EdgeCollector) Collect(ch chan<- prometheus.Metric) {
	v := 0.0
	if c.connected() {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(c.hub, prometheus.GaugeValue, v)
}
