package cloudevent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// MaxKeyLength bounds an event key, so that it fits a Nats-Msg-Id header, a KV key part and
// a dead letter's id with room to spare. Longer keys are shortened to a hash.
const MaxKeyLength = 200

// Key is an event's identity inside khook: its id, scoped by where that id is unique.
//
// A CloudEvents id is unique only per source, an Idempotency-Key only per endpoint, a
// Kubernetes UID per cluster. Every key derived from an event id (the raw and events
// streams' Nats-Msg-Id, the dispatcher's delivery records, the A2A messageId, dead-letter
// ids) is derived from Key, so ids from different sources never collide and no source can
// suppress another's events.
//
// source is khook's source token (the subject's <source>), which NATS permissions tie to the
// publisher; scope is where id is unique within that source (a sender's CloudEvents source,
// a webhook endpoint for an Idempotency-Key), empty when the source itself is the scope.
// The result starts with source + "/", which the mapper checks against the subject, and
// never with source + "/@", which begins the keys of a named cluster.
func Key(source, scope, id string) string {
	var k string
	if scope == "" {
		// "<source>/@" begins a cluster's keys (InCluster): an id of one cluster that
		// begins with "@" is escaped, so that no event takes a key in another's scope.
		if rest, ok := strings.CutPrefix(id, "@"); ok {
			id = "%40" + rest
		}
		k = source + "/" + id
	} else {
		k = source + "/" + shortHash(scope) + "/" + id
	}
	if len(k) <= MaxKeyLength {
		return k
	}
	h := sha256.Sum256([]byte(scope + "\x00" + id))
	return source + "/sha256-" + hex.EncodeToString(h[:])
}

// InCluster scopes key, an event key of a single cluster, by the cluster it came from:
// "<source>/@<cluster>/<rest of key>", so that the same id from two clusters (a webhook
// sender's, a Kubernetes event name) is two events, and each raw stream's duplicate window
// keeps them apart. An empty cluster (a single-cluster install) leaves key as it is, so its
// ids do not change.
func InCluster(cluster, key string) string {
	if cluster == "" {
		return key
	}
	source, rest, _ := strings.Cut(key, "/")
	prefix := source + "/@" + cluster + "/"
	if len(prefix)+len(rest) <= MaxKeyLength {
		return prefix + rest
	}
	h := sha256.Sum256([]byte(key))
	return prefix + "sha256-" + hex.EncodeToString(h[:])
}

// KeyOf returns the event key a publisher put in a raw message's Nats-Msg-Id when it
// belongs to source (and to cluster, when the event names one), and otherwise (a plugin
// that sets its own ids, a message published with another source's or cluster's prefix)
// scopes what it was given by source and cluster, so that a message on one source's
// subjects can never take another source's or another cluster's key.
func KeyOf(source, cluster, msgID, ceID string) string {
	if msgID == "" {
		msgID = ceID
	}
	prefix := source + "/"
	if cluster != "" {
		prefix = source + "/@" + cluster + "/"
	}
	// Without a cluster, a key that looks scoped by one ("<source>/@...") is not taken as
	// it is: it would be another cluster's.
	scoped := strings.HasPrefix(msgID, prefix) && (cluster != "" || !strings.HasPrefix(msgID, prefix+"@"))
	if scoped && len(msgID) <= MaxKeyLength {
		return msgID
	}
	return InCluster(cluster, Key(source, "", msgID))
}

// ClusterOf is the cluster a key names ("<source>/@<cluster>/..."), or "" for a key of a
// single cluster. It is for a message whose envelope cannot be read (a dead letter's id, a
// pending message's headers): everywhere else the envelope's cluster decides.
func ClusterOf(source, key string) string {
	rest, ok := strings.CutPrefix(key, source+"/@")
	if !ok {
		return ""
	}
	cluster, _, _ := strings.Cut(rest, "/")
	if CheckCluster(cluster) != nil {
		return ""
	}
	return cluster
}

// MaxClusterLength bounds a cluster's name, as Kubernetes bounds a DNS label.
const MaxClusterLength = 63

// CheckCluster reports whether name may name a cluster: a DNS label (1 to 63 lowercase
// letters, digits and '-', starting and ending with a letter or digit). It is a JetStream
// domain and a token of ids, so it may hold no '.', '/' or space.
func CheckCluster(name string) error {
	if name == "" || len(name) > MaxClusterLength {
		return fmt.Errorf("must be 1 to %d characters, got %d", MaxClusterLength, len(name))
	}
	for i, c := range []byte(name) {
		ok := 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' && i > 0 && i < len(name)-1
		if !ok {
			return fmt.Errorf("%q is not a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit)", name)
		}
	}
	return nil
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:6])
}

// DeriveKey is the key of an event made from the event with key (a replay's copy): key
// followed by suffix, with key shortened to a hash when the whole would be longer than
// MaxKeyLength. It keeps key's source prefix, so a derived key stays in its source's scope.
func DeriveKey(key, suffix string) string {
	if len(key)+len(suffix) <= MaxKeyLength {
		return key + suffix
	}
	source, _, _ := strings.Cut(key, "/")
	h := sha256.Sum256([]byte(key))
	return source + "/sha256-" + hex.EncodeToString(h[:]) + suffix
}
