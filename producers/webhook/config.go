package webhook

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/khook/khook/streams/subject"
)

// Config is the webhook plugin's `config` in plugins.yaml. The deployment guide's keys
// (port, path, timeout, enableTLS, certFile, keyFile, rateLimitRPS, maxConcurrentRequests,
// enableDebug) keep their names. The top-level path is one endpoint; `endpoints` adds more.
type Config struct {
	// Address is the interface to bind; empty binds all interfaces.
	Address string `yaml:"address"`
	Port    int    `yaml:"port"`
	// Timeout bounds how long a request may wait for JetStream to store its events.
	Timeout time.Duration `yaml:"timeout"`

	EnableTLS bool   `yaml:"enableTLS"`
	CertFile  string `yaml:"certFile"` // re-read when it changes
	KeyFile   string `yaml:"keyFile"`

	// MaxConcurrentRequests bounds requests in flight on the whole server; more get 503.
	MaxConcurrentRequests int `yaml:"maxConcurrentRequests"`
	// EnableDebug logs every request's outcome (never its credentials).
	EnableDebug bool `yaml:"enableDebug"`

	// Endpoint settings for the top-level path; they are also the defaults of every entry
	// of Endpoints.
	Endpoint `yaml:",inline"`
	// Endpoints are more paths, each with its own settings.
	Endpoints []Endpoint `yaml:"endpoints"`
}

// Endpoint is one path of the webhook server.
type Endpoint struct {
	Path string `yaml:"path"`
	// Source, when set, is the source of this endpoint's events instead of "webhook"
	// (e.g. "github", so that mapping rules can name it).
	Source string `yaml:"source"`
	// EventType, when set, is the type of every event of this endpoint; otherwise the type
	// comes from the CloudEvents type, the body's "type" field or the ?type= query.
	EventType string `yaml:"eventType"`
	// Batch allows a JSON array (or a CloudEvents batch) of events in one request.
	Batch        bool  `yaml:"batch"`
	MaxBatchSize int   `yaml:"maxBatchSize"`
	MaxBodyBytes int64 `yaml:"maxBodyBytes"`
	// RateLimitRPS is a token bucket per endpoint (burst: one second's worth); 0 is no limit.
	RateLimitRPS float64 `yaml:"rateLimitRPS"`

	// Token is a bearer token (write it as "${ENV_VAR}"); TokenFile is a file holding it,
	// re-read when it changes so it can rotate without a restart.
	Token     string `yaml:"token"`
	TokenFile string `yaml:"tokenFile"`
	// HMACSecret / HMACSecretFile enable HMAC-SHA256 body signatures in HMACHeader
	// (default X-Hub-Signature-256), as "sha256=<hex>" or plain hex.
	HMACSecret     string `yaml:"hmacSecret"`
	HMACSecretFile string `yaml:"hmacSecretFile"`
	HMACHeader     string `yaml:"hmacHeader"`
}

// DefaultConfig returns the guide's defaults: port 8090, path /webhook.
func DefaultConfig() Config {
	return Config{
		Port:                  8090,
		Timeout:               30 * time.Second,
		MaxConcurrentRequests: 1000,
		Endpoint: Endpoint{
			Path:         "/webhook",
			MaxBatchSize: 100,
			MaxBodyBytes: 1 << 20,
			HMACHeader:   "X-Hub-Signature-256",
		},
	}
}

// endpoints returns every endpoint, each completed with the top-level defaults.
func (c Config) endpoints() []Endpoint {
	out := []Endpoint{c.Endpoint}
	for _, e := range c.Endpoints {
		if e.MaxBatchSize == 0 {
			e.MaxBatchSize = c.MaxBatchSize
		}
		if e.MaxBodyBytes == 0 {
			e.MaxBodyBytes = c.MaxBodyBytes
		}
		if e.RateLimitRPS == 0 {
			e.RateLimitRPS = c.RateLimitRPS
		}
		if e.HMACHeader == "" {
			e.HMACHeader = c.HMACHeader
		}
		out = append(out, e)
	}
	return out
}

// Validate reports every invalid setting, naming its key.
func (c Config) Validate() error {
	var errs []error
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("port: must be 0 to 65535, got %d", c.Port))
	}
	if c.Timeout <= 0 {
		errs = append(errs, errors.New("timeout: must be positive"))
	}
	if c.EnableTLS && (c.CertFile == "" || c.KeyFile == "") {
		errs = append(errs, errors.New("enableTLS: certFile and keyFile are required"))
	}
	if c.MaxConcurrentRequests < 1 {
		errs = append(errs, fmt.Errorf("maxConcurrentRequests: must be at least 1, got %d", c.MaxConcurrentRequests))
	}
	seen := map[string]bool{}
	for i, e := range c.endpoints() {
		key := "path"
		if i > 0 {
			key = fmt.Sprintf("endpoints[%d]", i-1)
		}
		if !strings.HasPrefix(e.Path, "/") || e.Path == "/healthz" {
			errs = append(errs, fmt.Errorf("%s: path must start with / and not be /healthz, got %q", key, e.Path))
		}
		if seen[e.Path] {
			errs = append(errs, fmt.Errorf("%s: path %s is used twice", key, e.Path))
		}
		seen[e.Path] = true
		if e.Source != "" {
			errs = append(errs, subject.CheckToken(key+".source", e.Source))
		}
		if e.EventType != "" {
			errs = append(errs, subject.CheckToken(key+".eventType", e.EventType))
		}
		if e.MaxBodyBytes <= 0 {
			errs = append(errs, fmt.Errorf("%s.maxBodyBytes: must be positive", key))
		}
		if e.MaxBatchSize < 1 {
			errs = append(errs, fmt.Errorf("%s.maxBatchSize: must be at least 1", key))
		}
		if e.RateLimitRPS < 0 {
			errs = append(errs, fmt.Errorf("%s.rateLimitRPS: must not be negative", key))
		}
		if e.Token != "" && e.TokenFile != "" {
			errs = append(errs, fmt.Errorf("%s: at most one of token and tokenFile may be set", key))
		}
		if e.HMACSecret != "" && e.HMACSecretFile != "" {
			errs = append(errs, fmt.Errorf("%s: at most one of hmacSecret and hmacSecretFile may be set", key))
		}
	}
	return errors.Join(errs...)
}
