package secret

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A file rewritten in place with a value of the same length, within the same clock tick,
// keeps its size and often its time; it must still be read again.
func TestFileRewrittenInPlaceIsReadAgain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(path, []byte("aaaa"), 0o600))
	// Every write gets the same time, as a coarse clock would give writes within one tick.
	tick := time.Now()
	require.NoError(t, os.Chtimes(path, tick, tick))
	v := New("", path)
	got, err := v.Get()
	require.NoError(t, err)
	require.Equal(t, "aaaa", string(got))
	for _, next := range []string{"bbbb", "cccc", "dddd"} {
		require.NoError(t, os.WriteFile(path, []byte(next), 0o600))
		require.NoError(t, os.Chtimes(path, tick, tick))
		got, err := v.Get()
		require.NoError(t, err)
		require.Equal(t, next, string(got))
	}
}

func TestBearerRefusesEmptyAndMissingTokens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(path, []byte(" s3cret \n"), 0o600))
	v := New("", path)
	bearer, err := v.Bearer("kagent.token_file")
	require.NoError(t, err)
	require.Equal(t, "Bearer s3cret", bearer)

	require.NoError(t, os.WriteFile(path, []byte("  \n"), 0o600))
	_, err = v.Bearer("kagent.token_file")
	require.EqualError(t, err, "kagent.token_file: the token is empty; not sending the request without it")

	require.NoError(t, os.Remove(path))
	_, err = v.Bearer("kagent.token_file")
	require.ErrorContains(t, err, "kagent.token_file: secret file:")
	require.NotContains(t, err.Error(), "s3cret")
}

func TestCheckBearer(t *testing.T) {
	v := New("s3cret", "")
	h := http.Header{}
	require.ErrorIs(t, v.CheckBearer(h), ErrBearer)
	h.Set("Authorization", "Bearer wrong")
	require.ErrorIs(t, v.CheckBearer(h), ErrBearer)
	h.Set("Authorization", "Basic s3cret")
	require.ErrorIs(t, v.CheckBearer(h), ErrBearer)
	h.Set("Authorization", "Bearer s3cret")
	require.NoError(t, v.CheckBearer(h))
	require.False(t, Equal(nil, nil), "an empty expected secret matches nothing")
}
