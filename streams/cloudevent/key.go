package cloudevent

import (
	"crypto/sha256"
	"encoding/hex"
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
// The result starts with source + "/", which the mapper checks against the subject.
func Key(source, scope, id string) string {
	var k string
	if scope == "" {
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

// KeyOf returns the event key a publisher put in a raw message's Nats-Msg-Id when it
// belongs to source, and otherwise (a plugin that sets its own ids, a message published
// with another source's prefix) scopes what it was given by source, so that a message on
// one source's subjects can never take another source's key.
func KeyOf(source, msgID, ceID string) string {
	if msgID == "" {
		msgID = ceID
	}
	if strings.HasPrefix(msgID, source+"/") && len(msgID) <= MaxKeyLength {
		return msgID
	}
	return Key(source, "", msgID)
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
