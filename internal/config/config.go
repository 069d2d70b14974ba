// Package config is khook.yaml: the one struct tree every subcommand reads, its defaults, and
// its validation.
package config

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/khook/khook/consumers/dispatch"
	"github.com/khook/khook/consumers/dispatch/state"
	"github.com/khook/khook/streams"
	"github.com/khook/khook/streams/cloudevent"
)

// Config is khook.yaml.
type Config struct {
	// Cluster names the Kubernetes cluster this khook runs in, when one pipeline serves many
	// (khook edge in each, one hub): producers stamp it on every event, and it is part of
	// every event's identity. Empty in a single-cluster install, whose ids it leaves as they
	// were. A DNS label; at an edge it is also its JetStream domain.
	Cluster string `koanf:"cluster"`
	// Clusters lists the edges a hub sources events from, one per cluster (streams apply).
	Clusters []ClusterRef `koanf:"clusters"`
	// Edge configures `khook edge`: its hub, and the buffer it keeps while the hub is away.
	Edge       Edge           `koanf:"edge"`
	NATS       NATS           `koanf:"nats"`
	Streams    streams.Config `koanf:"streams"`
	Files      Files          `koanf:"files"`
	Dispatcher Dispatcher     `koanf:"dispatcher"`
	Kagent     Kagent         `koanf:"kagent"`
	Server     Server         `koanf:"server"`
	API        API            `koanf:"api"`
	Log        Log            `koanf:"log"`
	Kubernetes Kubernetes     `koanf:"kubernetes"`
	// IgnoredEnv lists the KHOOK_ variables that were not settings but Service links the
	// kubelet injects (KHOOK_WEBHOOK_SERVICE_HOST, ...), for one debug line.
	IgnoredEnv []string `koanf:"-"`
}

// ClusterRef is one cluster a hub hears from, through the edge that runs in it.
type ClusterRef struct {
	// Name is the cluster's name, which its edge sets as cluster: and uses as its JetStream
	// domain.
	Name string `koanf:"name"`
}

// Edge configures `khook edge`, the part of khook that runs in each cluster of many: its
// producers, over an embedded NATS server that is a leaf node of the hub's.
type Edge struct {
	Hub    Hub                `koanf:"hub"`
	Buffer streams.EdgeBuffer `koanf:"buffer"`
}

// Hub is how an edge reaches its hub: the hub's leaf node port. The edge dials out; the hub
// never connects to an edge.
type Hub struct {
	// URL is the hub's leaf node URL, nats-leaf://hub.example.com:7422, or a comma-separated
	// list of the servers of a hub's NATS cluster.
	URL string `koanf:"url"`
	// Username and PasswordFile, or CredentialsFile (a NATS .creds file), authenticate the
	// edge to the hub. Secrets only from files.
	Username        string `koanf:"username"`
	PasswordFile    string `koanf:"password_file"`
	CredentialsFile string `koanf:"credentials_file"`
	TLS             TLS    `koanf:"tls"`
}

// Kubernetes says where the dispatcher finds Hooks.
type Kubernetes struct {
	// Hooks is cluster (watch Hook resources), file (hooks.yaml), both (Hook resources and
	// hooks.yaml, a Hook resource winning over a file hook of the same namespace and name) or
	// auto: the cluster when a kubeconfig or in-cluster config is found and the Hook CRD is
	// installed, else the file.
	Hooks string `koanf:"hooks"`
	// Kubeconfig names a kubeconfig file; empty means in-cluster, else $KUBECONFIG.
	Kubeconfig string `koanf:"kubeconfig"`
	// StatusInterval is how often Hook status is reconciled, at most one write per Hook.
	StatusInterval time.Duration `koanf:"status_interval"`
	// LeaseNamespace holds the Lease that elects the one replica writing Hook status;
	// empty means $POD_NAMESPACE, else default.
	LeaseNamespace string `koanf:"lease_namespace"`
}

// NATS says how to reach NATS. With an empty URL, `khook run` starts an embedded server.
type NATS struct {
	URL             string                 `koanf:"url"`
	Embedded        streams.EmbeddedConfig `koanf:"embedded"`
	CredentialsFile string                 `koanf:"credentials_file"`
	TLS             TLS                    `koanf:"tls"`
	ConnectTimeout  time.Duration          `koanf:"connect_timeout"`
	// PingInterval is how often the client checks that its server still answers. A server
	// cut off by a partition sends no reset, so this is how long, times three, a client
	// stays with it before reconnecting to another (nats.go's default is 2 minutes, times 2).
	PingInterval time.Duration `koanf:"ping_interval"`
}

// TLS configures a TLS client connection. Files only: secrets never live in khook.yaml.
type TLS struct {
	CAFile   string `koanf:"ca_file"`
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
}

// Files names the other configuration files. Relative paths are relative to khook.yaml.
type Files struct {
	Plugins  string `koanf:"plugins"`
	Mappings string `koanf:"mappings"`
	Hooks    string `koanf:"hooks"`
	// ReloadInterval is how often files are re-read when the filesystem sends no change
	// notifications; changes are normally seen within a fraction of a second.
	ReloadInterval time.Duration `koanf:"reload_interval"`
}

// Dispatcher configures delivery to agents: where tasks go (Target, Routes) here, and how
// they are delivered (workers, retries, suppression, breakers, drain) in the dispatcher's own
// dispatch.Config, whose keys sit directly under dispatcher.
type Dispatcher struct {
	// Target is where tasks go when no route names the agent: kagent (A2A) or log (print
	// only, for local runs).
	Target          string `koanf:"target"`
	dispatch.Config `koanf:",squash,flatten"`
	// Routes send chosen agents somewhere other than the default target.
	Routes []Route `koanf:"routes"`
}

// Route sends the agents that Agent names ("namespace/name", or "namespace/*") to a target.
type Route struct {
	Agent string `koanf:"agent"`
	// Type is kagent (A2A at URL, or kagent.url when empty), http (a CloudEvent POSTed to
	// URL) or log.
	Type string `koanf:"type"`
	URL  string `koanf:"url"`
	// Protocol is the A2A protocol version for kagent routes: 1.0, or 0.3 for kagent 0.8
	// and older. Empty means kagent.protocol.
	Protocol  string `koanf:"protocol"`
	TokenFile string `koanf:"token_file"`
}

// Kagent configures the kagent A2A endpoint. The environment variables khook has always
// read (KAGENT_API_URL, KAGENT_USER_ID, KAGENT_API_TIMEOUT) set these too.
type Kagent struct {
	URL string `koanf:"url"`
	// Protocol is the A2A protocol version: 1.0 (method SendMessage) or 0.3 (message/send).
	Protocol  string        `koanf:"protocol"`
	UserID    string        `koanf:"user_id"`
	Timeout   time.Duration `koanf:"timeout"`
	TokenFile string        `koanf:"token_file"`
}

// Server configures the operational HTTP endpoints.
type Server struct {
	MetricsAddr string `koanf:"metrics_addr"` // /metrics
	ProbesAddr  string `koanf:"probes_addr"`  // /healthz and /readyz
}

// API configures the events HTTP API, served by the dispatcher (and khook run). It is off
// unless enabled, and always requires a bearer token.
type API struct {
	Enabled   bool   `koanf:"enabled"`
	Addr      string `koanf:"addr"`
	TokenFile string `koanf:"token_file"` // the bearer token, re-read when it changes
}

// Log configures zap. LOG_LEVEL and LOG_FORMAT set these too.
type Log struct {
	Level  string `koanf:"level"`  // debug, info, warn, error
	Format string `koanf:"format"` // json or console
}

// DefaultNATSURL is where the separate stage commands connect when nothing else is said.
const DefaultNATSURL = "nats://127.0.0.1:4222"

// Default returns the configuration of a local installation.
func Default() Config {
	return Config{
		NATS: NATS{
			Embedded:       streams.EmbeddedConfig{StoreDir: "./data", Listen: "127.0.0.1:4222"},
			ConnectTimeout: 10 * time.Second,
			PingInterval:   10 * time.Second,
		},
		Streams:    streams.Default(),
		Edge:       Edge{Buffer: streams.DefaultEdgeBuffer()},
		Files:      Files{Plugins: "plugins.yaml", Mappings: "event-mappings.yaml", Hooks: "hooks.yaml", ReloadInterval: 10 * time.Second},
		Dispatcher: Dispatcher{Target: "kagent", Config: dispatcherDefaults()},
		Kagent: Kagent{
			URL:      "http://kagent-controller.kagent:8083",
			Protocol: "1.0",
			UserID:   "admin@kagent.dev",
			Timeout:  120 * time.Second,
		},
		Server:     Server{MetricsAddr: ":8080", ProbesAddr: ":8081"},
		API:        API{Addr: ":8082"},
		Log:        Log{Level: "info", Format: "console"},
		Kubernetes: Kubernetes{Hooks: "auto", StatusInterval: 10 * time.Second},
	}
}

// dispatcherDefaults are the dispatcher's own defaults, less ActiveEvents, which is not a
// setting (the pipeline turns it on when Hook status reads the records) and so is never
// loaded from the file.
func dispatcherDefaults() dispatch.Config {
	c := dispatch.DefaultConfig()
	c.ActiveEvents = false
	return c
}

// Validate reports every invalid setting at once, each naming its key.
func (c Config) Validate() error {
	errs := []error{c.Streams.Validate("streams")}
	if c.Cluster != "" {
		if err := cloudevent.CheckCluster(c.Cluster); err != nil {
			errs = append(errs, fmt.Errorf("cluster: %w", err))
		}
	}
	errs = append(errs, c.Edge.Buffer.Validate("edge.buffer"))
	l := c.NATS.Embedded.Leafnodes
	switch {
	case l.Listen != "" && c.NATS.URL != "":
		errs = append(errs, errors.New("nats.embedded.leafnodes: set, but nats.url is too, so no embedded server runs; configure the leaf port on the NATS servers at nats.url"))
	case l.Listen != "":
		errs = append(errs, l.Validate("nats.embedded.leafnodes"))
	case l.Username != "" || l.PasswordFile != "" || l.TLS != (streams.ServerTLS{}):
		errs = append(errs, errors.New("nats.embedded.leafnodes.listen: required with the other leafnodes settings (the port edges dial)"))
	}
	if d := c.NATS.Embedded.Domain; d != "" {
		if err := cloudevent.CheckCluster(d); err != nil {
			errs = append(errs, fmt.Errorf("nats.embedded.domain: %w", err))
		} else if slices.Contains(c.Streams.Edges, d) {
			errs = append(errs, fmt.Errorf("nats.embedded.domain: %q is also an edge's (clusters); the hub's domain must differ from every edge's", d))
		}
	}
	if c.Cluster != "" && slices.Contains(c.Streams.Edges, c.Cluster) {
		errs = append(errs, fmt.Errorf("cluster: %q is also listed in clusters: the hub's own events and that edge's would share their keys", c.Cluster))
	}
	seen := map[string]bool{}
	for i, cl := range c.Clusters {
		if err := cloudevent.CheckCluster(cl.Name); err != nil {
			errs = append(errs, fmt.Errorf("clusters[%d].name: %w", i, err))
		} else if seen[cl.Name] {
			errs = append(errs, fmt.Errorf("clusters[%d].name: %q is listed twice", i, cl.Name))
		}
		seen[cl.Name] = true
	}
	if c.NATS.URL != "" {
		// A cluster is a comma-separated list of its servers, as the NATS clients take it.
		for _, one := range strings.Split(c.NATS.URL, ",") {
			if u, err := url.Parse(strings.TrimSpace(one)); err != nil || u.Host == "" {
				errs = append(errs, fmt.Errorf("nats.url: %q is not a URL like nats://host:4222 (or a comma-separated list of them)", one))
			}
		}
	}
	if (c.NATS.TLS.CertFile == "") != (c.NATS.TLS.KeyFile == "") {
		errs = append(errs, errors.New("nats.tls: cert_file and key_file must be set together"))
	}
	if c.Files.ReloadInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("files.reload_interval: must be at least 100ms, got %s", c.Files.ReloadInterval))
	}
	if c.NATS.ConnectTimeout <= 0 {
		errs = append(errs, errors.New("nats.connect_timeout: must be positive"))
	}
	if c.NATS.PingInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("nats.ping_interval: must be at least 100ms, got %s", c.NATS.PingInterval))
	}
	switch c.Dispatcher.Target {
	case "kagent", "log":
	default:
		errs = append(errs, fmt.Errorf("dispatcher.target: must be kagent or log, got %q", c.Dispatcher.Target))
	}
	if c.Dispatcher.Workers < 1 || c.Dispatcher.Workers > 1024 {
		errs = append(errs, fmt.Errorf("dispatcher.workers: must be 1 to 1024, got %d", c.Dispatcher.Workers))
	}
	errs = append(errs, c.Dispatcher.validate(c.Streams.DispatchTTL))
	if c.Kagent.Protocol != "1.0" && c.Kagent.Protocol != "0.3" {
		errs = append(errs, fmt.Errorf("kagent.protocol: must be 1.0 or 0.3, got %q", c.Kagent.Protocol))
	}
	errs = append(errs, checkHTTPURL("kagent.url", c.Kagent.URL))
	if c.Kagent.UserID == "" {
		errs = append(errs, errors.New("kagent.user_id: required"))
	}
	// khook has always capped agent calls at 300s; longer calls hold a consumer slot too long.
	if c.Kagent.Timeout < time.Second || c.Kagent.Timeout > 300*time.Second {
		errs = append(errs, fmt.Errorf("kagent.timeout: must be 1s to 300s, got %s", c.Kagent.Timeout))
	}
	if c.Streams.Dispatcher.AckWait <= c.Kagent.Timeout {
		errs = append(errs, fmt.Errorf("streams.dispatcher.ack_wait: must exceed kagent.timeout (%s), got %s",
			c.Kagent.Timeout, c.Streams.Dispatcher.AckWait))
	}
	switch c.Kubernetes.Hooks {
	case "auto", "cluster", "file", "both":
	default:
		errs = append(errs, fmt.Errorf("kubernetes.hooks: must be auto, cluster, file or both, got %q", c.Kubernetes.Hooks))
	}
	if c.Kubernetes.StatusInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("kubernetes.status_interval: must be at least 100ms, got %s", c.Kubernetes.StatusInterval))
	}
	if c.API.Enabled && c.API.TokenFile == "" {
		errs = append(errs, errors.New("api.token_file: required when api.enabled is true (the API never runs without a token)"))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level: must be debug, info, warn or error, got %q", c.Log.Level))
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		errs = append(errs, fmt.Errorf("log.format: must be json or console, got %q", c.Log.Format))
	}
	return errors.Join(errs...)
}

func (d Dispatcher) validate(dispatchTTL time.Duration) error {
	var errs []error
	// JetStream refuses per-key TTLs under a second, so a shorter window could never be
	// claimed.
	if d.SuppressionWindow < time.Second || d.SuppressionWindow > dispatchTTL {
		errs = append(errs, fmt.Errorf("dispatcher.suppression_window: must be at least 1s and at most streams.dispatch_ttl (%s), got %s",
			dispatchTTL, d.SuppressionWindow))
	}
	if d.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("dispatcher.max_attempts: must be at least 1, got %d", d.MaxAttempts))
	}
	if d.DrainTimeout <= 0 {
		errs = append(errs, fmt.Errorf("dispatcher.drain_timeout: must be positive, got %s", d.DrainTimeout))
	}
	if d.RetryBase <= 0 || d.RetryMax < d.RetryBase {
		errs = append(errs, fmt.Errorf("dispatcher.retry_base, retry_max: need 0 < retry_base <= retry_max, got %s and %s", d.RetryBase, d.RetryMax))
	}
	if d.Guard.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("dispatcher.per_target_concurrency: must be at least 1, got %d", d.Guard.Concurrency))
	}
	if d.Guard.Breaker.Failures < 1 || d.Guard.Breaker.Cooldown <= 0 {
		errs = append(errs, fmt.Errorf("dispatcher.breaker: failures must be at least 1 and cooldown positive"))
	}
	seen := map[string]bool{}
	for i, b := range d.Budgets {
		key := fmt.Sprintf("dispatcher.budgets[%d]", i)
		ns, name, ok := strings.Cut(b.Agent, "/")
		if !ok || ns == "" || name == "" {
			errs = append(errs, fmt.Errorf("%s.agent: want namespace/name or namespace/*, got %q", key, b.Agent))
		}
		if seen[b.Agent] {
			errs = append(errs, fmt.Errorf("%s.agent: %s has a budget already", key, b.Agent))
		}
		seen[b.Agent] = true
		if b.MaxConcurrentTasks < 0 || b.MaxTasksPerHour < 0 || b.MaxConcurrentTasks+b.MaxTasksPerHour == 0 {
			errs = append(errs, fmt.Errorf("%s: set max_concurrent_tasks, max_tasks_per_hour or both, each at least 1", key))
		}
		// The budget's record keeps a start time per task of the hour, in one KV value.
		if b.MaxTasksPerHour > state.MaxTasksPerHour {
			errs = append(errs, fmt.Errorf("%s.max_tasks_per_hour: at most %d, got %d", key, state.MaxTasksPerHour, b.MaxTasksPerHour))
		}
	}
	for i, r := range d.Routes {
		key := fmt.Sprintf("dispatcher.routes[%d]", i)
		ns, name, ok := strings.Cut(r.Agent, "/")
		if !ok || ns == "" || name == "" {
			errs = append(errs, fmt.Errorf("%s.agent: want namespace/name or namespace/*, got %q", key, r.Agent))
		}
		switch r.Type {
		case "kagent":
			if r.Protocol != "" && r.Protocol != "1.0" && r.Protocol != "0.3" {
				errs = append(errs, fmt.Errorf("%s.protocol: must be 1.0 or 0.3, got %q", key, r.Protocol))
			}
			if r.URL != "" {
				errs = append(errs, checkHTTPURL(key+".url", r.URL))
			}
		case "http":
			errs = append(errs, checkHTTPURL(key+".url", r.URL))
		case "log":
		default:
			errs = append(errs, fmt.Errorf("%s.type: must be kagent, http or log, got %q", key, r.Type))
		}
	}
	return errors.Join(errs...)
}

func checkHTTPURL(key, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%s: %q must be an http:// or https:// URL", key, raw)
	}
	return nil
}

// ValidateEdge reports what `khook edge` needs beyond Validate: a cluster name and a hub.
func (c Config) ValidateEdge() error {
	var errs []error
	if c.Cluster == "" {
		errs = append(errs, errors.New("cluster: required for khook edge (the cluster's name, also its JetStream domain)"))
	}
	h := c.Edge.Hub
	if h.URL == "" {
		errs = append(errs, errors.New("edge.hub.url: required (the hub's leaf node URL, e.g. nats-leaf://hub.example.com:7422)"))
	}
	for _, one := range strings.Split(h.URL, ",") {
		if h.URL == "" {
			break
		}
		u, err := url.Parse(strings.TrimSpace(one))
		switch {
		case err != nil || u.Host == "":
			errs = append(errs, fmt.Errorf("edge.hub.url: %q is not a URL like nats-leaf://hub:7422", redactURL(one)))
		case u.User != nil:
			// Never echoed whole: the password would land in the pod's log.
			errs = append(errs, fmt.Errorf("edge.hub.url: %s carries credentials; give them in edge.hub.password_file or credentials_file", u.Redacted()))
		case !slices.Contains([]string{"nats-leaf", "nats", "tls", "ws", "wss"}, u.Scheme):
			errs = append(errs, fmt.Errorf("edge.hub.url: %s: want a nats-leaf://, tls://, ws:// or wss:// URL of the hub's leaf node port", u.Redacted()))
		}
	}
	if h.Username != "" && h.PasswordFile == "" {
		errs = append(errs, errors.New("edge.hub.password_file: required with edge.hub.username"))
	}
	if h.Username == "" && h.PasswordFile != "" {
		errs = append(errs, errors.New("edge.hub.username: required with edge.hub.password_file"))
	}
	if (h.TLS.CertFile == "") != (h.TLS.KeyFile == "") {
		errs = append(errs, errors.New("edge.hub.tls: cert_file and key_file must be set together"))
	}
	if h.PasswordFile != "" && h.CredentialsFile != "" {
		errs = append(errs, errors.New("edge.hub: password_file and credentials_file are two ways to authenticate; set one"))
	}
	if c.NATS.URL != "" {
		errs = append(errs, errors.New("nats.url: must be empty for khook edge, which runs its own NATS server (the hub's leaf node)"))
	}
	if c.NATS.Embedded.Leafnodes.Listen != "" {
		errs = append(errs, errors.New("nats.embedded.leafnodes.listen: an edge accepts no leaf nodes; only the hub does"))
	}
	return errors.Join(errs...)
}

// redactURL is a URL as written, with any password replaced, for an error message.
func redactURL(s string) string {
	if u, err := url.Parse(strings.TrimSpace(s)); err == nil {
		return u.Redacted()
	}
	if at := strings.LastIndex(s, "@"); at >= 0 {
		return "…" + s[at:]
	}
	return s
}
