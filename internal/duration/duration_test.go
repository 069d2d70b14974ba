package duration

import (
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"300ms": 300 * time.Millisecond, "1h30m": 90 * time.Minute,
		"7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, "0d": 0,
	} {
		got, err := Parse(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "7", "d", "-1d", "1.5d", "1dx", "36501d", "ten days"} {
		_, err := Parse(bad)
		require.Error(t, err, bad)
	}
}

// A bare number is refused rather than read as nanoseconds, which is what a weakly typed
// decoder would make of it.
func TestDecodeHook(t *testing.T) {
	to := reflect.TypeOf(time.Duration(0))
	got, err := DecodeHook(reflect.TypeOf(""), to, "2d")
	require.NoError(t, err)
	require.Equal(t, 48*time.Hour, got)
	_, err = DecodeHook(reflect.TypeOf(0), to, 30)
	require.ErrorContains(t, err, "bare number 30")
	_, err = DecodeHook(reflect.TypeOf(""), to, "soon")
	require.ErrorContains(t, err, `got "soon"`)
	other, err := DecodeHook(reflect.TypeOf(0), reflect.TypeOf(0), 30)
	require.NoError(t, err)
	require.Equal(t, 30, other, "other types pass through")
}
