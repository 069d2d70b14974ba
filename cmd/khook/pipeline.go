package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/khook/khook/consumers/dispatch"
	"github.com/khook/khook/consumers/dispatch/kubehooks"
	"github.com/khook/khook/consumers/mapper"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/internal/filewatch"
	"github.com/khook/khook/internal/kube"
	"github.com/khook/khook/internal/secret"
	"github.com/khook/khook/internal/telemetry"
	"github.com/khook/khook/internal/tracing"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/ops/api"
	"github.com/khook/khook/producers"
	"github.com/khook/khook/producers/builtin"
	"github.com/khook/khook/streams"
)

// stages says which components one process runs.
type stages struct {
	producers  bool
	plugin     string // with producers: only this plugin
	mapper     bool
	dispatcher bool
	embedded   bool // start an embedded NATS server when nats.url is empty
}

// serviceName names this process in traces: khook for `khook run`, else its one stage.
func (st stages) serviceName() string {
	switch {
	case st.producers && st.mapper && st.dispatcher:
		return "khook"
	case st.producers:
		return "khook-producer"
	case st.mapper:
		return "khook-mapper"
	default:
		return "khook-dispatcher"
	}
}

// streamStages lists the stages whose streams and consumers this process reports on.
func (st stages) streamStages() []streams.Stage {
	var out []streams.Stage
	if st.producers {
		out = append(out, streams.StageProducer)
	}
	if st.mapper {
		out = append(out, streams.StageMapper)
	}
	if st.dispatcher {
		out = append(out, streams.StageDispatcher)
	}
	return out
}

func runCmd() *cobra.Command {
	return leaf("run", "run the whole pipeline in one process (embedded NATS unless --nats-url)", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		return func(ctx context.Context, _ []string, _, _ io.Writer) error {
			return runPipeline(ctx, common, stages{producers: true, mapper: true, dispatcher: true, embedded: true})
		}
	})
}

func producerCmd() *cobra.Command {
	return leaf("producer", "run the enabled producer plugins of plugins.yaml", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		plugin := fs.String("plugin", "", "run only this plugin (one plugin per process)")
		return func(ctx context.Context, _ []string, _, _ io.Writer) error {
			return runPipeline(ctx, common, stages{producers: true, plugin: *plugin})
		}
	})
}

func mapperCmd() *cobra.Command {
	return leaf("mapper", "run the mapping consumer", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		return func(ctx context.Context, _ []string, _, _ io.Writer) error {
			return runPipeline(ctx, common, stages{mapper: true})
		}
	})
}

func dispatcherCmd() *cobra.Command {
	return leaf("dispatcher", "run the dispatch consumer", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		return func(ctx context.Context, _ []string, _, _ io.Writer) error {
			return runPipeline(ctx, common, stages{dispatcher: true})
		}
	})
}

func streamsCmd() *cobra.Command {
	apply := leaf("apply", "create or update the streams, consumers and buckets khook.yaml describes", cobra.NoArgs, func(fs *pflag.FlagSet) runFunc {
		common := addCommonFlags(fs)
		dryRun := fs.Bool("dry-run", false, "say what would change, setting by setting, and change nothing")
		output := addOutput(fs, "text", "json", "yaml")
		return func(ctx context.Context, _ []string, stdout, _ io.Writer) error {
			cfg, err := config.Load(common.config, environ(), common.opsOverrides())
			if err != nil {
				return err
			}
			nc, js, err := openJetStream(cfg, nil)
			if err != nil {
				return err
			}
			defer nc.Close()
			do := streams.Apply
			if *dryRun {
				do = streams.Plan
			}
			changes, err := do(ctx, js, cfg.Streams)
			if changes == nil {
				changes = []streams.Change{}
			}
			// What was done is printed even when a later object failed.
			if werr := writeAs(stdout, output.value, changes, func(w io.Writer) error {
				for _, c := range changes {
					fmt.Fprintln(w, c)
				}
				return nil
			}); werr != nil {
				return werr
			}
			return err
		}
	})
	apply.Long = `Create or update the streams, consumers and buckets khook.yaml describes. Settings khook
does not manage are kept as the server has them. An update lists each setting it changes;
a shorter max_age or a smaller max_bytes or max_msgs deletes messages at once, so run
--dry-run first to see what would change.`
	return group("streams", "manage the JetStream streams, consumers and buckets", apply)
}

// withoutConfig explains a missing file when no --config was given: the defaults name files
// in the working directory, which is rarely what a first run meant.
func withoutConfig(common *commonFlags, err error) error {
	if common.config != "" || !errors.Is(err, os.ErrNotExist) {
		return err
	}
	wd, _ := os.Getwd()
	return fmt.Errorf("%w\n(no --config was given, so khook used its defaults, which read plugins.yaml, event-mappings.yaml "+
		"and hooks.yaml from the working directory %s; pass --config FILE, e.g. --config examples/local/khook.yaml, "+
		"or set files.plugins, files.mappings and files.hooks)", err, wd)
}

// runPipeline runs the chosen stages until SIGINT or SIGTERM, then drains and returns nil.
func runPipeline(ctx context.Context, common *commonFlags, st stages) error {
	cfg, err := config.Load(common.config, environ(), common.overrides())
	if err != nil {
		return err
	}
	logger, err := telemetry.NewLogger(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	defer func() { _ = logger.Sync() }()
	if len(cfg.IgnoredEnv) > 0 {
		logger.Debug("ignoring the kubelet's Service link variables", zap.Strings("variables", cfg.IgnoredEnv))
	}
	tr, stopTracing, err := tracing.Setup(ctx, st.serviceName(), os.Getenv)
	if err != nil {
		return err
	}
	defer func() {
		// Flush the spans of the last events before exiting.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTracing(sctx); err != nil {
			logger.Warn("tracing shutdown", zap.Error(err))
		}
	}()
	if tr.Enabled {
		logger.Info("tracing on", zap.String("service", tr.Service), zap.String("protocol", tr.Protocol), zap.String("endpoint", tr.Endpoint))
	}

	reg := telemetry.NewRegistry()
	probes := telemetry.NewProbes()
	// Load every file before connecting, so a broken file fails fast with its line.
	var sup *producers.Supervisor
	if st.producers {
		sup = &producers.Supervisor{
			Path: cfg.Files.Plugins, Only: st.plugin, Table: builtin.Table(), Reg: reg, Probes: probes,
			Logger: logger.Named("plugins"), Interval: cfg.Files.ReloadInterval,
		}
		if err = sup.Load(); err != nil {
			return withoutConfig(common, err)
		}
	}
	var rules *mapping.Rules
	var rulesFile []byte
	if st.mapper {
		if rules, rulesFile, err = loadRules(cfg.Files.Mappings); err != nil {
			return withoutConfig(common, err)
		}
	}
	var hooks *hook.Index
	var hooksFile []byte
	var cluster *rest.Config
	if st.dispatcher {
		if err := requireSecrets(cfg); err != nil {
			return err
		}
		if cluster, err = hooksFromCluster(ctx, cfg, logger); err != nil {
			return err
		}
		// From the cluster, hooks stays nil: the dispatcher pulls nothing until the Hook
		// informer has synced and handed it every Hook. With both, the file is still read
		// here, so that a broken file fails at start.
		if cluster == nil || cfg.Kubernetes.Hooks == "both" {
			if hooks, hooksFile, err = loadHooks(cfg.Files.Hooks); err == nil {
				warnHooks(logger, hooks)
			}
			if err != nil {
				return withoutConfig(common, err)
			}
		}
	}

	var ns *server.Server
	var internal []nats.Option
	if st.embedded && cfg.NATS.URL == "" {
		if ns, internal, err = streams.StartEmbedded(cfg.NATS.Embedded, cfg.Streams.Subjects()); err != nil {
			return err
		}
		defer func() {
			ns.Shutdown()
			ns.WaitForShutdown()
		}()
		logger.Info("embedded nats started", zap.String("store_dir", cfg.NATS.Embedded.StoreDir),
			zap.String("listen", cfg.NATS.Embedded.Listen))
	}
	nc, js, err := openJetStream(cfg, ns, internal...)
	if err != nil {
		return err
	}
	// Closed last, after every actor has stopped, so draining stages can still ack.
	defer nc.Close()
	if err := applyWithRetry(ctx, js, cfg.Streams, logger); err != nil {
		return err
	}

	reg.MustRegister(streams.NewCollector(js, cfg.Streams, st.streamStages()...))
	probes.Set("nats", func(context.Context) error {
		if s := nc.Status(); s != nats.CONNECTED {
			return fmt.Errorf("nats connection %s", s)
		}
		return nil
	})
	probes.Set("streams", func(ctx context.Context) error {
		for _, name := range []string{cfg.Streams.Raw.Name, cfg.Streams.Events.Name, cfg.Streams.DLQ.Name} {
			if _, err := js.Stream(ctx, name); err != nil {
				return fmt.Errorf("stream %s: %w", name, err)
			}
		}
		return nil
	})

	var g run.Group
	addActor := func(name string, fn func(ctx context.Context) error) {
		actx, cancel := context.WithCancel(ctx)
		g.Add(func() error {
			err := fn(actx)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		}, func(error) { cancel() })
	}
	if st.producers {
		sup.Metrics = producers.NewMetrics(reg)
		sup.Pub = producers.NewPublisher(js, cfg.Streams.Subjects(), sup.Metrics)
		addActor("publisher", sup.Pub.Run)
		// Unready while JetStream refuses events, so load balancers steer webhooks away.
		probes.Set("producer", sup.Pub.Ready)
		probes.Set("plugins", sup.Ready)
		addActor("plugins", sup.Run)
	}
	if st.mapper {
		mp := mapper.New(js, cfg.Streams, rules, reg, logger.Named("mapper"))
		addActor("mapper", mp.Run)
		addActor("mappings watcher", func(ctx context.Context) error {
			return mp.WatchRules(ctx, cfg.Files.Mappings, rulesFile, cfg.Files.ReloadInterval)
		})
	}
	if st.dispatcher {
		router := newRouter(cfg, logger)
		dcfg := cfg.Dispatcher.Config
		dcfg.ActiveEvents = cluster != nil // only Hook status reads them
		// The dispatcher's hooks come from its sources, merged: Hook resources first, then the
		// hooks file. It pulls nothing until every source has given its hooks, so with the
		// cluster it waits for the Hook informer's first list.
		d := dispatch.New(js, cfg.Streams, dcfg, nil, router, reg, logger.Named("dispatcher"))
		probes.Set("dispatcher", d.Ready)
		var order []string
		if cluster != nil {
			order = append(order, "cluster")
		}
		if hooks != nil {
			order = append(order, "file")
		}
		sources := dispatch.NewHookSources(d.SetHooks, logger.Named("hooks"), order...)
		if hooks != nil {
			if err := sources.Set("file", hookList(hooks)); err != nil {
				return err
			}
		}
		if cluster != nil {
			lease := cfg.Kubernetes.LeaseNamespace
			if lease == "" {
				lease = cmp.Or(os.Getenv("POD_NAMESPACE"), "default")
			}
			w, err := kubehooks.New(cluster, d, kubehooks.Config{
				StatusInterval: cfg.Kubernetes.StatusInterval, LeaseNamespace: lease, LeaseName: "khook-dispatcher",
				Sources: sources,
			}, logger.Named("hooks"))
			if err != nil {
				return err
			}
			probes.Set("hooks", w.Ready)
			addActor("hook watcher", w.Run)
		}
		if hooks != nil {
			addActor("hooks file watcher", func(ctx context.Context) error {
				return filewatch.Watch(ctx, cfg.Files.Hooks, hooksFile, cfg.Files.ReloadInterval, func(b []byte) {
					idx, err := parseHooks(b)
					if err == nil {
						err = sources.Set("file", hookList(idx))
					}
					if err != nil {
						logger.Error("hooks file rejected, keeping the active hooks", zap.String("file", cfg.Files.Hooks), zap.Error(err))
						return
					}
					warnHooks(logger, idx)
					logger.Info("hooks reloaded", zap.String("file", cfg.Files.Hooks), zap.Int("hooks", idx.Len()))
				})
			})
		}
		addActor("dispatcher", d.Run)
		if cfg.API.Enabled {
			srv := &api.Server{JS: js, Topo: cfg.Streams, Token: secret.New("", cfg.API.TokenFile), Hooks: d.Hooks,
				Logger: logger.Named("api"), Status: func(ctx context.Context) (*ops.Status, error) {
					return pipelineStatus(ctx, js, cfg, d.Hooks())
				}}
			apiServer := &telemetry.HTTPServer{Name: "api", Addr: cfg.API.Addr, Handler: srv.Handler(), Logger: logger}
			addActor("api server", apiServer.Run)
		}
		logger.Info("dispatcher started", zap.Int("hooks", d.Hooks().Len()), zap.String("default_target", cfg.Dispatcher.Target),
			zap.Int("routes", len(cfg.Dispatcher.Routes)))
	}
	var pluginMetrics []prometheus.Gatherer
	if sup != nil {
		pluginMetrics = append(pluginMetrics, sup.Gatherer())
	}
	for _, s := range []*telemetry.HTTPServer{
		{Name: "metrics", Addr: cfg.Server.MetricsAddr, Handler: telemetry.MetricsHandler(reg, pluginMetrics...), Logger: logger},
		{Name: "probes", Addr: cfg.Server.ProbesAddr, Handler: probes.Handler(), Logger: logger},
	} {
		addActor(s.Name+" server", s.Run)
	}
	g.Add(run.SignalHandler(ctx, os.Interrupt, syscall.SIGTERM))

	err = g.Run()
	if errors.Is(err, run.ErrSignal) {
		logger.Info("stopped", zap.String("reason", err.Error()))
		return nil
	}
	return err
}

// requireSecrets fails when a configured credential of the dispatcher resolves empty: the
// API would otherwise refuse every caller without saying why, and an agent would be sent an
// empty token.
func requireSecrets(cfg config.Config) error {
	var errs []error
	if cfg.API.Enabled {
		errs = append(errs, secret.New("", cfg.API.TokenFile).Require("api.token_file"))
	}
	if cfg.Kagent.TokenFile != "" {
		errs = append(errs, secret.New("", cfg.Kagent.TokenFile).Require("kagent.token_file"))
	}
	for i, r := range cfg.Dispatcher.Routes {
		if r.TokenFile != "" {
			errs = append(errs, secret.New("", r.TokenFile).Require(fmt.Sprintf("dispatcher.routes[%d].token_file", i)))
		}
	}
	return errors.Join(errs...)
}

// newRouter builds the default target and one target per route of khook.yaml.
func newRouter(cfg config.Config, logger *zap.Logger) *dispatch.Router {
	kagent := func(url, protocol, tokenFile string) dispatch.Target {
		if url == "" {
			url = cfg.Kagent.URL
		}
		if protocol == "" {
			protocol = cfg.Kagent.Protocol
		}
		if tokenFile == "" {
			tokenFile = cfg.Kagent.TokenFile
		}
		return dispatch.NewKagent(dispatch.KagentConfig{
			URL: url, Protocol: protocol, UserID: cfg.Kagent.UserID, Timeout: cfg.Kagent.Timeout, TokenFile: tokenFile,
		})
	}
	logTarget := dispatch.LogTarget{Logger: logger.Named("agent")}
	var def dispatch.Target = kagent("", "", "")
	if cfg.Dispatcher.Target == "log" {
		def = logTarget
	}
	var routes []dispatch.Route
	for _, r := range cfg.Dispatcher.Routes {
		var t dispatch.Target
		switch r.Type {
		case "http":
			t = dispatch.NewHTTP(dispatch.HTTPConfig{URL: r.URL, Timeout: cfg.Kagent.Timeout, TokenFile: r.TokenFile})
		case "log":
			t = logTarget
		default:
			t = kagent(r.URL, r.Protocol, r.TokenFile)
		}
		routes = append(routes, dispatch.Route{Agent: r.Agent, Target: t})
	}
	return dispatch.NewRouter(def, routes...)
}

func loadRules(path string) (*mapping.Rules, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("event mappings: %w", err)
	}
	rules, err := mapping.Parse(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return rules, b, nil
}

func loadHooks(path string) (*hook.Index, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("hooks: %w", err)
	}
	idx, err := parseHooks(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return idx, b, nil
}

// hookList is the valid hooks of an index, as values.
func hookList(idx *hook.Index) []hook.Hook {
	var out []hook.Hook
	for _, h := range idx.Hooks() {
		out = append(out, *h)
	}
	return out
}

// warnHooks logs what a hooks file's hooks load with but their authors may not mean; a Hook
// resource gets the same as a Warning Event on it instead.
func warnHooks(logger *zap.Logger, idx *hook.Index) {
	for _, h := range idx.Hooks() {
		for _, w := range h.Warnings() {
			logger.Warn("hook loaded with a warning", zap.String("hook", h.Key()), zap.String("warning", w))
		}
	}
}

func parseHooks(b []byte) (*hook.Index, error) {
	hooks, err := hook.Parse(b)
	if err != nil {
		return nil, err
	}
	return hook.NewIndex(hooks)
}

// hooksFromCluster decides where the dispatcher's Hooks come from (kubernetes.hooks) and
// returns the cluster's config when they come from the cluster, else nil.
//
// Only a definite answer makes "auto" fall back to the hooks file: no cluster configuration,
// or an API server that says it does not serve the Hook CRD. An API server that cannot be
// reached is waited for (until ctx ends), because falling back to a file that holds none of
// the cluster's Hooks would acknowledge every event as unmatched.
func hooksFromCluster(ctx context.Context, cfg config.Config, logger *zap.Logger) (*rest.Config, error) {
	if cfg.Kubernetes.Hooks == "file" {
		return nil, nil
	}
	mode := cfg.Kubernetes.Hooks
	rc, err := kube.Config(cfg.Kubernetes.Kubeconfig)
	for err == nil {
		if err = hookCRDServed(rc); err == nil || errors.Is(err, errCRDNotServed) {
			break
		}
		logger.Warn("kubernetes API server unreachable, waiting for it before consuming events", zap.String("server", rc.Host), zap.Error(err))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Second):
		}
		err = nil
	}
	switch {
	case err == nil:
		logger.Info("hooks come from Hook resources in the cluster", zap.String("server", rc.Host), zap.Bool("and_hooks_file", mode == "both"))
		return rc, nil
	case mode == "cluster" || mode == "both":
		return nil, fmt.Errorf("kubernetes.hooks is %s: %w", mode, err)
	default:
		logger.Info("hooks come from the hooks file", zap.String("file", cfg.Files.Hooks), zap.String("no_cluster", err.Error()))
		return nil, nil
	}
}

// errCRDNotServed is the API server's definite answer that it has no Hook resource.
var errCRDNotServed = errors.New("the Hook CRD is not served")

// hookCRDServed checks that the API server serves kagent.dev/v1alpha2 hooks. It wraps
// errCRDNotServed when the server answered that it does not.
func hookCRDServed(rc *rest.Config) error {
	rc = rest.CopyConfig(rc)
	rc.Timeout = 5 * time.Second
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	list, err := cs.Discovery().ServerResourcesForGroupVersion(kubehooks.GVR.GroupVersion().String())
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%w (%s)", errCRDNotServed, kubehooks.GVR.GroupVersion())
	}
	if err != nil {
		return fmt.Errorf("discovering %s: %w", kubehooks.GVR.GroupVersion(), err)
	}
	for _, r := range list.APIResources {
		if r.Name == kubehooks.GVR.Resource {
			return nil
		}
	}
	return fmt.Errorf("%w (%s)", errCRDNotServed, kubehooks.GVR.GroupVersion())
}

// applyWithRetry applies the stream topology, retrying while the server is still starting
// (a JetStream cluster electing its meta leader answers with errors for a few seconds).
func applyWithRetry(ctx context.Context, js jetstream.JetStream, topo streams.Config, logger *zap.Logger) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		changes, err := streams.Apply(actx, js, topo)
		cancel()
		if err == nil {
			for _, c := range changes {
				if c.Action != streams.Unchanged {
					logger.Info("topology applied", zap.String("kind", c.Kind), zap.String("name", c.Name), zap.String("action", string(c.Action)))
				}
			}
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("streams apply: %w", err)
		}
		logger.Warn("streams apply failed, retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// openJetStream connects to the embedded server ns when given, else to nats.url (default
// nats://127.0.0.1:4222), and returns the connection and its JetStream context.
func openJetStream(cfg config.Config, ns *server.Server, extra ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	if cfg.NATS.URL == "" {
		cfg.NATS.URL = localNATSURL(cfg)
	}
	nc, err := connectTo(cfg, ns, extra...)
	if err != nil {
		return nil, nil, err
	}
	// An asynchronous publish whose acknowledgement is lost (its stream's leader died) would
	// otherwise never complete, and the mapper settles its acknowledgements in order: one
	// lost ack would hold every later raw event. With a timeout the publish fails, the raw
	// event is redelivered, and its message id makes the republish a no-op if it was stored.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(asyncPublishTimeout))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// localNATSURL is where a command finds NATS when nats.url is empty: the embedded server's
// listen address when the configuration gives one (what `khook run` with the same file
// serves), else the default local server.
func localNATSURL(cfg config.Config) string {
	listen := cfg.NATS.Embedded.Listen
	if listen == "" {
		return config.DefaultNATSURL
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return config.DefaultNATSURL
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "nats://" + net.JoinHostPort(host, port)
}

// asyncPublishTimeout bounds the wait for one asynchronous publish's acknowledgement; a
// healthy JetStream answers in milliseconds, and a new stream leader is elected in seconds.
const asyncPublishTimeout = 5 * time.Second

// connectTo connects to the embedded server ns in-process when given, else to nats.url.
// Reconnects never give up: a stage outlives NATS restarts.
func connectTo(cfg config.Config, ns *server.Server, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("khook"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.Timeout(cfg.NATS.ConnectTimeout),
		// Three unanswered pings and the client reconnects to another server: a server cut
		// off by a network partition is left within three ping intervals.
		nats.PingInterval(cfg.NATS.PingInterval),
		nats.MaxPingsOutstanding(3),
	}
	if ns != nil {
		opts = append(opts, nats.InProcessServer(ns))
	}
	opts = append(opts, extra...)
	if cfg.NATS.CredentialsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.NATS.CredentialsFile))
	}
	if t := cfg.NATS.TLS; t.CAFile != "" || t.CertFile != "" {
		tc, err := tlsConfig(t)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Secure(tc))
	}
	url := cfg.NATS.URL
	deadline := time.Now().Add(cfg.NATS.ConnectTimeout)
	for {
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			return nc, nil
		}
		// Wrong credentials will not become right by waiting.
		if errors.Is(err, nats.ErrAuthorization) || strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
			return nil, fmt.Errorf("nats connect %s: %w", url, err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("nats connect %s: %w", url, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tlsConfig(t config.TLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("nats.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("nats.tls.ca_file: no certificates in %s", t.CAFile)
		}
		tc.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats.tls: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
