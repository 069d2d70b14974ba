package telemetry

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestConsoleColourOnlyOnATerminal(t *testing.T) {
	require.True(t, useColour(true, false))
	require.False(t, useColour(false, false), "a file or a pipe gets plain text")
	require.False(t, useColour(true, true), "NO_COLOR turns colour off on a terminal too")

	var plain, coloured bytes.Buffer
	for _, c := range []struct {
		buf    *bytes.Buffer
		colour bool
	}{{&plain, false}, {&coloured, true}} {
		log, err := newLogger("info", "console", zapcore.AddSync(c.buf), c.colour)
		require.NoError(t, err)
		log.Warn("delivered", zap.String("event_id", "webhook/1"))
	}
	require.NotContains(t, plain.String(), "\x1b[")
	require.Contains(t, plain.String(), "\tWARN\t")
	require.Contains(t, coloured.String(), "\x1b[33mWARN\x1b[0m")
}

// TestJSONLogsAreNotSampled logs the same event line far more often than zap's production
// sampler lets through (100 a second, then 1 in 100), and finds every one.
func TestJSONLogsAreNotSampled(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLogger("info", "json", zapcore.AddSync(&buf), false)
	require.NoError(t, err)
	const n = 1000
	for i := range n {
		log.Info("delivered", zap.Int("n", i))
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, n)
	for i, line := range lines {
		var rec struct {
			Msg string `json:"msg"`
			N   int    `json:"n"`
			TS  string `json:"ts"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &rec), line)
		require.Equal(t, "delivered", rec.Msg)
		require.Equal(t, i, rec.N)
		require.NotEmpty(t, rec.TS)
	}
}

func TestLoggerRefusesUnknownSettings(t *testing.T) {
	_, err := newLogger("loud", "json", zapcore.AddSync(&bytes.Buffer{}), false)
	require.ErrorContains(t, err, "log.level")
	_, err = newLogger("info", "xml", zapcore.AddSync(&bytes.Buffer{}), false)
	require.ErrorContains(t, err, `log.format: must be json or console, got "xml"`)
}
