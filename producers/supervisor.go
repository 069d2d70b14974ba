package producers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/khook/khook/internal/strictyaml"
	"github.com/khook/khook/internal/telemetry"
)

// Constructor builds a plugin from its plugins.yaml entry, validating its config, and
// registers the plugin's own metrics on reg. It starts nothing.
type Constructor func(spec Spec, logger *zap.Logger, reg prometheus.Registerer) (EventSource, error)

// Supervisor runs the enabled plugins of plugins.yaml and keeps them running: it validates
// what they emit, recovers their panics, restarts them with backoff, reports each one's state
// to /readyz and in khook_plugin_* metrics, and applies edits of plugins.yaml (a plugin
// enabled, disabled or reconfigured) to just the plugins they touch, without a restart.
type Supervisor struct {
	Path string // plugins.yaml
	// Only runs just this plugin (khook producer --plugin), and only while plugins.yaml
	// enables it: the chart runs one Deployment per plugin, and the guide's rollback is to
	// disable the plugin in the file. A disabled plugin leaves the process running idle.
	Only    string
	Table   map[string]Constructor // the built-in plugins
	Pub     *Publisher
	Metrics *Metrics
	Reg     prometheus.Registerer // the supervisor's own metrics
	Probes  *telemetry.Probes
	Logger  *zap.Logger
	Env     func(string) (string, bool) // for ${VAR}; os.LookupEnv in production

	loaded  map[string]Desired      // what Load built, for Run to start
	changes chan map[string]Desired // what Reload built, for Run to apply

	mu      sync.Mutex
	running map[string]*runner
	reloads *prometheus.CounterVec
	started atomic.Bool
	// fatal carries a plugin's failure that ends the process: one that could not listen
	// when the process started (a port in use), which no restart would fix.
	fatal chan error
}

// Gatherer serves the metrics of the running plugins. Each plugin instance registers on a
// registry of its own, so a plugin rebuilt after a config change brings fresh collectors
// instead of colliding with its predecessor's; serve it beside the process's registry.
func (s *Supervisor) Gatherer() prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		s.mu.Lock()
		gs := make(prometheus.Gatherers, 0, len(s.running))
		for _, r := range s.running {
			gs = append(gs, r.reg)
		}
		s.mu.Unlock()
		return gs.Gather()
	})
}

// Ready is a readiness check that fails until the plugins of the file have been started.
func (s *Supervisor) Ready(context.Context) error {
	if !s.started.Load() {
		return errors.New("plugins not started yet")
	}
	return nil
}

// runner is one running plugin.
type runner struct {
	name        string
	fingerprint string
	reg         *prometheus.Registry
	cancel      context.CancelFunc
	done        chan struct{}
	// atStart: the plugin was started with the process, not by a reload.
	atStart bool

	mu    sync.Mutex
	state string // running, restarting, failed
	err   error
}

func (r *runner) set(state string, err error) {
	r.mu.Lock()
	r.state, r.err = state, err
	r.mu.Unlock()
}

func (r *runner) ready(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.state {
	case "running":
		return nil
	case "failed":
		return fmt.Errorf("plugin %s failed and will not be restarted until plugins.yaml changes: %w", r.name, r.err)
	default:
		return fmt.Errorf("plugin %s is %s after: %w", r.name, r.state, r.err)
	}
}

// Settings are the runtime's keys in a plugin's config (the deployment guide puts them
// there); the runtime takes them out before the plugin decodes the rest.
type Settings struct {
	// MaxRetries is how many consecutive failures are restarted before the plugin is left
	// failed; -1 restarts forever. A plugin that ran for a minute starts counting afresh.
	MaxRetries int `yaml:"maxRetries"`
	// RetryInterval is the first restart delay; it doubles per failure, up to 5 minutes.
	RetryInterval time.Duration `yaml:"retryInterval"`
	// HealthCheckInterval is how often the processing-duration gauge is refreshed.
	HealthCheckInterval time.Duration `yaml:"healthCheckInterval"`
	// VerboseLogging logs the plugin at debug level.
	VerboseLogging bool `yaml:"verboseLogging"`
}

func defaultSettings() Settings {
	return Settings{MaxRetries: 10, RetryInterval: time.Second, HealthCheckInterval: 5 * time.Second}
}

// stableAfter is how long a plugin must run for its failure count to start afresh.
const stableAfter = time.Minute

// Load parses the plugins file and builds every listed plugin, so that unknown names and bad
// config fail at start-up with the plugin and key named, before anything connects. Disabled
// plugins are validated too. Run starts what Load built.
//
// It returns the file's content, for the caller that follows its edits (Reload) to start
// from.
func (s *Supervisor) Load() ([]byte, error) {
	b, err := os.ReadFile(s.Path)
	if err != nil {
		return nil, fmt.Errorf("plugins: %w", err)
	}
	want, err := s.parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.Path, err)
	}
	s.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "khook_plugin_config_reloads_total",
		Help: "Reloads of plugins.yaml, by result (success, error). On error the running plugins are left as they were.",
	}, []string{"result"})
	s.reloads.WithLabelValues("success")
	s.reloads.WithLabelValues("error")
	if err := s.Reg.Register(s.reloads); err != nil {
		return nil, err
	}
	s.loaded, s.changes = want, make(chan map[string]Desired, 1)
	return b, nil
}

// Reload applies a new version of plugins.yaml: Run stops the plugins it no longer enables
// or whose settings changed, and starts the new ones, leaving the others untouched. A file
// with any error is refused whole, and the plugins stay as they are; the error says why.
// Call it after Load, from one goroutine.
func (s *Supervisor) Reload(b []byte) error {
	want, err := s.parse(b)
	if err != nil {
		s.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("%w (the plugins stay as they are)", err)
	}
	s.reloads.WithLabelValues("success").Inc()
	// Only the newest version matters: one Run has not applied yet is replaced.
	select {
	case <-s.changes:
	default:
	}
	s.changes <- want
	return nil
}

// URLs lists where the plugins Load built take events over HTTP (the webhook and the
// Alertmanager receiver), for the ready line of `khook run`.
func (s *Supervisor) URLs() []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(s.loaded)) {
		if u, ok := s.loaded[name].plugin.(interface{ URLs() []string }); ok {
			out = append(out, u.URLs()...)
		}
	}
	return out
}

// Planned names the plugins Load built that will run (the enabled ones), sorted.
func (s *Supervisor) Planned() []string {
	return slices.Sorted(maps.Keys(s.loaded))
}

// Desired is one plugin that should be running, built and validated by Load.
type Desired struct {
	plugin      EventSource
	reg         *prometheus.Registry
	settings    Settings
	fingerprint string
}

func (s *Supervisor) parse(b []byte) (map[string]Desired, error) {
	env := s.Env
	if env == nil {
		env = os.LookupEnv
	}
	specs, err := ParseSpecs(b, env)
	if err != nil {
		return nil, err
	}
	want := map[string]Desired{}
	found := false
	for _, spec := range specs {
		build, ok := s.Table[spec.Name]
		if !ok {
			// Worded as the deployment guide's troubleshooting greps for it ("plugin.*not found").
			return nil, fmt.Errorf("plugin %q not found: it is not a built-in plugin (built-in: %s)", spec.Name, strings.Join(slices.Sorted(maps.Keys(s.Table)), ", "))
		}
		if s.Only != "" && spec.Name != s.Only {
			continue
		}
		found = true
		settings, err := spec.takeSettings()
		if err != nil {
			return nil, fmt.Errorf("plugins.%s.config: %w", spec.Name, err)
		}
		enabled := spec.IsEnabled()
		reg := prometheus.NewRegistry()
		logger := s.Logger.Named(spec.Name)
		if !settings.VerboseLogging {
			logger = logger.WithOptions(zap.IncreaseLevel(zap.InfoLevel))
		}
		p, err := build(spec, logger, reg)
		if err != nil {
			// Worded as the deployment guide greps for it ("failed to initialize plugin").
			return nil, fmt.Errorf("failed to initialize plugin %q: %w", spec.Name, err)
		}
		if !enabled {
			continue
		}
		// The fingerprint is of the values, after ${VAR} expansion, so that a changed
		// secret restarts the plugin as a changed setting does.
		var cfg any
		if spec.Config != nil {
			_ = yaml.NodeToValue(spec.Config, &cfg)
		}
		want[spec.Name] = Desired{plugin: p, reg: reg, settings: settings, fingerprint: fmt.Sprintf("%+v|%v", settings, cfg)}
	}
	if s.Only != "" && !found {
		return nil, fmt.Errorf("plugin %q is not listed", s.Only)
	}
	return want, nil
}

// Run starts the plugins Load built and applies each version Reload hands it, until ctx
// ends; then it stops every plugin and waits for them. Call Load first.
func (s *Supervisor) Run(ctx context.Context) error {
	if s.changes == nil {
		return errors.New("plugins: Run before Load")
	}
	s.running = map[string]*runner{}
	s.fatal = make(chan error, 1)
	s.apply(ctx, s.loaded)
	s.started.Store(true)
	defer s.apply(context.Background(), nil) // stop everything

	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-s.fatal:
			return err
		case want := <-s.changes:
			s.apply(ctx, want)
		case <-t.C:
			s.mu.Lock()
			for name := range s.running {
				s.Metrics.refresh(name)
			}
			s.mu.Unlock()
		}
	}
}

// apply stops the plugins that are no longer wanted or whose settings changed, and starts
// the wanted ones that are not running. Plugins that did not change are not touched.
//
// Calls are serialized (the initial set, then each reload, then the final stop: all from
// Run), so
// the lock guards only the map: plugins are stopped outside it, because a stop can take as
// long as a webhook's shutdown and /metrics reads the map meanwhile.
func (s *Supervisor) apply(ctx context.Context, want map[string]Desired) {
	s.mu.Lock()
	var stopping []*runner
	for name, r := range s.running {
		if d, ok := want[name]; ok && d.fingerprint == r.fingerprint {
			continue
		}
		stopping = append(stopping, r)
		delete(s.running, name)
	}
	s.mu.Unlock()
	for _, r := range stopping {
		r.cancel()
		<-r.done
		s.Probes.Remove("plugin " + r.name)
		if _, reconfigured := want[r.name]; !reconfigured {
			s.Metrics.Forget(r.name)
		}
		s.Logger.Info("plugin stopped", zap.String("plugin", r.name))
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if _, ok := s.running[name]; ok {
			continue
		}
		d := want[name]
		rctx, cancel := context.WithCancel(ctx)
		r := &runner{name: name, fingerprint: d.fingerprint, reg: d.reg, cancel: cancel, done: make(chan struct{}), state: "starting",
			atStart: !s.started.Load()}
		s.running[name] = r
		s.Probes.Set("plugin "+name, r.ready)
		s.Metrics.Init(name, d.plugin.SupportedEventTypes())
		go s.supervise(rctx, r, d)
	}
}

// supervise runs one plugin, restarting it after errors and panics with backoff.
func (s *Supervisor) supervise(ctx context.Context, r *runner, d Desired) {
	defer close(r.done)
	p := d.plugin
	emit := s.Pub.Emitter(p.Name(), p.SupportedEventTypes()...)
	log := s.Logger.With(zap.String("plugin", p.Name()), zap.String("version", p.Version()))
	failures := 0
	for {
		started := time.Now()
		r.set("running", nil)
		s.Metrics.SetActive(p.Name(), true)
		// Worded as the deployment guide's verification greps for it
		// ("Successfully registered.*plugin").
		log.Info("Successfully registered plugin, started")
		err := runSafely(ctx, p, emit)
		s.Metrics.SetActive(p.Name(), false)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("Run returned before it was stopped")
		}
		var op *net.OpError
		if r.atStart && failures == 0 && errors.As(err, &op) && op.Op == "listen" {
			// The process has just started and the plugin cannot listen (a port in use):
			// that is a start-up error, said at once, not a plugin restarting for ever.
			// Later, after a reload or a first success, a failure is restarted as any is.
			select {
			case s.fatal <- fmt.Errorf("plugin %s: %w", p.Name(), err):
			default:
			}
			return
		}
		s.Metrics.Failed(p.Name())
		if time.Since(started) > stableAfter {
			failures = 0
		}
		failures++
		if d.settings.MaxRetries >= 0 && failures > d.settings.MaxRetries {
			r.set("failed", err)
			log.Error("plugin failed too often; not restarting until plugins.yaml changes", zap.Int("failures", failures), zap.Error(err))
			return
		}
		delay := d.settings.RetryInterval << min(failures-1, 20)
		delay = min(delay, 5*time.Minute)
		r.set("restarting", err)
		log.Warn("plugin failed, restarting", zap.Int("failures", failures), zap.Duration("delay", delay), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		s.Metrics.Restarted(p.Name())
	}
}

// runSafely runs a plugin, turning a panic into an error so one plugin cannot take the
// process down.
func runSafely(ctx context.Context, p EventSource, emit Emit) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return p.Run(ctx, emit)
}

// takeSettings removes the runtime's keys from the plugin's config and returns them.
func (s *Spec) takeSettings() (Settings, error) {
	settings := defaultSettings()
	m, ok := s.Config.(*ast.MappingNode)
	if !ok {
		return settings, nil
	}
	keys := map[string]bool{"maxRetries": true, "retryInterval": true, "healthCheckInterval": true, "verboseLogging": true}
	var runtime, rest []*ast.MappingValueNode
	for _, kv := range m.Values {
		if keys[strictyaml.Text(kv.Key)] {
			runtime = append(runtime, kv)
		} else {
			rest = append(rest, kv)
		}
	}
	m.Values = rest
	if len(runtime) == 0 {
		return settings, nil
	}
	tmp := Spec{Name: s.Name, Config: ast.Mapping(m.GetToken(), false, runtime...)}
	if err := tmp.DecodeConfig(&settings); err != nil {
		return settings, err
	}
	if settings.RetryInterval <= 0 {
		return settings, errors.New("retryInterval: must be positive")
	}
	return settings, nil
}
