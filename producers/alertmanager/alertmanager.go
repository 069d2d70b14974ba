// Package alertmanager is the Alertmanager receiver plugin: point an Alertmanager webhook
// receiver at it, and each alert of each notification becomes one event, firing or resolved,
// so Prometheus alerts can wake agents.
//
// It is the webhook server (authentication, TLS, limits, metrics) with Alertmanager's
// payload as its only format.
package alertmanager

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/khook/khook/producers"
	"github.com/khook/khook/producers/webhook"
)

// Name is the plugin's name in plugins.yaml and the source of its events.
const Name = "alertmanager"

// Types are the event types: an alert starts firing, or resolves.
var Types = []string{"firing", "resolved"}

// DefaultMaxAlerts is how many alerts one notification may carry by default
// (maxBatchSize): Alertmanager sends a group's alerts together, and a group of a thousand
// alerts is already a storm.
const DefaultMaxAlerts = 1000

// FromSpec builds the receiver from its plugins.yaml entry. Its config is the webhook's
// (port default 9095, path default /alerts, maxBatchSize the most alerts one notification
// may carry, default 1000); the type settings do not apply.
func FromSpec(spec producers.Spec, logger *zap.Logger, reg prometheus.Registerer) (producers.EventSource, error) {
	cfg := webhook.DefaultConfig()
	cfg.Port, cfg.Path, cfg.MaxBatchSize = 9095, "/alerts", DefaultMaxAlerts
	if err := spec.DecodeConfig(&cfg); err != nil {
		return nil, err
	}
	return webhook.NewServer(Name, cfg, Decode, Types, logger, reg)
}

// notification is Alertmanager's webhook payload (version 4).
type notification struct {
	Version  string            `json:"version"`
	Receiver string            `json:"receiver"`
	Status   string            `json:"status"`
	Alerts   []alert           `json:"alerts"`
	Common   map[string]string `json:"commonLabels"`
}

type alert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

// Decode turns one Alertmanager notification into one event per alert. The event type is
// the alert's status; its id is the alert's fingerprint, status and start, so Alertmanager's
// repeated notifications of the same alert are stored once and a later episode is new. The
// namespace, resource, reason and message come from the labels `namespace`, `pod` (or
// `deployment`, `node`, ...), `alertname` and the `summary` (or `description`) annotation.
func Decode(e webhook.Endpoint, source string, header http.Header, _ url.Values, body []byte) ([]producers.Event, bool, error) {
	if ct := header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return nil, false, webhook.Refuse(http.StatusUnsupportedMediaType, "content type %q not supported: Alertmanager sends application/json", ct)
	}
	var n notification
	if err := json.Unmarshal(body, &n); err != nil {
		return nil, false, webhook.Refuse(http.StatusBadRequest, "not an Alertmanager notification: %v", err)
	}
	if len(n.Alerts) == 0 {
		return nil, false, webhook.Refuse(http.StatusBadRequest, "no alerts in the notification")
	}
	if e.MaxBatchSize > 0 && len(n.Alerts) > e.MaxBatchSize {
		// Refused whole, before any alert is stored, rather than stored in part. Alertmanager
		// does not retry a 4xx, so the notification is lost on its side: set max_alerts on
		// the webhook receiver at or below maxBatchSize (docs/plugins.md).
		return nil, false, webhook.Refuse(http.StatusRequestEntityTooLarge,
			"notification of %d alerts exceeds maxBatchSize %d", len(n.Alerts), e.MaxBatchSize)
	}
	events := make([]producers.Event, 0, len(n.Alerts))
	for i, a := range n.Alerts {
		if a.Status != "firing" && a.Status != "resolved" {
			return nil, false, webhook.Refuse(http.StatusBadRequest, "alert %d: status must be firing or resolved, got %q", i, a.Status)
		}
		if a.Fingerprint == "" {
			return nil, false, webhook.Refuse(http.StatusBadRequest, "alert %d: no fingerprint", i)
		}
		kind, name := resource(a.Labels)
		data, err := json.Marshal(map[string]any{
			"status": a.Status, "fingerprint": a.Fingerprint, "labels": a.Labels, "annotations": a.Annotations,
			"startsAt": a.StartsAt, "endsAt": a.EndsAt, "generatorURL": a.GeneratorURL, "receiver": n.Receiver,
			"namespace": a.Labels["namespace"], "resourceKind": kind, "resourceName": name,
			"reason": a.Labels["alertname"], "message": firstNonEmpty(a.Annotations["summary"], a.Annotations["description"]),
		})
		if err != nil {
			return nil, false, err
		}
		t := a.StartsAt
		if a.Status == "resolved" && !a.EndsAt.IsZero() {
			t = a.EndsAt
		}
		events = append(events, producers.Event{
			ID:          fmt.Sprintf("%s-%s-%d", a.Fingerprint, a.Status, a.StartsAt.Unix()),
			Type:        a.Status,
			Time:        t,
			Data:        data,
			Traceparent: header.Get("traceparent"),
		})
	}
	return events, true, nil
}

// resource picks the object an alert is about from the usual kube-state-metrics labels.
func resource(labels map[string]string) (kind, name string) {
	for _, k := range []struct{ label, kind string }{
		{"pod", "Pod"}, {"deployment", "Deployment"}, {"statefulset", "StatefulSet"}, {"daemonset", "DaemonSet"},
		{"job_name", "Job"}, {"persistentvolumeclaim", "PersistentVolumeClaim"}, {"node", "Node"}, {"service", "Service"},
	} {
		if v := labels[k.label]; v != "" {
			return k.kind, v
		}
	}
	return "", ""
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
