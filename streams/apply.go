package streams

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Action says what Apply did to one object.
type Action string

// The outcomes of applying one object.
const (
	Created   Action = "created"
	Updated   Action = "updated"
	Unchanged Action = "unchanged"
)

// Change records what Apply did, or with a dry run would do, to one stream, consumer or
// bucket.
type Change struct {
	Kind   string `json:"kind"` // stream, consumer or kv
	Name   string `json:"name"`
	Action Action `json:"action"`
	DryRun bool   `json:"dryRun,omitempty"`
	// Diff lists each setting an update changes: "max_age: 72h0m0s -> 24h0m0s", with what
	// the change deletes when it does.
	Diff []string `json:"diff,omitempty"`
}

func (c Change) String() string {
	action := string(c.Action)
	if c.DryRun && c.Action != Unchanged {
		action = "would be " + action
	}
	line := fmt.Sprintf("%s %s %s", c.Kind, c.Name, action)
	for _, d := range c.Diff {
		line += "\n  " + d
	}
	return line
}

// Apply creates or updates every stream, consumer and bucket of cfg so that the server
// matches it. It is idempotent: a second call with the same cfg changes nothing and reports
// every object as Unchanged. Settings khook does not manage are left as the server has them.
func Apply(ctx context.Context, js jetstream.JetStream, cfg Config) ([]Change, error) {
	return apply(ctx, js, cfg, false)
}

// Plan is Apply as a dry run: it reports what Apply would change, and changes nothing.
func Plan(ctx context.Context, js jetstream.JetStream, cfg Config) ([]Change, error) {
	return apply(ctx, js, cfg, true)
}

func apply(ctx context.Context, js jetstream.JetStream, cfg Config, dryRun bool) ([]Change, error) {
	subj := cfg.Subjects()
	var changes []Change
	for _, s := range []jetstream.StreamConfig{
		cfg.rawStream(),
		cfg.Events.streamConfig(subj.AllEvents()),
		cfg.DLQ.streamConfig(subj.AllDLQ()),
		cfg.Outcomes.streamConfig(subj.AllOutcomes()),
	} {
		action, diff, err := applyStream(ctx, js, s, dryRun)
		if err != nil {
			return changes, fmt.Errorf("stream %s: %w", s.Name, err)
		}
		changes = append(changes, Change{Kind: "stream", Name: s.Name, Action: action, DryRun: dryRun, Diff: diff})
	}
	for _, c := range []struct {
		stream string
		cfg    jetstream.ConsumerConfig
	}{
		{cfg.Raw.Name, cfg.Mapper.consumerConfig(subj.AllRaw())},
		{cfg.Events.Name, cfg.Dispatcher.consumerConfig(subj.AllEvents())},
	} {
		action, diff, err := applyConsumer(ctx, js, c.stream, c.cfg, dryRun)
		if err != nil {
			return changes, fmt.Errorf("consumer %s on %s: %w", c.cfg.Durable, c.stream, err)
		}
		changes = append(changes, Change{Kind: "consumer", Name: c.stream + "/" + c.cfg.Durable, Action: action, DryRun: dryRun, Diff: diff})
	}
	action, diff, err := applyBucket(ctx, js, dryRun, jetstream.KeyValueConfig{
		Bucket:   cfg.DispatchBucket,
		TTL:      cfg.DispatchTTL,
		Replicas: cfg.Events.Replicas,
		Storage:  cfg.Events.streamConfig("").Storage,
		// Per-key TTLs give each suppression claim its own window; the markers they leave
		// when they expire are kept briefly so watchers see the expiry.
		LimitMarkerTTL: time.Minute,
	})
	if err != nil {
		return changes, fmt.Errorf("kv %s: %w", cfg.DispatchBucket, err)
	}
	changes = append(changes, Change{Kind: "kv", Name: cfg.DispatchBucket, Action: action, DryRun: dryRun, Diff: diff})
	return changes, nil
}

func applyStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, dryRun bool) (Action, []string, error) {
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if dryRun {
			return Created, nil, nil
		}
		if _, err := js.CreateStream(ctx, want); err != nil {
			// Another replica may have created it between our lookup and create.
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return applyStream(ctx, js, want, dryRun)
			}
			return "", nil, err
		}
		return Created, nil, nil
	}
	if err != nil {
		return "", nil, err
	}
	have := s.CachedInfo().Config
	if sameStream(have, want) {
		return Unchanged, nil, nil
	}
	if have.Storage != want.Storage {
		return "", nil, fmt.Errorf("storage cannot change from %s to %s on an existing stream", have.Storage, want.Storage)
	}
	diff := streamDiff(have, want)
	if dryRun {
		return Updated, diff, nil
	}
	// Carry over what khook does not manage, so an operator's manual settings survive.
	merged := have
	merged.Subjects = want.Subjects
	merged.MaxAge = want.MaxAge
	merged.MaxBytes = want.MaxBytes
	merged.MaxMsgs = want.MaxMsgs
	merged.Replicas = want.Replicas
	merged.Discard = want.Discard
	merged.Duplicates = want.Duplicates
	// khook manages a stream's edge sources (its own name, in an edge's domain); any other
	// source an operator added is kept.
	merged.Sources = append(otherSources(have, want), want.Sources...)
	merged.Metadata = withEdgesMetadata(have, want)
	if _, err := js.UpdateStream(ctx, merged); err != nil {
		return "", nil, err
	}
	return Updated, diff, nil
}

// streamDiff names each managed setting that differs, and what a tighter limit deletes.
func streamDiff(have, want jetstream.StreamConfig) []string {
	var diff []string
	add := func(name string, from, to any, note string) {
		d := fmt.Sprintf("%s: %v -> %v", name, from, to)
		if note != "" {
			d += " (" + note + ")"
		}
		diff = append(diff, d)
	}
	// tighter says whether a limit (where -1 or 0 is none) goes down.
	tighter := func(from, to int64) bool { return to > 0 && (from <= 0 || to < from) }
	if !slices.Equal(have.Subjects, want.Subjects) {
		add("subjects", have.Subjects, want.Subjects, "")
	}
	if have.MaxAge != want.MaxAge {
		note := ""
		if tighter(int64(have.MaxAge), int64(want.MaxAge)) {
			note = "deletes the messages older than the new age now"
		}
		add("max_age", have.MaxAge, want.MaxAge, note)
	}
	if have.MaxBytes != want.MaxBytes {
		note := ""
		if tighter(have.MaxBytes, want.MaxBytes) {
			note = "deletes the oldest messages over the new size now"
		}
		add("max_bytes", have.MaxBytes, want.MaxBytes, note)
	}
	if have.MaxMsgs != want.MaxMsgs {
		note := ""
		if tighter(have.MaxMsgs, want.MaxMsgs) {
			note = "deletes the oldest messages over the new count now"
		}
		add("max_msgs", have.MaxMsgs, want.MaxMsgs, note)
	}
	if have.Replicas != want.Replicas {
		add("replicas", have.Replicas, want.Replicas, "")
	}
	if have.Discard != want.Discard {
		add("discard", have.Discard, want.Discard, "")
	}
	if have.Duplicates != want.Duplicates {
		add("duplicate_window", have.Duplicates, want.Duplicates, "")
	}
	if from, to := edgeSourceNames(have), edgeSourceNames(want); !slices.Equal(from, to) {
		add("edge sources", from, to, "a removed edge's events stay stored")
	}
	return diff
}

func sameStream(have, want jetstream.StreamConfig) bool {
	return slices.Equal(have.Subjects, want.Subjects) &&
		have.MaxAge == want.MaxAge &&
		have.MaxBytes == want.MaxBytes &&
		have.MaxMsgs == want.MaxMsgs &&
		have.Replicas == want.Replicas &&
		have.Storage == want.Storage &&
		have.Discard == want.Discard &&
		have.Duplicates == want.Duplicates &&
		slices.Equal(edgeSourceNames(have), edgeSourceNames(want)) &&
		have.Metadata[edgesMetadata] == want.Metadata[edgesMetadata]
}

func applyConsumer(ctx context.Context, js jetstream.JetStream, stream string, want jetstream.ConsumerConfig, dryRun bool) (Action, []string, error) {
	c, err := js.Consumer(ctx, stream, want.Durable)
	// In a dry run the stream itself may be one that would be created.
	if errors.Is(err, jetstream.ErrConsumerNotFound) || (dryRun && errors.Is(err, jetstream.ErrStreamNotFound)) {
		if dryRun {
			return Created, nil, nil
		}
		if _, err := js.CreateOrUpdateConsumer(ctx, stream, want); err != nil {
			return "", nil, err
		}
		return Created, nil, nil
	}
	if err != nil {
		return "", nil, err
	}
	have := c.CachedInfo().Config
	var diff []string
	for _, d := range []struct {
		name     string
		from, to any
	}{
		{"filter_subject", have.FilterSubject, want.FilterSubject},
		{"ack_wait", have.AckWait, want.AckWait},
		{"max_deliver", have.MaxDeliver, want.MaxDeliver},
		{"max_ack_pending", have.MaxAckPending, want.MaxAckPending},
	} {
		if d.from != d.to {
			diff = append(diff, fmt.Sprintf("%s: %v -> %v", d.name, d.from, d.to))
		}
	}
	if len(diff) == 0 {
		return Unchanged, nil, nil
	}
	if dryRun {
		return Updated, diff, nil
	}
	merged := have
	merged.FilterSubject = want.FilterSubject
	merged.AckWait = want.AckWait
	merged.MaxDeliver = want.MaxDeliver
	merged.MaxAckPending = want.MaxAckPending
	if _, err := js.UpdateConsumer(ctx, stream, merged); err != nil {
		return "", nil, err
	}
	return Updated, diff, nil
}

func applyBucket(ctx context.Context, js jetstream.JetStream, dryRun bool, want jetstream.KeyValueConfig) (Action, []string, error) {
	kv, err := js.KeyValue(ctx, want.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		if dryRun {
			return Created, nil, nil
		}
		if _, err := js.CreateOrUpdateKeyValue(ctx, want); err != nil {
			return "", nil, err
		}
		return Created, nil, nil
	}
	if err != nil {
		return "", nil, err
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return "", nil, err
	}
	var diff []string
	if st.TTL() != want.TTL {
		diff = append(diff, fmt.Sprintf("ttl: %v -> %v", st.TTL(), want.TTL))
	}
	if st.Config().Replicas != want.Replicas {
		diff = append(diff, fmt.Sprintf("replicas: %d -> %d", st.Config().Replicas, want.Replicas))
	}
	if st.LimitMarkerTTL() != want.LimitMarkerTTL {
		diff = append(diff, fmt.Sprintf("limit_marker_ttl: %v -> %v", st.LimitMarkerTTL(), want.LimitMarkerTTL))
	}
	if len(diff) == 0 {
		return Unchanged, nil, nil
	}
	if dryRun {
		return Updated, diff, nil
	}
	if _, err := js.UpdateKeyValue(ctx, want); err != nil {
		return "", nil, err
	}
	return Updated, diff, nil
}
