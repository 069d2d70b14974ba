// Package kubernetes is the Kubernetes producer plugin: it watches events.k8s.io/v1 Events
// with an informer and emits the ones khook classifies (pod-restart, pod-pending, oom-kill,
// probe-failed, node-not-ready), as kagent's khook did.
//
// Event ids are the Event's UID and occurrence count, so a relist, a resync, a restart or a
// second replica publishes nothing new: two replicas running at once is a supported setup.
// The informer relists and rewatches by itself after watch expiry and API server restarts.
package kubernetes

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/khook/khook/internal/kube"
	"github.com/khook/khook/producers"
)

// Name is the plugin's name in plugins.yaml and the source of its events.
const Name = "kubernetes"

// Types are the event types the plugin emits without extra rules.
var Types = []string{PodRestart, PodPending, OOMKill, ProbeFailed, NodeNotReady}

// Config is the plugin's `config` in plugins.yaml, with the deployment guide's keys.
type Config struct {
	// Namespace is the guide's setting: one namespace, a comma-separated list, or empty for
	// all namespaces.
	Namespace string `yaml:"namespace"`
	// Kubeconfig names a kubeconfig file; empty means in-cluster, else $KUBECONFIG.
	Kubeconfig string `yaml:"kubeconfig"`
	// MaxEventAge drops events last seen longer ago (khook's 15 minutes).
	MaxEventAge time.Duration `yaml:"maxEventAge"`
	// Rules add classifications, tried before khook's table.
	Rules []Rule `yaml:"rules"`
}

// Kubernetes is the plugin.
type Kubernetes struct {
	cfg        Config
	namespaces []string
	rest       *rest.Config
	logger     *zap.Logger
	now        func() time.Time
	counts     *prometheus.CounterVec
}

// FromSpec builds the plugin from its plugins.yaml entry. It reads the kubeconfig but does
// not contact the API server.
func FromSpec(spec producers.Spec, logger *zap.Logger, reg prometheus.Registerer) (producers.EventSource, error) {
	cfg := Config{MaxEventAge: 15 * time.Minute}
	if err := spec.DecodeConfig(&cfg); err != nil {
		return nil, err
	}
	rc, err := kube.Config(cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("plugins.%s.config: %w", Name, err)
	}
	return New(cfg, rc, logger, reg)
}

// New validates cfg and returns the plugin for the API server of rc. It starts nothing.
func New(cfg Config, rc *rest.Config, logger *zap.Logger, reg prometheus.Registerer) (*Kubernetes, error) {
	var errs []error
	if cfg.MaxEventAge <= 0 {
		errs = append(errs, fmt.Errorf("maxEventAge: must be positive, got %s", cfg.MaxEventAge))
	}
	for i := range cfg.Rules {
		if err := cfg.Rules[i].compile(); err != nil {
			errs = append(errs, fmt.Errorf("rules[%d].%w", i, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("plugins.%s.config: %w", Name, err)
	}
	k := &Kubernetes{cfg: cfg, rest: rc, logger: logger, now: time.Now,
		counts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "khook_kubernetes_events_total",
			Help: "Kubernetes Events seen by the producer, by result (emitted, normal, unclassified, stale).",
		}, []string{"result"}),
	}
	for _, r := range []string{"emitted", "normal", "unclassified", "stale"} {
		k.counts.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(k.counts)
	}
	for _, ns := range strings.Split(cfg.Namespace, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			k.namespaces = append(k.namespaces, ns)
		}
	}
	if len(k.namespaces) == 0 {
		k.namespaces = []string{metav1.NamespaceAll}
	}
	return k, nil
}

// Name implements producers.EventSource.
func (k *Kubernetes) Name() string { return Name }

// Version implements producers.EventSource.
func (k *Kubernetes) Version() string { return "1.0.0" }

// SupportedEventTypes implements producers.EventSource: khook's types and the extra rules'.
func (k *Kubernetes) SupportedEventTypes() []string {
	types := append([]string(nil), Types...)
	for _, r := range k.cfg.Rules {
		types = append(types, r.Type)
	}
	return types
}

// Run watches Events until ctx ends. Classified events are emitted in order by one worker;
// one JetStream could not store is retried until it is stored or too old to matter.
func (k *Kubernetes) Run(ctx context.Context, emit producers.Emit) error {
	cs, err := k8s.NewForConfig(k.rest)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	queue := make(chan pending, 1024)
	// Owner lookups get their own client: client-go's default rate limit (5 requests a
	// second) would let a burst of events about 50 new pods take ten seconds to resolve, past
	// any groupWait. Lookups are cached, so the higher limit is reached only in bursts.
	orc := rest.CopyConfig(k.rest)
	orc.QPS, orc.Burst = 50, 100
	ocs, err := k8s.NewForConfig(orc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	owners := newOwners(ocs, k.logger)
	var factories []informers.SharedInformerFactory
	for _, ns := range k.namespaces {
		f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns),
			// The informer keeps every Event it has seen; managed fields are most of their size.
			informers.WithTransform(func(obj any) (any, error) {
				if m, ok := obj.(metav1.Object); ok {
					m.SetManagedFields(nil)
				}
				return obj, nil
			}))
		inf := f.Events().V1().Events().Informer()
		handle := func(obj any) {
			if e, ok := obj.(*eventsv1.Event); ok {
				if ev, ok := k.toEvent(e); ok {
					select {
					case queue <- ev:
					case <-ctx.Done():
					}
				}
			}
		}
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    handle,
			UpdateFunc: func(_, obj any) { handle(obj) },
		}); err != nil {
			return err
		}
		factories = append(factories, f)
	}
	for _, f := range factories {
		f.Start(ctx.Done())
	}
	k.logger.Info("watching events", zap.Strings("namespaces", k.namespaces))

	for {
		select {
		case <-ctx.Done():
			for _, f := range factories {
				f.Shutdown()
			}
			return nil
		case p := <-queue:
			// The owner is looked up here, by the one emitting worker, rather than in the
			// informer's handler: a slow lookup delays emitting, never the watch.
			if o, ok := owners.resolve(ctx, cmp.Or(p.data.Regarding.Namespace, p.data.Namespace), p.data.Regarding.Kind, p.data.Regarding.Name); ok {
				p.data.Owner = &o
			}
			p.ev.Data, _ = json.Marshal(p.data)
			k.emit(ctx, emit, p.ev)
		}
	}
}

// emit stores one event, retrying while JetStream is unavailable and the event still
// matters.
func (k *Kubernetes) emit(ctx context.Context, emit producers.Emit, ev producers.Event) {
	delay := 100 * time.Millisecond
	for {
		_, err := emit(ctx, ev)
		if err == nil || errors.Is(err, producers.ErrInvalidEvent) || ctx.Err() != nil {
			return
		}
		if k.now().Sub(ev.Time) > k.cfg.MaxEventAge {
			k.logger.Warn("dropping an event JetStream never stored", zap.String("event_id", ev.ID), zap.Error(err))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
}

// eventData is the payload of a Kubernetes raw event: the well-known fields the mapper
// reads, and the Event's own fields.
type eventData struct {
	Namespace           string    `json:"namespace"`
	ResourceKind        string    `json:"resourceKind"`
	ResourceName        string    `json:"resourceName"`
	Reason              string    `json:"reason"`
	Message             string    `json:"message"`
	Type                string    `json:"type"`
	Count               int32     `json:"count"`
	Regarding           regarding `json:"regarding"`
	ReportingController string    `json:"reportingController,omitempty"`
	ReportingInstance   string    `json:"reportingInstance,omitempty"`
	Action              string    `json:"action,omitempty"`
	UID                 string    `json:"uid"`
	// Owner is the workload the resource belongs to, when it has one (see owners).
	Owner *Owner `json:"owner,omitempty"`
}

type regarding struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
	UID        string `json:"uid,omitempty"`
	FieldPath  string `json:"fieldPath,omitempty"`
}

// pending is a classified event waiting to be emitted; its data is marshalled once its
// owner is known.
type pending struct {
	ev   producers.Event
	data eventData
}

// toEvent classifies an Event and builds its raw event; false means drop it.
func (k *Kubernetes) toEvent(e *eventsv1.Event) (pending, bool) {
	typ := Classify(e, k.cfg.Rules)
	if typ == "" {
		if strings.EqualFold(e.Type, "Normal") {
			k.counts.WithLabelValues("normal").Inc()
		} else {
			k.counts.WithLabelValues("unclassified").Inc()
		}
		return pending{}, false
	}
	last := lastSeen(e)
	if k.now().Sub(last) > k.cfg.MaxEventAge {
		k.counts.WithLabelValues("stale").Inc()
		return pending{}, false
	}
	k.counts.WithLabelValues("emitted").Inc()
	count := int32(1)
	switch {
	case e.Series != nil && e.Series.Count > 0:
		count = e.Series.Count
	case e.DeprecatedCount > 0:
		count = e.DeprecatedCount
	}
	data := eventData{
		Namespace: e.Namespace, ResourceKind: e.Regarding.Kind, ResourceName: e.Regarding.Name,
		Reason: e.Reason, Message: e.Note, Type: e.Type, Count: count,
		Regarding: regarding{APIVersion: e.Regarding.APIVersion, Kind: e.Regarding.Kind, Namespace: e.Regarding.Namespace,
			Name: e.Regarding.Name, UID: string(e.Regarding.UID), FieldPath: e.Regarding.FieldPath},
		ReportingController: e.ReportingController, ReportingInstance: e.ReportingInstance, Action: e.Action, UID: string(e.UID),
	}
	return pending{ev: producers.Event{
		ID:      string(e.UID) + "-" + strconv.Itoa(int(count)),
		Type:    typ,
		Subject: e.Namespace + "/" + e.Regarding.Kind + "/" + e.Regarding.Name,
		Time:    last.UTC(),
	}, data: data}, true
}

// lastSeen is when an Event last happened: its series' last observation, else its event
// time, else its deprecated last timestamp, else its creation.
func lastSeen(e *eventsv1.Event) time.Time {
	switch {
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	case !e.DeprecatedLastTimestamp.IsZero():
		return e.DeprecatedLastTimestamp.Time
	}
	return e.CreationTimestamp.Time
}
