package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzLoad loads arbitrary khook.yaml files. Whatever the input, Load returns a valid
// configuration or an error, within a bound (a hang detector), and a loaded configuration
// never carries a duration a bare number slipped into.
func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		"nats:\n  url: nats://x:4222\n",
		"dispatcher:\n  suppression_window: 10\n  retry_base: 1\n",
		"kagent:\n  timeout: 60\n",
		"streams:\n  raw:\n    max_age: 7d\n",
		"dispatcher:\n  suppression_window: 500ms\n",
		"dispatcher: [1, 2]\n",
		"a: &a [*a, *a]\n",
		"log:\n  level: loud\n",
		"dispatcher:\n  routes:\n    - {agent: 'ns/*', type: http, url: 'http://x'}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, file []byte) {
		path := filepath.Join(t.TempDir(), "khook.yaml")
		if err := os.WriteFile(path, file, 0o600); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			cfg, err := Load(path, nil, nil)
			if err != nil {
				return
			}
			if cfg.Dispatcher.SuppressionWindow < time.Second || cfg.Dispatcher.RetryBase <= 0 || cfg.Kagent.Timeout <= 0 {
				t.Errorf("loaded invalid durations: window %s, retry base %s, timeout %s",
					cfg.Dispatcher.SuppressionWindow, cfg.Dispatcher.RetryBase, cfg.Kagent.Timeout)
			}
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("Load did not end within 10s for %q", file)
		}
	})
}
