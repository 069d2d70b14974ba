package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

func get(t *testing.T, h http.Handler, path string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var body map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body))
	return rec.Code, body
}

func TestProbes(t *testing.T) {
	p := NewProbes()
	h := p.Handler()

	code, _ := get(t, h, "/healthz")
	require.Equal(t, http.StatusOK, code)

	code, _ = get(t, h, "/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code, "not ready before any component registered")

	p.Set("nats", func(context.Context) error { return nil })
	code, body := get(t, h, "/readyz")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "ok", body["checks"].(map[string]any)["nats"])

	p.Set("streams", func(context.Context) error { return errors.New("stream KHOOK_RAW: not found") })
	code, body = get(t, h, "/readyz")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Equal(t, "stream KHOOK_RAW: not found", body["checks"].(map[string]any)["streams"])

	p.Remove("streams")
	code, _ = get(t, h, "/readyz")
	require.Equal(t, http.StatusOK, code)
}
