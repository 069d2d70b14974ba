package kubernetes

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8s "k8s.io/client-go/kubernetes"
)

// Owner is the workload that owns an event's resource, through controller ownerReferences:
// a Pod's Deployment (through its ReplicaSet), StatefulSet, DaemonSet, or CronJob (through
// its Job). It lets a hook group a Deployment's pods into one task (groupBy: [owner]).
type Owner struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// Owner resolution limits: the cache is bounded so that a cluster with many short-lived
// pods cannot grow the producer's memory, and each lookup is bounded so that a slow API
// server delays events by at most a few seconds.
const (
	ownerCacheSize = 4096
	ownerTTL       = 10 * time.Minute
	// missTTL is shorter: a Pod the producer could not read yet (the Event raced its
	// creation) may well be readable soon.
	missTTL       = 30 * time.Second
	ownerLookup   = 2 * time.Second
	maxOwnerDepth = 4
)

type ownerKey struct{ namespace, kind, name string }

type ownerEntry struct {
	owner   Owner
	expires time.Time
}

// owners resolves and caches the owning workload of objects. Reads need get on pods,
// replicasets and jobs only (the chart's producer Role); a lookup the API server refuses is
// logged once and leaves the event without an owner.
type owners struct {
	cs     k8s.Interface
	logger *zap.Logger
	now    func() time.Time

	mu      sync.Mutex
	cache   map[ownerKey]ownerEntry
	order   []ownerKey // insertion order, for eviction
	refused sync.Once
}

func newOwners(cs k8s.Interface, logger *zap.Logger) *owners {
	return &owners{cs: cs, logger: logger, now: time.Now, cache: map[ownerKey]ownerEntry{}}
}

// resolve returns the top-most controller of the object, or false when it has none (or
// could not be read).
func (o *owners) resolve(ctx context.Context, namespace, kind, name string) (Owner, bool) {
	if namespace == "" || name == "" {
		return Owner{}, false
	}
	k := ownerKey{namespace, kind, name}
	if e, ok := o.get(k); ok {
		return e, e.Name != ""
	}
	top := Owner{}
	cur := Owner{Kind: kind, Name: name}
	for range maxOwnerDepth {
		next, ok := o.controllerOf(ctx, namespace, cur)
		if !ok {
			break
		}
		top, cur = next, next
	}
	ttl := ownerTTL
	if top.Name == "" {
		ttl = missTTL
	}
	o.put(k, top, ttl)
	return top, top.Name != ""
}

// controllerOf reads obj and returns its controller, for the kinds whose controller khook
// follows; false for any other kind, or when obj has no controller.
func (o *owners) controllerOf(ctx context.Context, namespace string, obj Owner) (Owner, bool) {
	ctx, cancel := context.WithTimeout(ctx, ownerLookup)
	defer cancel()
	var refs []metav1.OwnerReference
	var err error
	opts := metav1.GetOptions{}
	switch obj.Kind {
	case "Pod":
		p, e := o.cs.CoreV1().Pods(namespace).Get(ctx, obj.Name, opts)
		if err = e; err == nil {
			refs = p.OwnerReferences
		}
	case "ReplicaSet":
		rs, e := o.cs.AppsV1().ReplicaSets(namespace).Get(ctx, obj.Name, opts)
		if err = e; err == nil {
			refs = rs.OwnerReferences
		}
	case "Job":
		j, e := o.cs.BatchV1().Jobs(namespace).Get(ctx, obj.Name, opts)
		if err = e; err == nil {
			refs = j.OwnerReferences
		}
	default:
		return Owner{}, false
	}
	if err != nil {
		if apierrors.IsForbidden(err) {
			o.refused.Do(func() {
				o.logger.Warn("cannot read owners (the producer needs get on pods, replicasets and jobs); events carry no owner",
					zap.Error(err))
			})
		}
		return Owner{}, false
	}
	for _, ref := range refs {
		if ref.Controller != nil && *ref.Controller {
			return Owner{Kind: ref.Kind, Name: ref.Name}, true
		}
	}
	return Owner{}, false
}

func (o *owners) get(k ownerKey) (Owner, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	e, ok := o.cache[k]
	if !ok || o.now().After(e.expires) {
		return Owner{}, false
	}
	return e.owner, true
}

func (o *owners) put(k ownerKey, owner Owner, ttl time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.cache[k]; !ok {
		o.order = append(o.order, k)
	}
	o.cache[k] = ownerEntry{owner: owner, expires: o.now().Add(ttl)}
	for len(o.cache) > ownerCacheSize {
		oldest := o.order[0]
		o.order = o.order[1:]
		delete(o.cache, oldest)
	}
}

// size is the number of cached objects.
func (o *owners) size() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.cache)
}
