package webhook

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Config is the webhook plugin's `config` in plugins.yaml, with the deployment guide's keys.
type Config struct {
	// Address is the interface to bind; empty binds all interfaces.
	Address string `yaml:"address"`
	Port    int    `yaml:"port"`
	Path    string `yaml:"path"`
	// Timeout bounds how long a request may wait for JetStream to store its event.
	Timeout time.Duration `yaml:"timeout"`
	// MaxBodyBytes bounds a request body; larger bodies get 413.
	MaxBodyBytes int64 `yaml:"maxBodyBytes"`
}

// DefaultConfig returns the guide's defaults: port 8090, path /webhook.
func DefaultConfig() Config {
	return Config{Port: 8090, Path: "/webhook", Timeout: 30 * time.Second, MaxBodyBytes: 1 << 20}
}

// Validate reports every invalid setting, naming its key.
func (c Config) Validate() error {
	var errs []error
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("port: must be 0 to 65535, got %d", c.Port))
	}
	if !strings.HasPrefix(c.Path, "/") || c.Path == "/healthz" {
		errs = append(errs, fmt.Errorf("path: must start with / and not be /healthz, got %q", c.Path))
	}
	if c.Timeout <= 0 {
		errs = append(errs, errors.New("timeout: must be positive"))
	}
	if c.MaxBodyBytes <= 0 {
		errs = append(errs, errors.New("maxBodyBytes: must be positive"))
	}
	return errors.Join(errs...)
}
