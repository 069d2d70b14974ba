// Package subject builds khook's NATS subjects and checks the tokens they are made of.
// It has no NATS dependency so that pure packages can validate names where they enter.
package subject

import (
	"fmt"
	"regexp"
	"strings"
)

// tokenPattern is the alphabet of every subject token khook builds from outside input
// (prefix, source, event type, stage). It keeps subjects free of wildcards and separators.
var tokenPattern = regexp.MustCompile(`^[a-z0-9_-]+$`)

// ValidToken reports whether s may be used as one token of a khook subject.
func ValidToken(s string) bool {
	return len(s) <= 128 && tokenPattern.MatchString(s)
}

// CheckToken returns an error naming what and the offending value when s is not a valid token.
func CheckToken(what, s string) error {
	if !ValidToken(s) {
		return fmt.Errorf("%s %q: must be 1-128 characters of [a-z0-9-_]", what, s)
	}
	return nil
}

// Builder builds khook's subjects under one prefix, so that two installations can share a
// NATS cluster.
type Builder struct {
	Prefix string
}

// Raw returns <prefix>.raw.<source>.<type>, or an error when source or type is not a valid token.
func (s Builder) Raw(source, eventType string) (string, error) {
	if err := CheckToken("source", source); err != nil {
		return "", err
	}
	if err := CheckToken("event type", eventType); err != nil {
		return "", err
	}
	return s.Prefix + ".raw." + source + "." + eventType, nil
}

// Events returns <prefix>.events.<type>, or an error when type is not a valid token.
func (s Builder) Events(internalType string) (string, error) {
	if err := CheckToken("internal type", internalType); err != nil {
		return "", err
	}
	return s.Prefix + ".events." + internalType, nil
}

// DLQ returns <prefix>.dlq.<stage>, or an error when stage is not a valid token.
func (s Builder) DLQ(stage string) (string, error) {
	if err := CheckToken("stage", stage); err != nil {
		return "", err
	}
	return s.Prefix + ".dlq." + stage, nil
}

// EventOutcomes returns <prefix>.outcomes.event.<hash>: the outcome records of one event,
// under a hash of its id (an id may hold any character).
func (s Builder) EventOutcomes(hash string) string { return s.Prefix + ".outcomes.event." + hash }

// GroupOutcomes returns <prefix>.outcomes.group.<hash>: the outcome records of one group's
// tasks, under a hash of its key.
func (s Builder) GroupOutcomes(hash string) string { return s.Prefix + ".outcomes.group." + hash }

// AllOutcomes is the wildcard that matches every outcome subject.
func (s Builder) AllOutcomes() string { return s.Prefix + ".outcomes.>" }

// AllRaw is the wildcard that matches every raw subject.
func (s Builder) AllRaw() string { return s.Prefix + ".raw.>" }

// AllEvents is the wildcard that matches every normalized-event subject.
func (s Builder) AllEvents() string { return s.Prefix + ".events.>" }

// AllDLQ is the wildcard that matches every dead-letter subject.
func (s Builder) AllDLQ() string { return s.Prefix + ".dlq.>" }

// SourceOf returns the <source> of a raw subject under this prefix, or "" when subject is
// not a raw subject of this prefix.
func (s Builder) SourceOf(subject string) string {
	rest, ok := strings.CutPrefix(subject, s.Prefix+".raw.")
	if !ok {
		return ""
	}
	source, _, ok := strings.Cut(rest, ".")
	if !ok {
		return ""
	}
	return source
}
