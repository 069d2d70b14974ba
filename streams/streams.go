// Package streams defines khook's JetStream topology (streams, durable consumers and the
// dispatch KV bucket), builds its subjects, and applies the topology idempotently.
//
// Every stage calls Apply at start-up, and `khook streams apply` calls it on demand, so the
// topology in config is the topology on the server: a changed setting is applied to an
// existing stream or consumer instead of being ignored.
package streams

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/khook/khook/streams/subject"
)

// StreamSettings are the settings khook manages on one stream.
type StreamSettings struct {
	Name       string        `koanf:"name"`
	MaxAge     time.Duration `koanf:"max_age"`
	MaxBytes   int64         `koanf:"max_bytes"`
	MaxMsgs    int64         `koanf:"max_msgs"`
	Replicas   int           `koanf:"replicas"`
	Storage    string        `koanf:"storage"`    // file or memory
	Discard    string        `koanf:"discard"`    // old or new
	Duplicates time.Duration `koanf:"duplicates"` // the Nats-Msg-Id duplicate window
}

// ConsumerSettings are the settings khook manages on one durable pull consumer.
type ConsumerSettings struct {
	Durable       string        `koanf:"durable"`
	AckWait       time.Duration `koanf:"ack_wait"`
	MaxDeliver    int           `koanf:"max_deliver"`
	MaxAckPending int           `koanf:"max_ack_pending"`
}

// Config is the whole topology: one prefix, four streams, two consumers and a KV bucket.
type Config struct {
	Prefix string         `koanf:"prefix"`
	Raw    StreamSettings `koanf:"raw"`
	Events StreamSettings `koanf:"events"`
	DLQ    StreamSettings `koanf:"dlq"`
	// Outcomes holds what became of each event: the record `khook events describe` reads
	// and `khook status` counts. Nothing in the pipeline reads it back.
	Outcomes       StreamSettings   `koanf:"outcomes"`
	Mapper         ConsumerSettings `koanf:"mapper"`
	Dispatcher     ConsumerSettings `koanf:"dispatcher"`
	DispatchBucket string           `koanf:"dispatch_bucket"`
	// DispatchTTL is how long the dispatch bucket keeps a record of a completed delivery. It
	// must exceed the longest time a message can wait for redelivery.
	DispatchTTL time.Duration `koanf:"dispatch_ttl"`
	// Edges are the clusters whose edges the raw stream sources (khook.yaml's clusters),
	// each by its JetStream domain, the cluster's name.
	Edges []string `koanf:"-"`
}

// Default returns the topology of a single-server installation.
func Default() Config {
	stream := func(name string, maxAge time.Duration) StreamSettings {
		return StreamSettings{
			Name: name, MaxAge: maxAge, MaxBytes: -1, MaxMsgs: -1, Replicas: 1,
			Storage: "file", Discard: "old", Duplicates: 2 * time.Minute,
		}
	}
	return Config{
		Prefix: "khook",
		Raw:    stream("KHOOK_RAW", 72*time.Hour),
		Events: stream("KHOOK_EVENTS", 72*time.Hour),
		DLQ:    stream("KHOOK_DLQ", 14*24*time.Hour),
		// As long as the events they are about are kept, so that every retained event can
		// be described.
		Outcomes: stream("KHOOK_OUTCOMES", 72*time.Hour),
		Mapper: ConsumerSettings{
			Durable: "khook-mapper", AckWait: 30 * time.Second, MaxDeliver: -1, MaxAckPending: 1024,
		},
		Dispatcher: ConsumerSettings{
			// The dispatcher counts real attempts itself (dispatcher.max_attempts), so that
			// waiting behind an open circuit breaker never exhausts a message; JetStream
			// therefore never gives up on one.
			Durable: "khook-dispatcher", AckWait: 3 * time.Minute, MaxDeliver: -1, MaxAckPending: 256,
		},
		DispatchBucket: "KHOOK_DISPATCH",
		DispatchTTL:    24 * time.Hour,
	}
}

// Subjects returns the subject builder for this topology's prefix.
func (c Config) Subjects() subject.Builder { return subject.Builder{Prefix: c.Prefix} }

// Validate reports every invalid setting, naming its key under prefix (e.g. "streams").
func (c Config) Validate(prefix string) error {
	var errs []error
	if err := subject.CheckToken(prefix+".prefix", c.Prefix); err != nil {
		errs = append(errs, err)
	}
	for key, s := range map[string]StreamSettings{"raw": c.Raw, "events": c.Events, "dlq": c.DLQ, "outcomes": c.Outcomes} {
		errs = append(errs, s.validate(prefix+"."+key))
	}
	for key, s := range map[string]ConsumerSettings{"mapper": c.Mapper, "dispatcher": c.Dispatcher} {
		errs = append(errs, s.validate(prefix+"."+key))
	}
	if c.DispatchBucket == "" {
		errs = append(errs, fmt.Errorf("%s.dispatch_bucket: required", prefix))
	}
	// A delivery record must outlive the longest wait before the same task can be tried
	// again (an event's redelivery, a lapsed lease: the ack wait, twice over for a call that
	// began just before it), or that try would call the agent a second time.
	if c.DispatchTTL < 2*c.Dispatcher.AckWait {
		errs = append(errs, fmt.Errorf("%s.dispatch_ttl: must be at least twice %s.dispatcher.ack_wait (%s), got %s",
			prefix, prefix, 2*c.Dispatcher.AckWait, c.DispatchTTL))
	}
	names := []string{c.Raw.Name, c.Events.Name, c.DLQ.Name, c.Outcomes.Name}
	slices.Sort(names)
	if len(slices.Compact(names)) != 4 {
		errs = append(errs, fmt.Errorf("%s: raw, events, dlq and outcomes need distinct names", prefix))
	}
	return errors.Join(errs...)
}

func (s StreamSettings) validate(key string) error {
	var errs []error
	if s.Name == "" {
		errs = append(errs, fmt.Errorf("%s.name: required", key))
	}
	if s.MaxAge < 0 {
		errs = append(errs, fmt.Errorf("%s.max_age: must not be negative", key))
	}
	if s.Replicas < 1 || s.Replicas > 5 {
		errs = append(errs, fmt.Errorf("%s.replicas: must be 1 to 5, got %d", key, s.Replicas))
	}
	if s.Storage != "file" && s.Storage != "memory" {
		errs = append(errs, fmt.Errorf("%s.storage: must be file or memory, got %q", key, s.Storage))
	}
	if s.Discard != "old" && s.Discard != "new" {
		errs = append(errs, fmt.Errorf("%s.discard: must be old or new, got %q", key, s.Discard))
	}
	if s.Duplicates < 0 {
		errs = append(errs, fmt.Errorf("%s.duplicates: must not be negative", key))
	}
	return errors.Join(errs...)
}

func (s ConsumerSettings) validate(key string) error {
	var errs []error
	if s.Durable == "" {
		errs = append(errs, fmt.Errorf("%s.durable: required", key))
	}
	if s.AckWait < time.Second {
		errs = append(errs, fmt.Errorf("%s.ack_wait: must be at least 1s, got %s", key, s.AckWait))
	}
	if s.MaxDeliver == 0 || s.MaxDeliver < -1 {
		errs = append(errs, fmt.Errorf("%s.max_deliver: must be -1 (unlimited) or positive, got %d", key, s.MaxDeliver))
	}
	if s.MaxAckPending < 1 {
		errs = append(errs, fmt.Errorf("%s.max_ack_pending: must be positive, got %d", key, s.MaxAckPending))
	}
	return errors.Join(errs...)
}

func (s StreamSettings) streamConfig(subject string) jetstream.StreamConfig {
	storage := jetstream.FileStorage
	if s.Storage == "memory" {
		storage = jetstream.MemoryStorage
	}
	discard := jetstream.DiscardOld
	if s.Discard == "new" {
		discard = jetstream.DiscardNew
	}
	return jetstream.StreamConfig{
		Name:       s.Name,
		Subjects:   []string{subject},
		Retention:  jetstream.LimitsPolicy,
		MaxAge:     s.MaxAge,
		MaxBytes:   s.MaxBytes,
		MaxMsgs:    s.MaxMsgs,
		Replicas:   s.Replicas,
		Storage:    storage,
		Discard:    discard,
		Duplicates: s.Duplicates,
	}
}

func (s ConsumerSettings) consumerConfig(filter string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       s.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: filter,
		AckWait:       s.AckWait,
		MaxDeliver:    s.MaxDeliver,
		MaxAckPending: s.MaxAckPending,
	}
}
