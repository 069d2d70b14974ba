package streams

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Many clusters, one pipeline: each cluster runs `khook edge`, whose embedded NATS server is
// a leaf node of the hub's with JetStream in its own domain, named after its cluster. The
// edge's producers store raw events in the edge's own raw stream (answering a webhook only
// once it is stored there, hub reachable or not), and the hub's raw stream sources each
// edge's raw stream by domain, which NATS recommends for fan-in across leaf nodes: the
// source catches up after a cut, from where it stopped.
//
// The edge's stream and the hub's raw stream listen on the same subjects, so the edge's
// leaf connection denies them both ways (LeafDeny): otherwise the hub's stream would store
// the edge's events once as they are published and again through its source.

// EdgeBuffer bounds what an edge keeps while its hub is away: the hub trims what it has
// stored (TrimEdges), so the buffer holds the events not forwarded yet. A full buffer refuses
// new events (discard new), so a producer answers 503 and the sender retries, rather than the
// oldest unforwarded events being dropped without a word.
type EdgeBuffer struct {
	MaxAge   time.Duration `koanf:"max_age"`
	MaxBytes int64         `koanf:"max_bytes"`
}

// DefaultEdgeBuffer keeps three days of events, up to 1 GiB: a weekend's outage of the hub.
func DefaultEdgeBuffer() EdgeBuffer {
	return EdgeBuffer{MaxAge: 72 * time.Hour, MaxBytes: 1 << 30}
}

// Validate names every invalid setting under prefix.
func (b EdgeBuffer) Validate(prefix string) error {
	switch {
	case b.MaxAge < time.Minute:
		return fmt.Errorf("%s.max_age: must be at least 1m, got %s", prefix, b.MaxAge)
	case b.MaxBytes < 1<<20:
		return fmt.Errorf("%s.max_bytes: must be at least 1 MiB (1048576), got %d", prefix, b.MaxBytes)
	}
	return nil
}

// LeafDeny are the subjects an edge's leaf connection neither exports nor imports: all of
// khook's own (<prefix>.>). Events reach the hub only through its stream's sources.
func (c Config) LeafDeny() []string { return []string{c.Prefix + ".>"} }

// EdgeStream is the stream an edge stores its raw events in: the raw stream's name and
// subjects, so that the hub sources it by the same name in the edge's domain, with the
// edge's buffer as its limits.
func (c Config) EdgeStream(b EdgeBuffer) jetstream.StreamConfig {
	s := c.Raw
	s.MaxAge, s.MaxBytes, s.MaxMsgs, s.Discard = b.MaxAge, b.MaxBytes, -1, "new"
	return s.streamConfig(c.Subjects().AllRaw())
}

// ApplyEdge creates or updates an edge's raw stream: the only stream an edge has.
func ApplyEdge(ctx context.Context, js jetstream.JetStream, c Config, b EdgeBuffer) (Change, error) {
	want := c.EdgeStream(b)
	action, diff, err := applyStream(ctx, js, want, false)
	if err != nil {
		return Change{}, fmt.Errorf("stream %s: %w", want.Name, err)
	}
	return Change{Kind: "stream", Name: want.Name, Action: action, Diff: diff}, nil
}

// DomainAPIPrefix is the JetStream API prefix of domain, as a source names it.
func DomainAPIPrefix(domain string) string { return "$JS." + domain + ".API" }

// edgeSources are the raw stream's sources: the raw stream of each edge, in its domain.
func (c Config) edgeSources() []*jetstream.StreamSource {
	var out []*jetstream.StreamSource
	for _, edge := range c.Edges {
		out = append(out, &jetstream.StreamSource{
			Name: c.Raw.Name,
			// Used by the server only when its stream holds nothing of this edge (a new
			// edge, or its events aged out at the hub) or the edge's stream was re-created:
			// then from the edge's first event, which is all the edge still holds (the hub
			// trims what it has). Without it the server would start at the time of the
			// hub's last message, skipping what the edge buffered before, and the trim
			// would then delete it.
			OptStartSeq: 1,
			External:    &jetstream.ExternalStream{APIPrefix: DomainAPIPrefix(edge)},
		})
	}
	return out
}

// EdgeOf is the edge (cluster) a source of the raw stream reads, by its API prefix, or ""
// for a source khook does not manage.
func EdgeOf(src *jetstream.StreamSource) string {
	if src == nil || src.External == nil {
		return ""
	}
	domain, ok := strings.CutPrefix(src.External.APIPrefix, "$JS.")
	if !ok {
		return ""
	}
	domain, ok = strings.CutSuffix(domain, ".API")
	if !ok {
		return ""
	}
	return domain
}

// edgesMetadata is the raw stream's metadata key listing the edges khook sources, so that
// apply changes only the sources it added: a source an operator added by hand, from another
// domain or not, is never touched.
const edgesMetadata = "khook.io/edges"

// managedEdges are the edges a stream's metadata says khook sources.
func managedEdges(c jetstream.StreamConfig) []string {
	v := c.Metadata[edgesMetadata]
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// edgeOf is the edge a source reads, by its domain, or "".
func edgeOf(src *jetstream.StreamSource) string {
	if src.Domain != "" {
		return src.Domain
	}
	return EdgeOf(src)
}

// isEdgeSource is a source khook manages: the stream's own name, in a domain the stream's
// metadata lists.
func isEdgeSource(c jetstream.StreamConfig, src *jetstream.StreamSource) bool {
	return src.Name == c.Name && edgeOf(src) != "" && slices.Contains(managedEdges(c), edgeOf(src))
}

// edgeSourceNames are the edges a stream sources that khook manages, sorted; one whose
// source does not start from the edge's first event is marked, so that apply corrects it.
func edgeSourceNames(c jetstream.StreamConfig) []string {
	var out []string
	for _, src := range c.Sources {
		if isEdgeSource(c, src) {
			name := edgeOf(src)
			if src.OptStartSeq != 1 {
				name += " (not from its first event)"
			}
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// otherSources are the sources of have that khook does not manage and want does not list.
func otherSources(have, want jetstream.StreamConfig) []*jetstream.StreamSource {
	var out []*jetstream.StreamSource
	for _, src := range have.Sources {
		if isEdgeSource(have, src) || src.Name == have.Name && slices.Contains(managedEdges(want), edgeOf(src)) {
			continue
		}
		out = append(out, src)
	}
	return out
}

// withEdgesMetadata is have's metadata with want's list of managed edges.
func withEdgesMetadata(have, want jetstream.StreamConfig) map[string]string {
	out := maps.Clone(have.Metadata)
	if out == nil {
		out = map[string]string{}
	}
	delete(out, edgesMetadata)
	if v := want.Metadata[edgesMetadata]; v != "" {
		out[edgesMetadata] = v
	}
	return out
}

// rawStream is the raw stream's configuration: on a hub, with a source per edge, listed in
// its metadata as khook's.
func (c Config) rawStream() jetstream.StreamConfig {
	s := c.Raw.streamConfig(c.Subjects().AllRaw())
	s.Sources = c.edgeSources()
	if len(c.Edges) > 0 {
		edges := slices.Sorted(slices.Values(c.Edges))
		s.Metadata = map[string]string{edgesMetadata: strings.Join(edges, ",")}
	}
	return s
}

// TrimAfter is how long after an edge's stream was created the hub trusts its source's
// position to be about that stream. A stream deleted and re-created at the edge starts its
// sequences again; until the hub's source has reconnected to the new stream, its position
// is the old stream's, and trimming by it would delete events the hub has not taken. The
// margin also covers clock skew between the edge's server and the hub's.
const TrimAfter = 30 * time.Second

// TrimEdges removes from each connected edge's stream the events the hub has stored, so
// that an edge's buffer (edge.buffer) holds only what the hub does not have yet: a healthy,
// connected edge never fills up with events it forwarded long ago. It trims an edge only
// while the hub hears from it, up to the sequence the hub's source has stored, and only
// when that sequence is of the edge's current stream: the hub heard from the edge at least
// minAge (TrimAfter) after the stream was created. It returns how many events it removed,
// per edge.
func TrimEdges(ctx context.Context, nc *nats.Conn, topo Config, minAge time.Duration) (map[string]uint64, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	states, err := Edges(ctx, js, topo)
	if err != nil {
		return nil, err
	}
	removed := map[string]uint64{}
	var errs []error
	for _, e := range states {
		if !e.Sourced || !e.Connected || e.Forwarded == 0 {
			continue
		}
		ejs, err := jetstream.NewWithDomain(nc, e.Cluster)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		st, err := ejs.Stream(ctx, topo.Raw.Name)
		if err != nil {
			errs = append(errs, fmt.Errorf("edge %s: %w", e.Cluster, err))
			continue
		}
		info := st.CachedInfo()
		// When the hub last heard from the edge, on the edge's clock (the edge's answer
		// carries its own time), so that clock skew between them cannot make a stream
		// created after that contact look older than it is.
		lastContact := info.TimeStamp.Add(-e.Active)
		switch {
		case info.TimeStamp.IsZero():
			continue
		case info.State.LastSeq < e.Forwarded:
			// Fewer events than the hub says it took: a stream re-created since. Wait for
			// the source to find it.
			continue
		case lastContact.Before(info.Created.Add(minAge)):
			continue
		case info.State.FirstSeq > e.Forwarded || info.State.Msgs == 0:
			continue // nothing forwarded is left
		}
		n := min(info.State.Msgs, e.Forwarded-info.State.FirstSeq+1)
		if err := st.Purge(ctx, jetstream.WithPurgeSequence(e.Forwarded+1)); err != nil {
			errs = append(errs, fmt.Errorf("edge %s: trimming: %w", e.Cluster, err))
			continue
		}
		removed[e.Cluster] = n
	}
	return removed, errors.Join(errs...)
}
