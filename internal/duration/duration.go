// Package duration reads the durations khook's files and flags take: Go's (300ms, 1h30m),
// with whole days in front (7d, 1d12h), as retention settings are usually written.
package duration

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Parse reads a Go duration (300ms, 1h30m), also accepting whole days first (7d,
// 1d12h), as retention settings are usually written.
func Parse(s string) (time.Duration, error) {
	days, rest, found := strings.Cut(s, "d")
	if !found {
		return time.ParseDuration(s)
	}
	n, err := strconv.Atoi(days)
	if err != nil || n < 0 || n > 36500 {
		return 0, fmt.Errorf("time: invalid duration %q", s)
	}
	d := time.Duration(n) * 24 * time.Hour
	if rest == "" {
		return d, nil
	}
	more, err := time.ParseDuration(rest)
	if err != nil {
		return 0, fmt.Errorf("time: invalid duration %q", s)
	}
	return d + more, nil
}

// DecodeHook is a mapstructure decode hook for plugin settings: a time.Duration field
// takes a duration string (Parse), never a bare number, which a weakly typed decoder
// would read as nanoseconds.
func DecodeHook(from, to reflect.Type, data any) (any, error) {
	if to != reflect.TypeOf(time.Duration(0)) {
		return data, nil
	}
	if s, ok := data.(string); ok {
		d, err := Parse(s)
		if err != nil {
			return nil, fmt.Errorf("want a duration such as 30s, 10m or 7d, got %q", s)
		}
		return d, nil
	}
	return nil, fmt.Errorf("want a duration with its unit, such as 30s, 10m or 7d, got the bare number %v", data)
}
