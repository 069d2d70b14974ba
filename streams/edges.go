package streams

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

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

// EdgeBuffer bounds what an edge keeps while its hub is away. A full buffer refuses new
// events (discard new), so a producer answers 503 and the sender retries, rather than the
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
			Name:     c.Raw.Name,
			External: &jetstream.ExternalStream{APIPrefix: DomainAPIPrefix(edge)},
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

// isEdgeSource is a source khook manages: the stream's own name in an edge's domain.
func isEdgeSource(stream string, src *jetstream.StreamSource) bool {
	return src.Name == stream && (EdgeOf(src) != "" || src.Domain != "")
}

// edgeSourceNames are the edges a stream sources, sorted.
func edgeSourceNames(c jetstream.StreamConfig) []string {
	var out []string
	for _, src := range c.Sources {
		if !isEdgeSource(c.Name, src) {
			continue
		}
		edge := src.Domain
		if edge == "" {
			edge = EdgeOf(src)
		}
		out = append(out, edge)
	}
	slices.Sort(out)
	return out
}

// otherSources are the sources of a stream that khook does not manage.
func otherSources(c jetstream.StreamConfig) []*jetstream.StreamSource {
	var out []*jetstream.StreamSource
	for _, src := range c.Sources {
		if !isEdgeSource(c.Name, src) {
			out = append(out, src)
		}
	}
	return out
}

// rawStream is the raw stream's configuration: on a hub, with a source per edge.
func (c Config) rawStream() jetstream.StreamConfig {
	s := c.Raw.streamConfig(c.Subjects().AllRaw())
	s.Sources = c.edgeSources()
	return s
}
