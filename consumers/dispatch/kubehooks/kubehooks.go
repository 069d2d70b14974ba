// Package kubehooks connects the dispatcher to Hook resources (kagent.dev/v1alpha2) in a
// cluster: it watches Hooks cluster-wide and gives the dispatcher every valid one, writes
// each Hook's status.activeEvents from the shared dispatch state, and records Kubernetes
// Events on Hooks (EventFiring, AgentCallSuccess, AgentCallFailure).
//
// Status is written with a merge patch of the status subresource, only when it changed, at
// most once per interval, and by one dispatcher replica at a time: the holder of a Lease.
package kubehooks

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/khook/khook/consumers/dispatch"
	"github.com/khook/khook/hook"
	"github.com/khook/khook/mapping"
)

// GVR is the Hook resource.
var GVR = schema.GroupVersionResource{Group: "kagent.dev", Version: "v1alpha2", Resource: "hooks"}

// Config configures the watcher.
type Config struct {
	// StatusInterval is how often status is reconciled (and so the most it is written).
	StatusInterval time.Duration
	// LeaseNamespace and LeaseName name the Lease that elects the status writer.
	LeaseNamespace, LeaseName string
	// Identity is this replica's name in the Lease; the hostname (pod name) by default.
	Identity string
	// Sources receives the cluster's hooks as the source "cluster", to be merged with the
	// others (a hooks file); by default the cluster is the dispatcher's only source.
	Sources *dispatch.HookSources
}

// Watcher feeds a dispatcher from Hook resources.
type Watcher struct {
	cfg      Config
	dyn      dynamic.Interface
	cs       k8s.Interface
	d        *dispatch.Dispatcher
	logger   *zap.Logger
	informer cache.SharedIndexInformer
	// recorder is set once Run starts recording; the dispatcher's observer may be called
	// from its workers at any time, so it is read atomically.
	recorder atomic.Pointer[events.EventRecorder]
	leading  atomic.Bool
	synced   atomic.Bool

	mu      sync.Mutex
	objects map[string]*unstructured.Unstructured // namespace/name → Hook
	invalid map[string]string                     // namespace/name → resourceVersion already reported
	warned  map[string]string                     // the same, for Hooks loaded with warnings
}

// New returns a watcher for the API server of rc. It starts nothing.
func New(rc *rest.Config, d *dispatch.Dispatcher, cfg Config, logger *zap.Logger) (*Watcher, error) {
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	cs, err := k8s.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	if cfg.Identity == "" {
		cfg.Identity, _ = os.Hostname()
	}
	if cfg.Sources == nil {
		cfg.Sources = dispatch.NewHookSources(d.SetHooks, logger, "cluster")
	}
	w := &Watcher{cfg: cfg, dyn: dyn, cs: cs, d: d, logger: logger,
		objects: map[string]*unstructured.Unstructured{}, invalid: map[string]string{}, warned: map[string]string{}}
	// Set here, before any actor runs, not from Run while the dispatcher may be working.
	d.Observer = observer{w}
	return w, nil
}

// Ready fails until the first list of Hooks has been given to the dispatcher.
func (w *Watcher) Ready(context.Context) error {
	if !w.synced.Load() {
		return fmt.Errorf("hooks not listed from the cluster yet")
	}
	return nil
}

// Run watches Hooks, elects the status writer and reconciles status until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	broadcaster := events.NewEventBroadcasterAdapter(w.cs)
	broadcaster.StartRecordingToSink(ctx.Done())
	defer broadcaster.Shutdown()
	var recorder events.EventRecorder = broadcaster.NewRecorder("khook-dispatcher")
	w.recorder.Store(&recorder)

	factory := dynamicinformer.NewDynamicSharedInformerFactory(w.dyn, 0)
	w.informer = factory.ForResource(GVR).Informer()
	changed := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := w.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: poke, UpdateFunc: func(_, o any) { poke(o) }, DeleteFunc: poke,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), w.informer.HasSynced) {
		return ctx.Err()
	}
	w.rebuild()
	w.synced.Store(true)

	var wg sync.WaitGroup
	wg.Go(func() { w.elect(ctx) })
	tick := time.NewTicker(w.cfg.StatusInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-changed:
			w.rebuild()
		case <-tick.C:
			if w.leading.Load() {
				w.reconcileStatus(ctx)
			}
		}
	}
}

// rebuild gives the dispatcher every valid Hook in the cluster. An invalid Hook is skipped,
// logged and reported with a Warning Event on it, once per version; the others keep working.
func (w *Watcher) rebuild() {
	var hooks []hook.Hook
	objects := map[string]*unstructured.Unstructured{}
	for _, o := range w.informer.GetStore().List() {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		h, err := hookOf(u)
		key := u.GetNamespace() + "/" + u.GetName()
		if err != nil {
			w.mu.Lock()
			report := w.invalid[key] != u.GetResourceVersion()
			w.invalid[key] = u.GetResourceVersion()
			w.mu.Unlock()
			if report {
				w.logger.Error("invalid Hook skipped", zap.String("hook", key), zap.Error(err))
				(*w.recorder.Load()).Eventf(u, nil, corev1.EventTypeWarning, "InvalidHook", "Validate", "%v", err)
			}
			continue
		}
		if warnings := h.Warnings(); len(warnings) > 0 {
			w.mu.Lock()
			report := w.warned[key] != u.GetResourceVersion()
			w.warned[key] = u.GetResourceVersion()
			w.mu.Unlock()
			if report {
				w.logger.Warn("Hook loaded with warnings", zap.String("hook", key), zap.Strings("warnings", warnings))
				(*w.recorder.Load()).Eventf(u, nil, corev1.EventTypeWarning, "UnknownPlaceholder", "Validate", "%s", strings.Join(warnings, "; "))
			}
		}
		hooks = append(hooks, h)
		objects[key] = u
	}
	w.mu.Lock()
	w.objects = objects
	w.mu.Unlock()
	if err := w.cfg.Sources.Set("cluster", hooks); err != nil { // every hook was validated above, so this is a bug
		w.logger.Error("hook index", zap.Error(err))
		return
	}
	w.logger.Info("hooks loaded from the cluster", zap.Int("hooks", len(hooks)))
}

// hookOf converts a Hook resource and validates it; its status is not the dispatcher's input.
func hookOf(u *unstructured.Unstructured) (hook.Hook, error) {
	var h hook.Hook
	b, err := json.Marshal(u.Object)
	if err == nil {
		err = json.Unmarshal(b, &h)
	}
	if err == nil {
		err = h.Validate()
	}
	h.Status = nil
	return h, err
}

// List reads every valid Hook in the cluster once, for commands that need the hooks but do
// not dispatch (replay --dry-run, status). Invalid Hooks are skipped, as the dispatcher does.
func List(ctx context.Context, rc *rest.Config) (*hook.Index, error) {
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	list, err := dyn.Resource(GVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing Hooks: %w", err)
	}
	var hooks []hook.Hook
	for i := range list.Items {
		if h, err := hookOf(&list.Items[i]); err == nil {
			hooks = append(hooks, h)
		}
	}
	return hook.NewIndex(hooks)
}

func (w *Watcher) object(key string) *unstructured.Unstructured {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.objects[key]
}

// elect runs Lease leader election until ctx ends; the leader writes status.
func (w *Watcher) elect(ctx context.Context) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: w.cfg.LeaseNamespace, Name: w.cfg.LeaseName},
		Client:     w.cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: w.cfg.Identity},
	}
	for ctx.Err() == nil {
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   15 * time.Second,
			RenewDeadline:   10 * time.Second,
			RetryPeriod:     2 * time.Second,
			ReleaseOnCancel: true,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) {
					w.logger.Info("writing Hook status (leader)", zap.String("identity", w.cfg.Identity))
					w.leading.Store(true)
				},
				OnStoppedLeading: func() { w.leading.Store(false) },
			},
		})
	}
}

// activeEvent is one entry of status.activeEvents.
type activeEvent struct {
	Cluster      string      `json:"cluster,omitempty"`
	EventType    string      `json:"eventType"`
	ResourceName string      `json:"resourceName"`
	FirstSeen    metav1.Time `json:"firstSeen"`
	LastSeen     metav1.Time `json:"lastSeen"`
	Status       string      `json:"status"`
}

// maxStatusEvents bounds a Hook's status.activeEvents.
const maxStatusEvents = 100

// reconcileStatus patches the status of every Hook whose active events changed.
func (w *Watcher) reconcileStatus(ctx context.Context) {
	state := w.d.State()
	if state == nil {
		return
	}
	w.mu.Lock()
	objects := make(map[string]*unstructured.Unstructured, len(w.objects))
	for k, v := range w.objects {
		objects[k] = v
	}
	w.mu.Unlock()
	now := time.Now()
	for key, u := range objects {
		active, err := state.ActiveEvents(ctx, key)
		if err != nil {
			w.logger.Warn("active events", zap.String("hook", key), zap.Error(err))
			continue
		}
		want := make([]activeEvent, 0, len(active))
		for _, a := range active {
			want = append(want, activeEvent{Cluster: a.Cluster, EventType: a.EventType, ResourceName: a.ResourceName,
				FirstSeen: metav1.NewTime(a.FirstSeen.Truncate(time.Second)), LastSeen: metav1.NewTime(a.LastSeen.Truncate(time.Second)),
				Status: a.Status(now)})
		}
		if len(want) > maxStatusEvents {
			// A Hook that matches thousands of resources would write a status past the API
			// server's request limit (etcd refuses 2 MiB): it lists the firing ones first,
			// the most recent first, up to the limit.
			slices.SortFunc(want, func(a, b activeEvent) int {
				if (a.Status == "firing") != (b.Status == "firing") {
					if a.Status == "firing" {
						return -1
					}
					return 1
				}
				return b.LastSeen.Compare(a.LastSeen.Time)
			})
			want = want[:maxStatusEvents]
		}
		slices.SortFunc(want, func(a, b activeEvent) int {
			if a.Cluster != b.Cluster {
				return compare(a.Cluster, b.Cluster)
			}
			if a.EventType != b.EventType {
				return compare(a.EventType, b.EventType)
			}
			return compare(a.ResourceName, b.ResourceName)
		})
		if sameStatus(u, want) {
			continue
		}
		patch, _ := json.Marshal(map[string]any{"status": map[string]any{"activeEvents": want, "lastUpdated": metav1.NewTime(now)}})
		_, err = w.dyn.Resource(GVR).Namespace(u.GetNamespace()).Patch(ctx, u.GetName(), types.MergePatchType, patch,
			metav1.PatchOptions{FieldManager: "khook"}, "status")
		if err != nil {
			w.logger.Warn("status patch", zap.String("hook", key), zap.Error(err))
		}
	}
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// sameStatus reports whether the Hook's status already lists want.
func sameStatus(u *unstructured.Unstructured, want []activeEvent) bool {
	have, _, _ := unstructured.NestedSlice(u.Object, "status", "activeEvents")
	b1, _ := json.Marshal(have)
	var haveTyped []activeEvent
	_ = json.Unmarshal(b1, &haveTyped)
	if haveTyped == nil {
		haveTyped = []activeEvent{}
	}
	b2, _ := json.Marshal(haveTyped)
	b3, _ := json.Marshal(want)
	return string(b2) == string(b3)
}

// observer records the dispatcher's news as Kubernetes Events on the Hook.
type observer struct{ w *Watcher }

func (o observer) event(t hook.Task, eventtype, reason, note string, args ...any) {
	u := o.w.object(t.Hook)
	rec := o.w.recorder.Load()
	if u == nil || rec == nil {
		return
	}
	var obj runtime.Object = u
	(*rec).Eventf(obj, nil, eventtype, reason, "Dispatch", note, args...)
}

func (o observer) Firing(t hook.Task) {
	o.event(t, corev1.EventTypeNormal, "EventFiring", "%s on %s/%s: calling agent %s/%s",
		t.Event.Type, t.Event.Namespace, t.Event.Resource.Name, t.Agent.Namespace, t.Agent.Name)
}

func (o observer) Delivered(t hook.Task, res dispatch.Result) {
	o.event(t, corev1.EventTypeNormal, "AgentCallSuccess", "agent %s/%s accepted the %s task for %s (state %s)",
		t.Agent.Namespace, t.Agent.Name, t.Event.Type, t.Event.Resource.Name, res.State)
}

func (o observer) Failed(t hook.Task, err error, final bool) {
	what := "will retry"
	if final {
		what = "dead-lettered"
	}
	ev := t.Event
	if ev == nil {
		// A waiting group whose Hook entry was deleted before any event was listed.
		ev = &mapping.Event{}
	}
	o.event(t, corev1.EventTypeWarning, "AgentCallFailure", "agent %s/%s, %s task for %s (%s): %v",
		t.Agent.Namespace, t.Agent.Name, ev.Type, ev.Resource.Name, what, err)
}
