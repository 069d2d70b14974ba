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

// Change records what Apply did to one stream, consumer or bucket.
type Change struct {
	Kind   string // stream, consumer or kv
	Name   string
	Action Action
}

func (c Change) String() string { return fmt.Sprintf("%s %s %s", c.Kind, c.Name, c.Action) }

// Apply creates or updates every stream, consumer and bucket of cfg so that the server
// matches it. It is idempotent: a second call with the same cfg changes nothing and reports
// every object as Unchanged. Settings khook does not manage are left as the server has them.
func Apply(ctx context.Context, js jetstream.JetStream, cfg Config) ([]Change, error) {
	subj := cfg.Subjects()
	var changes []Change
	for _, s := range []jetstream.StreamConfig{
		cfg.Raw.streamConfig(subj.AllRaw()),
		cfg.Events.streamConfig(subj.AllEvents()),
		cfg.DLQ.streamConfig(subj.AllDLQ()),
	} {
		action, err := applyStream(ctx, js, s)
		if err != nil {
			return changes, fmt.Errorf("stream %s: %w", s.Name, err)
		}
		changes = append(changes, Change{Kind: "stream", Name: s.Name, Action: action})
	}
	for _, c := range []struct {
		stream string
		cfg    jetstream.ConsumerConfig
	}{
		{cfg.Raw.Name, cfg.Mapper.consumerConfig(subj.AllRaw())},
		{cfg.Events.Name, cfg.Dispatcher.consumerConfig(subj.AllEvents())},
	} {
		action, err := applyConsumer(ctx, js, c.stream, c.cfg)
		if err != nil {
			return changes, fmt.Errorf("consumer %s on %s: %w", c.cfg.Durable, c.stream, err)
		}
		changes = append(changes, Change{Kind: "consumer", Name: c.stream + "/" + c.cfg.Durable, Action: action})
	}
	action, err := applyBucket(ctx, js, jetstream.KeyValueConfig{
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
	changes = append(changes, Change{Kind: "kv", Name: cfg.DispatchBucket, Action: action})
	return changes, nil
}

func applyStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) (Action, error) {
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err := js.CreateStream(ctx, want); err != nil {
			// Another replica may have created it between our lookup and create.
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return applyStream(ctx, js, want)
			}
			return "", err
		}
		return Created, nil
	}
	if err != nil {
		return "", err
	}
	have := s.CachedInfo().Config
	if sameStream(have, want) {
		return Unchanged, nil
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
	if have.Storage != want.Storage {
		return "", fmt.Errorf("storage cannot change from %s to %s on an existing stream", have.Storage, want.Storage)
	}
	if _, err := js.UpdateStream(ctx, merged); err != nil {
		return "", err
	}
	return Updated, nil
}

func sameStream(have, want jetstream.StreamConfig) bool {
	return slices.Equal(have.Subjects, want.Subjects) &&
		have.MaxAge == want.MaxAge &&
		have.MaxBytes == want.MaxBytes &&
		have.MaxMsgs == want.MaxMsgs &&
		have.Replicas == want.Replicas &&
		have.Storage == want.Storage &&
		have.Discard == want.Discard &&
		have.Duplicates == want.Duplicates
}

func applyConsumer(ctx context.Context, js jetstream.JetStream, stream string, want jetstream.ConsumerConfig) (Action, error) {
	c, err := js.Consumer(ctx, stream, want.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		if _, err := js.CreateOrUpdateConsumer(ctx, stream, want); err != nil {
			return "", err
		}
		return Created, nil
	}
	if err != nil {
		return "", err
	}
	have := c.CachedInfo().Config
	if have.FilterSubject == want.FilterSubject && have.AckWait == want.AckWait &&
		have.MaxDeliver == want.MaxDeliver && have.MaxAckPending == want.MaxAckPending {
		return Unchanged, nil
	}
	merged := have
	merged.FilterSubject = want.FilterSubject
	merged.AckWait = want.AckWait
	merged.MaxDeliver = want.MaxDeliver
	merged.MaxAckPending = want.MaxAckPending
	if _, err := js.UpdateConsumer(ctx, stream, merged); err != nil {
		return "", err
	}
	return Updated, nil
}

func applyBucket(ctx context.Context, js jetstream.JetStream, want jetstream.KeyValueConfig) (Action, error) {
	kv, err := js.KeyValue(ctx, want.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		if _, err := js.CreateOrUpdateKeyValue(ctx, want); err != nil {
			return "", err
		}
		return Created, nil
	}
	if err != nil {
		return "", err
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return "", err
	}
	if st.TTL() == want.TTL && st.Config().Replicas == want.Replicas && st.LimitMarkerTTL() == want.LimitMarkerTTL {
		return Unchanged, nil
	}
	if _, err := js.UpdateKeyValue(ctx, want); err != nil {
		return "", err
	}
	return Updated, nil
}
