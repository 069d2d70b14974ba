package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/khook/khook/consumers/dispatch"
	"github.com/khook/khook/consumers/dispatch/kubehooks"
	"github.com/khook/khook/consumers/dispatch/state"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/internal/kube"
	"github.com/khook/khook/internal/secret"
	"github.com/khook/khook/internal/telemetry"
	"github.com/khook/khook/ops"
	"github.com/khook/khook/ops/api"
)

// dispatcherStage delivers normalized events to agents, with hooks from the cluster's Hook
// resources, the hooks file, or both.
type dispatcherStage struct {
	cluster *rest.Config // nil: no Hooks from the cluster
	hooks   *hook.Index  // nil: no hooks file
	file    []byte
}

// loadDispatcher checks the dispatcher's secrets, decides where its hooks come from and
// reads the hooks file when it is one of them.
func loadDispatcher(ctx context.Context, cfg config.Config, logger *zap.Logger) (*dispatcherStage, error) {
	if err := requireSecrets(cfg); err != nil {
		return nil, err
	}
	cluster, err := hooksFromCluster(ctx, cfg, logger)
	if err != nil {
		return nil, err
	}
	ds := &dispatcherStage{cluster: cluster}
	// From the cluster, hooks stays nil: the dispatcher pulls nothing until the Hook
	// informer has synced and handed it every Hook. With both, the file is still read here,
	// so that a broken file fails at start.
	if cluster == nil || cfg.Kubernetes.Hooks == "both" {
		if ds.hooks, ds.file, err = LoadHooks(cfg.Files.Hooks); err != nil {
			return nil, err
		}
		warnHooks(logger, ds.hooks)
	}
	return ds, nil
}

// add opens the shared dispatch state and adds the dispatcher, the Hook watcher when hooks
// come from the cluster, the hooks file's watcher, and the events API when it is enabled.
func (ds *dispatcherStage) add(ctx context.Context, g *group, js jetstream.JetStream, cfg config.Config, reg prometheus.Registerer,
	probes *telemetry.Probes, logger *zap.Logger) error {
	st, err := state.Open(ctx, js, cfg.Streams)
	if err != nil {
		return err
	}
	dcfg := cfg.Dispatcher.Config
	dcfg.ActiveEvents = ds.cluster != nil // only Hook status reads them
	// The dispatcher's hooks come from its sources, merged: Hook resources first, then the
	// hooks file. It pulls nothing until every source has given its hooks, so with the
	// cluster it waits for the Hook informer's first list.
	d := dispatch.New(js, cfg.Streams, dcfg, st, nil, newRouter(cfg, logger), reg, logger.Named("dispatcher"))
	probes.Set("dispatcher", d.Ready)
	var order []string
	if ds.cluster != nil {
		order = append(order, "cluster")
	}
	if ds.hooks != nil {
		order = append(order, "file")
	}
	sources := dispatch.NewHookSources(d.SetHooks, logger.Named("hooks"), order...)
	if ds.hooks != nil {
		if err := sources.Set("file", hookList(ds.hooks)); err != nil {
			return err
		}
		g.follow("hooks", cfg.Files.Hooks, ds.file, cfg.Files.ReloadInterval, func(b []byte) error {
			idx, err := ParseHooks(b)
			if err != nil {
				return err
			}
			warnHooks(logger, idx)
			return sources.Set("file", hookList(idx))
		})
	}
	if ds.cluster != nil {
		lease := cmp.Or(cfg.Kubernetes.LeaseNamespace, os.Getenv("POD_NAMESPACE"), "default")
		// The watcher is told of the dispatcher's tasks (it records Events on the Hooks); it
		// is built here, before any actor runs.
		w, err := kubehooks.New(ds.cluster, d, kubehooks.Config{
			StatusInterval: cfg.Kubernetes.StatusInterval, LeaseNamespace: lease, LeaseName: "khook-dispatcher",
			Sources: sources,
		}, logger.Named("hooks"))
		if err != nil {
			return err
		}
		probes.Set("hooks", w.Ready)
		g.add("hook watcher", w.Run)
	}
	g.add("dispatcher", d.Run)
	if cfg.API.Enabled {
		srv := &api.Server{JS: js, Topo: cfg.Streams, Token: secret.New("", cfg.API.TokenFile), Hooks: d.Hooks,
			Logger: logger.Named("api"), Status: func(ctx context.Context, window time.Duration) (*ops.Status, error) {
				return Status(ctx, js, cfg, d.Hooks(), window)
			}}
		apiServer := &telemetry.HTTPServer{Name: "api", Addr: cfg.API.Addr, Handler: srv.Handler(), Logger: logger,
			SetBy: "api.addr or KHOOK_API_ADDR"}
		g.add("api server", apiServer.Run)
	}
	logger.Info("dispatcher started", zap.Int("hooks", d.Hooks().Len()), zap.String("default_target", cfg.Dispatcher.Target),
		zap.Int("routes", len(cfg.Dispatcher.Routes)))
	return nil
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
		return dispatch.NewKagent(dispatch.KagentConfig{
			URL: cmp.Or(url, cfg.Kagent.URL), Protocol: cmp.Or(protocol, cfg.Kagent.Protocol), UserID: cfg.Kagent.UserID,
			Timeout: cfg.Kagent.Timeout, TokenFile: cmp.Or(tokenFile, cfg.Kagent.TokenFile),
		})
	}
	logTarget := dispatch.LogTarget{Logger: logger.Named("agent")}
	def := kagent("", "", "")
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

// LoadHooks reads and indexes a hooks file, returning its content too.
func LoadHooks(path string) (*hook.Index, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("hooks: %w", err)
	}
	idx, err := ParseHooks(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return idx, b, nil
}

// ParseHooks parses and indexes hooks.yaml content.
func ParseHooks(b []byte) (*hook.Index, error) {
	hooks, err := hook.Parse(b)
	if err != nil {
		return nil, err
	}
	return hook.NewIndex(hooks)
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

// ActiveHooks are the hooks a dispatcher with cfg would use: the cluster's Hook resources
// or the hooks file, as kubernetes.hooks decides. It answers within 15 seconds.
func ActiveHooks(ctx context.Context, cfg config.Config) (*hook.Index, error) {
	// A command answers within a bound; only the dispatcher waits for an API server.
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	rc, err := hooksFromCluster(wctx, cfg, zap.NewNop())
	if err != nil {
		return nil, err
	}
	if rc != nil {
		return kubehooks.List(ctx, rc)
	}
	idx, _, err := LoadHooks(cfg.Files.Hooks)
	return idx, err
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
