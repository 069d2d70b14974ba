package test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"

	"github.com/khook/khook/hook"
	"github.com/khook/khook/internal/config"
	"github.com/khook/khook/internal/kubetest"
	"github.com/khook/khook/mapping"
	"github.com/khook/khook/producers"
	"github.com/khook/khook/producers/builtin"
)

const chartDir = "../helm/khook"

// helmBin is the helm built from the Go module proxy by test/helm/build-helm.sh, which
// `make test` passes as HELM.
func helmBin(t *testing.T) string {
	t.Helper()
	h := os.Getenv("HELM")
	require.NotEmpty(t, h, "HELM is not set: run the tests with `make test`, or set HELM=$(test/helm/build-helm.sh)")
	return h
}

func helm(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(helmBin(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	require.NoError(t, cmd.Run(), "helm %s\n%s%s", strings.Join(args, " "), out.String(), errb.String())
	return out.String()
}

// rendered is one `helm template` result, indexed by kind and name.
type rendered struct {
	objects []*unstructured.Unstructured
}

func renderChart(t *testing.T, args ...string) rendered {
	t.Helper()
	return decodeRendered(t, helm(t, append([]string{"template", "khook", chartDir, "--namespace", "kagent"}, args...)...))
}

// decodeRendered decodes a manifest stream, as helm template or helm get manifest print it.
func decodeRendered(t *testing.T, out string) rendered {
	t.Helper()
	var r rendered
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(out), 4096)
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
			break
		} else {
			require.NoError(t, err)
		}
		if len(obj.Object) > 0 {
			r.objects = append(r.objects, obj)
		}
	}
	return r
}

func (r rendered) get(t *testing.T, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range r.objects {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s in %v", kind, name, r.names(""))
	return nil
}

func (r rendered) names(kind string) []string {
	var out []string
	for _, o := range r.objects {
		if kind == "" {
			out = append(out, o.GetKind()+"/"+o.GetName())
		} else if o.GetKind() == kind {
			out = append(out, o.GetName())
		}
	}
	slices.Sort(out)
	return out
}

func (r rendered) deployment(t *testing.T, name string) *appsv1.Deployment {
	t.Helper()
	var d appsv1.Deployment
	require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(r.get(t, "Deployment", name).Object, &d))
	return &d
}

func (r rendered) configMap(t *testing.T, name string) *corev1.ConfigMap {
	t.Helper()
	var cm corev1.ConfigMap
	require.NoError(t, runtime.DefaultUnstructuredConverter.FromUnstructured(r.get(t, "ConfigMap", name).Object, &cm))
	return &cm
}

// loadRenderedConfig writes the rendered ConfigMaps where the pods mount them, under a
// temporary root, and loads them with khook's own loaders: what the pods would do at start.
func (r rendered) loadRenderedConfig(t *testing.T) (config.Config, []string, *mapping.Rules) {
	t.Helper()
	root := t.TempDir()
	// The ConfigMaps are found by the file they hold, since their names may be set.
	dirs := map[string]string{"khook.yaml": "config", "plugins.yaml": "plugins", "event-mappings.yaml": "mappings"}
	found := 0
	for _, name := range r.names("ConfigMap") {
		cm := r.configMap(t, name)
		dir := ""
		for file, d := range dirs {
			if _, ok := cm.Data[file]; ok {
				dir = d
			}
		}
		if dir == "" {
			continue
		}
		found++
		for key, data := range cm.Data {
			// The webhook's certificate is mounted at /etc/certs in the pod; here it is a
			// self-signed one in the temporary root.
			data = strings.ReplaceAll(data, "/etc/certs/", filepath.Join(root, "certs")+"/")
			require.NoError(t, os.MkdirAll(filepath.Join(root, dir), 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(root, dir, key), []byte(data), 0o644))
		}
	}
	require.Equal(t, 3, found, "the config, plugin and mapping ConfigMaps")
	writeSelfSigned(t, filepath.Join(root, "certs"))
	cfg, err := config.Load(filepath.Join(root, "config", "khook.yaml"), nil, nil)
	require.NoError(t, err, "the rendered khook.yaml")
	require.Equal(t, "/etc/khook/plugins/plugins.yaml", cfg.Files.Plugins)
	require.Equal(t, "/etc/khook/mappings/event-mappings.yaml", cfg.Files.Mappings)

	// The kubernetes plugin builds its client when it is loaded, as it would in the pod from
	// the in-cluster config; a kubeconfig naming an unused address stands in for it.
	kubeconfig := filepath.Join(root, "kubeconfig")
	require.NoError(t, os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
users: [{name: u, user: {token: t}}]
current-context: c
`), 0o600))
	t.Setenv("KUBECONFIG", kubeconfig)
	sup := &producers.Supervisor{Path: filepath.Join(root, "plugins", "plugins.yaml"), Table: builtin.Table(),
		Env: func(string) (string, bool) { return "", false }, Logger: zap.NewNop(), Reg: prometheus.NewRegistry()}
	_, err = sup.Load()
	require.NoError(t, err, "the rendered plugins.yaml")
	plugins := sup.Planned()
	b, err := os.ReadFile(filepath.Join(root, "mappings", "event-mappings.yaml"))
	require.NoError(t, err)
	rules, err := mapping.Parse(b)
	require.NoError(t, err, "the rendered event-mappings.yaml")
	return cfg, plugins, rules
}

// valuesFiles are the chart's values files, and (relative to the chart) the test's file that
// turns on every optional object.
var valuesFiles = []string{"", "values-dev.yaml", "values-staging.yaml", "values-prod.yaml", "values-single.yaml",
	"values-edge.yaml", "values-hub.yaml", optionsValues}

const optionsValues = "../../test/testdata/values-options.yaml"

func valuesArgs(file string) []string {
	if file == "" {
		return nil
	}
	return []string{"--values", filepath.Join(chartDir, file)}
}

func TestChartLintsAndRendersEveryValuesFile(t *testing.T) {
	for _, file := range valuesFiles {
		t.Run(cmpName(file), func(t *testing.T) {
			helm(t, append([]string{"lint", "--strict", chartDir}, valuesArgs(file)...)...)
			r := renderChart(t, valuesArgs(file)...)

			// No Secret is ever rendered: credentials come from existing Secrets only.
			require.Empty(t, r.names("Secret"))
			for _, o := range r.objects {
				if o.GetKind() == "ConfigMap" {
					b, _ := json.Marshal(o.Object)
					require.NotRegexp(t, `(?i)"(token|password|apiKey)":"[^$]`, string(b), o.GetName())
				}
			}

			for _, name := range r.names("Deployment") {
				d := r.deployment(t, name)
				pod := d.Spec.Template.Spec
				c := pod.Containers[0]
				require.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path, name)
				require.Equal(t, "probes", c.LivenessProbe.HTTPGet.Port.String(), name)
				require.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path, name)
				ports := map[string]int32{}
				for _, p := range c.Ports {
					ports[p.Name] = p.ContainerPort
				}
				require.Equal(t, int32(8080), ports["metrics"], name)
				require.Equal(t, int32(8081), ports["probes"], name)
				if file == optionsValues {
					require.NotContains(t, d.Spec.Template.Annotations, "prometheus.io/scrape", "metrics.podAnnotations: false")
				} else {
					require.Equal(t, map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"},
						d.Spec.Template.Annotations, name)
				}
				require.True(t, *pod.SecurityContext.RunAsNonRoot, name)
				require.True(t, *c.SecurityContext.ReadOnlyRootFilesystem, name)
				require.False(t, *c.SecurityContext.AllowPrivilegeEscalation, name)
				require.Equal(t, []string{"--config", "/etc/khook/config/khook.yaml"}, c.Args[len(c.Args)-2:], name)
				// ConfigMaps are directory mounts: kubelet never updates subPath mounts, and
				// live reload depends on those updates.
				for _, m := range c.VolumeMounts {
					require.Empty(t, m.SubPath, "%s mounts %s with subPath", name, m.Name)
				}
				require.Subset(t, mountNames(c), []string{"config", "plugins", "mappings"}, name)
			}
			cfg, plugins, rules := r.loadRenderedConfig(t)
			require.Equal(t, "cluster", cfg.Kubernetes.Hooks)

			switch file {
			case "":
				// The guide's defaults: the kubernetes plugin on, the webhook off.
				require.Equal(t, []string{"khook-dispatcher", "khook-mapper", "khook-producer-kubernetes"}, r.names("Deployment"))
				require.Len(t, plugins, 1)
				require.Equal(t, []string{"khook-metrics"}, r.names("Service"))
				require.Equal(t, int32(1), *r.deployment(t, "khook-mapper").Spec.Replicas)
				require.Empty(t, r.names("PodDisruptionBudget"), "no PDB on single replicas: it would block drains")
				require.Empty(t, r.names("HorizontalPodAutoscaler"))
				require.Equal(t, []string{"khook-dispatcher", "khook-producer-events"}, r.names("ClusterRole"))
			case "values-dev.yaml":
				require.Equal(t, []string{"khook-dispatcher", "khook-mapper", "khook-producer-kubernetes", "khook-producer-webhook"}, r.names("Deployment"))
				require.Len(t, plugins, 2)
				require.Equal(t, "debug", cfg.Log.Level)
				// The guide's partial mapping lowers pod-restart to info.
				ev, outcome := mapping.Map(rules, mapping.Raw{Source: "kubernetes", Type: "pod-restart", Data: []byte(`{}`)})
				require.Equal(t, mapping.Mapped, outcome)
				require.Equal(t, "info", ev.Severity)
				wh := r.deployment(t, "khook-producer-webhook")
				require.Equal(t, []string{"producer", "--plugin", "webhook"}, wh.Spec.Template.Spec.Containers[0].Args[:3])
				require.Equal(t, []string{"khook-producer-events"}, r.names("Role")[1:], "the producer reads Events only in the watched namespace")
				require.Equal(t, "development", r.get(t, "Role", "khook-producer-events").GetNamespace())
			case "values-staging.yaml":
				require.NotNil(t, r.get(t, "ServiceMonitor", "khook"))
				require.Equal(t, "250m", r.deployment(t, "khook-dispatcher").Spec.Template.Spec.Containers[0].Resources.Limits.Cpu().String())
			case "values-prod.yaml":
				require.Equal(t, 3, cfg.Streams.Raw.Replicas)
				require.Equal(t, 3, cfg.Streams.Events.Replicas)
				require.Equal(t, "/etc/khook/nats-creds/khook.creds", cfg.NATS.CredentialsFile)
				require.Equal(t, int32(2), *r.deployment(t, "khook-producer-webhook").Spec.Replicas)
				require.Nil(t, r.deployment(t, "khook-dispatcher").Spec.Replicas, "the HPA owns the dispatcher's replicas")
				require.Equal(t, []string{"khook-dispatcher", "khook-mapper"}, r.names("HorizontalPodAutoscaler"))
				require.Equal(t, []string{"khook-dispatcher", "khook-mapper", "khook-producer-kubernetes", "khook-producer-webhook"},
					r.names("PodDisruptionBudget"))
				require.NotNil(t, r.deployment(t, "khook-mapper").Spec.Template.Spec.Affinity.PodAntiAffinity)
				require.Contains(t, mountNames(r.deployment(t, "khook-producer-webhook").Spec.Template.Spec.Containers[0]), "webhook-tls")
				require.NotContains(t, mountNames(r.deployment(t, "khook-mapper").Spec.Template.Spec.Containers[0]), "webhook-tls")
				require.Len(t, r.names("NetworkPolicy"), 4)
				require.NotNil(t, r.get(t, "ConfigMap", "khook-dashboard"))
				require.Equal(t, "1Gi", r.deployment(t, "khook-mapper").Spec.Template.Spec.Containers[0].Resources.Limits.Memory().String())
			case "values-single.yaml":
				// One Deployment with the guide's names, running every stage.
				require.Equal(t, []string{"khook"}, r.names("Deployment"))
				require.Equal(t, []string{"run"}, r.deployment(t, "khook").Spec.Template.Spec.Containers[0].Args[:1])
				require.Subset(t, r.names("ConfigMap"), []string{"plugin-config", "event-mappings"})
				require.Equal(t, []string{"khook"}, r.names("ServiceAccount"))
				sel, _, _ := unstructured.NestedStringMap(r.get(t, "Service", "khook-webhook").Object, "spec", "selector")
				require.Equal(t, "single", sel["app.kubernetes.io/component"])
			case "values-edge.yaml":
				// One Deployment running khook edge on its own volume, and nothing of the
				// mapper's, the dispatcher's or the streams Job's.
				require.Equal(t, []string{"khook-edge"}, r.names("Deployment"))
				d := r.deployment(t, "khook-edge")
				require.Equal(t, []string{"edge"}, d.Spec.Template.Spec.Containers[0].Args[:1])
				require.Equal(t, appsv1.RecreateDeploymentStrategyType, d.Spec.Strategy.Type, "one pod owns the volume at a time")
				require.Equal(t, int32(1), *d.Spec.Replicas)
				require.Subset(t, mountNames(d.Spec.Template.Spec.Containers[0]), []string{"data", "edge-hub"})
				require.Equal(t, []string{"khook-edge-data"}, r.names("PersistentVolumeClaim"))
				require.Empty(t, r.names("Job"))
				require.Equal(t, []string{"khook-producer"}, r.names("ServiceAccount"))
				require.NotContains(t, r.names("ClusterRole"), "khook-dispatcher", "an edge reads no Hooks")
				sel, _, _ := unstructured.NestedStringMap(r.get(t, "Service", "khook-webhook").Object, "spec", "selector")
				require.Equal(t, "edge", sel["app.kubernetes.io/component"])
				require.NoError(t, cfg.ValidateEdge())
				require.Equal(t, "edge-1", cfg.Cluster)
				require.Equal(t, "/etc/khook/edge-hub/password", cfg.Edge.Hub.PasswordFile)
				require.Equal(t, "/data", cfg.NATS.Embedded.StoreDir)
				require.Empty(t, cfg.NATS.URL)
			case "values-hub.yaml":
				require.Equal(t, []string{"eu-1", "us-1"}, cfg.Streams.Edges)
				require.Empty(t, cfg.Cluster)
			case optionsValues:
				// The alertmanager plugin: its Deployment, port, Service and network rule.
				am := r.deployment(t, "khook-producer-alertmanager")
				require.Equal(t, []string{"producer", "--plugin", "alertmanager"}, am.Spec.Template.Spec.Containers[0].Args[:3])
				require.Equal(t, "alertmanager", am.Spec.Template.Spec.Containers[0].Ports[2].Name)
				require.Equal(t, int32(9095), am.Spec.Template.Spec.Containers[0].Ports[2].ContainerPort)
				require.Contains(t, plugins, "alertmanager")
				svc := r.get(t, "Service", "khook-alertmanager")
				sel, _, _ := unstructured.NestedStringMap(svc.Object, "spec", "selector")
				require.Equal(t, "producer-alertmanager", sel["app.kubernetes.io/component"])
				np, _ := json.Marshal(r.get(t, "NetworkPolicy", "khook-producer-alertmanager").Object)
				require.Contains(t, string(np), `"port":9095`)
				require.Contains(t, string(np), "monitoring")
				// The webhook's Ingress and HTTPRoute reach its Service on its path.
				ing, _ := json.Marshal(r.get(t, "Ingress", "khook-webhook").Object)
				require.Contains(t, string(ing), `"path":"/webhook"`)
				require.Contains(t, string(ing), `"name":"khook-webhook"`)
				route, _ := json.Marshal(r.get(t, "HTTPRoute", "khook-webhook").Object)
				require.Contains(t, string(route), `"value":"/webhook"`)
				// One ServiceAccount, annotated, for every stage and the Job; RBAC binds it.
				require.Equal(t, []string{"khook-iam"}, r.names("ServiceAccount"))
				require.Equal(t, "arn:aws:iam::123456789012:role/khook", r.get(t, "ServiceAccount", "khook-iam").GetAnnotations()["eks.amazonaws.com/role-arn"])
				for _, name := range r.names("Deployment") {
					pod := r.deployment(t, name).Spec.Template.Spec
					require.Equal(t, "khook-iam", pod.ServiceAccountName, name)
					require.Equal(t, "ghcr.io/khook/khook@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", pod.Containers[0].Image, name)
					require.Equal(t, "khook-extra-env", pod.Containers[0].EnvFrom[0].ConfigMapRef.Name, name)
				}
				rb, _ := json.Marshal(r.get(t, "ClusterRoleBinding", "khook-dispatcher").Object)
				require.Contains(t, string(rb), `"name":"khook-iam"`)
			}
		})
	}
}

func cmpName(file string) string {
	if file == "" {
		return "values.yaml"
	}
	return filepath.Base(file)
}

func mountNames(c corev1.Container) []string {
	var out []string
	for _, m := range c.VolumeMounts {
		out = append(out, m.Name)
	}
	return out
}

// The guide's templated values in `plugins` ("{{ .Values.webhook.port | default 8090 }}")
// are rendered with tpl, and the Deployment, Service and NetworkPolicy follow them.
func TestChartRendersTemplatedPluginValues(t *testing.T) {
	r := renderChart(t, "--set", "webhook.enabled=true,webhook.port=9000,webhook.path=/hooks,networkPolicy.enabled=true,watchNamespace=shop")
	_, plugins, _ := r.loadRenderedConfig(t)
	require.Len(t, plugins, 2)
	plugin := r.configMap(t, "khook-plugin-config").Data["plugins.yaml"]
	require.Contains(t, plugin, "port: '9000'")
	require.Contains(t, plugin, "path: '/hooks'")
	require.Contains(t, plugin, "namespace: 'shop'")

	wh := r.deployment(t, "khook-producer-webhook").Spec.Template.Spec.Containers[0]
	require.Contains(t, wh.Ports, corev1.ContainerPort{Name: "webhook", ContainerPort: 9000, Protocol: corev1.ProtocolTCP})
	svc := r.get(t, "Service", "khook-webhook")
	ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	require.Equal(t, "webhook", ports[0].(map[string]any)["targetPort"])
	sel, _, _ := unstructured.NestedStringMap(svc.Object, "spec", "selector")
	require.Equal(t, "producer-webhook", sel["app.kubernetes.io/component"])
	np, _ := json.Marshal(r.get(t, "NetworkPolicy", "khook-producer-webhook").Object)
	require.Contains(t, string(np), `"port":9000`)

	// One Deployment for every plugin, by a value.
	combined := renderChart(t, "--set", "webhook.enabled=true,producers.mode=combined")
	require.Equal(t, []string{"khook-dispatcher", "khook-mapper", "khook-producer"}, combined.names("Deployment"))
	require.Equal(t, []string{"producer"}, combined.deployment(t, "khook-producer").Spec.Template.Spec.Containers[0].Args[:1])

	// A disabled plugin gets no Deployment and no RBAC.
	off := renderChart(t, "--set", "plugins[0].name=kubernetes,plugins[0].enabled=false")
	require.Equal(t, []string{"khook-dispatcher", "khook-mapper"}, off.names("Deployment"))
	require.Equal(t, []string{"khook-dispatcher"}, off.names("ClusterRole"))

	// Restart-on-change is a choice: off, the pod template does not change with the config.
	before := renderChart(t).deployment(t, "khook-mapper").Spec.Template.Annotations
	after := renderChart(t, "--set", "logLevel=debug").deployment(t, "khook-mapper").Spec.Template.Annotations
	require.Equal(t, before, after)
	withSums := renderChart(t, "--set", "restartOnConfigChange=true").deployment(t, "khook-mapper").Spec.Template.Annotations
	withSums2 := renderChart(t, "--set", "restartOnConfigChange=true,logLevel=debug").deployment(t, "khook-mapper").Spec.Template.Annotations
	require.NotEqual(t, withSums["checksum/config"], withSums2["checksum/config"])

	// Secrets: referenced, exposed as env or files, never inlined.
	sec := renderChart(t, "--set", "secrets.existingSecret=plugin-secrets,secrets.env[0].name=API_KEY,secrets.env[0].key=api-key,secrets.mountPath=/etc/khook/secrets,kagent.tokenSecret.name=kagent-token")
	c := sec.deployment(t, "khook-mapper").Spec.Template.Spec.Containers[0]
	var apiKey *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "API_KEY" {
			apiKey = &c.Env[i]
		}
	}
	require.NotNil(t, apiKey)
	require.Equal(t, "plugin-secrets", apiKey.ValueFrom.SecretKeyRef.Name)
	require.Equal(t, "api-key", apiKey.ValueFrom.SecretKeyRef.Key)
	require.Contains(t, mountNames(c), "plugin-secrets")
	cfg, _, _ := sec.loadRenderedConfig(t)
	require.Equal(t, "/etc/khook/kagent-token/token", cfg.Kagent.TokenFile)

	// Tracing: the guide's JAEGER_ENDPOINT and JAEGER_SERVICE_NAME, or OTLP, as env.
	traced := renderChart(t, "--set", "tracing.jaegerEndpoint=http://jaeger-collector:14268/api/traces,tracing.serviceName=khook-prod")
	envOf := func(c corev1.Container) map[string]string {
		out := map[string]string{}
		for _, e := range c.Env {
			out[e.Name] = e.Value
		}
		return out
	}
	te := envOf(traced.deployment(t, "khook-dispatcher").Spec.Template.Spec.Containers[0])
	require.Equal(t, "http://jaeger-collector:14268/api/traces", te["JAEGER_ENDPOINT"])
	require.Equal(t, "khook-prod", te["JAEGER_SERVICE_NAME"])
	require.Equal(t, "parentbased_traceidratio", te["OTEL_TRACES_SAMPLER"])
	require.NotContains(t, envOf(renderChart(t).deployment(t, "khook-mapper").Spec.Template.Spec.Containers[0]), "OTEL_TRACES_SAMPLER",
		"tracing is off by default")

	// The events API: on the dispatcher only, with its token from a Secret.
	withAPI := renderChart(t, "--set", "api.enabled=true,api.tokenSecret.name=khook-api")
	apiCfg, _, _ := withAPI.loadRenderedConfig(t)
	require.True(t, apiCfg.API.Enabled)
	require.Equal(t, "/etc/khook/api-token/token", apiCfg.API.TokenFile)
	require.Contains(t, mountNames(withAPI.deployment(t, "khook-dispatcher").Spec.Template.Spec.Containers[0]), "api-token")
	require.NotContains(t, mountNames(withAPI.deployment(t, "khook-mapper").Spec.Template.Spec.Containers[0]), "api-token")
	apiSel, _, _ := unstructured.NestedStringMap(withAPI.get(t, "Service", "khook-api").Object, "spec", "selector")
	require.Equal(t, "dispatcher", apiSel["app.kubernetes.io/component"])
	require.NotContains(t, renderChart(t).names("Service"), "khook-api")

	// Broken values fail the render with the reason.
	cmd := exec.Command(helmBin(t), "template", "khook", chartDir, "--set", "producers.mode=sideways")
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), `at '/producers/mode': value must be one of 'perPlugin', 'combined'`)
}

// promtool is built from the Go module proxy by test/promtool/build-promtool.sh, which make
// test runs (through test/tools.sh) and passes as PROMTOOL.
func promtool(t *testing.T) string {
	t.Helper()
	p := os.Getenv("PROMTOOL")
	require.NotEmpty(t, p, "PROMTOOL is not set: run `make test`, or `export PROMTOOL=$(test/promtool/build-promtool.sh)`")
	return p
}

// The rendered PrometheusRule passes `promtool check rules`, and its unit tests
// (test/helm/alerts_test.yaml) show each alert firing when it should and not before.
func TestChartAlertRules(t *testing.T) {
	r := renderChart(t, "--set", "metrics.prometheusRule.enabled=true")
	rule := r.get(t, "PrometheusRule", "khook-alerts")
	groups, _, _ := unstructured.NestedSlice(rule.Object, "spec", "groups")
	var alerts []string
	for _, g := range groups {
		rules, _, _ := unstructured.NestedSlice(g.(map[string]any), "rules")
		for _, r := range rules {
			alerts = append(alerts, r.(map[string]any)["alert"].(string))
		}
	}
	require.ElementsMatch(t, []string{"PluginDown", "PluginHighErrorRate", "PluginEventProcessingLag", "KhookConsumerLag",
		"KhookDeadLetters", "KhookMapperDeadLetters", "KhookAgentBudgetExhausted", "KhookStreamNearLimit", "KhookJetStreamUnavailable",
		"KhookEdgeDisconnected", "KhookEdgeLagHigh"}, alerts)

	// Every alert links a runbook that exists.
	for _, g := range groups {
		rules, _, _ := unstructured.NestedSlice(g.(map[string]any), "rules")
		for _, r := range rules {
			url, _, _ := unstructured.NestedString(r.(map[string]any), "annotations", "runbook_url")
			page := strings.TrimPrefix(url, "https://github.com/khook/khook/blob/main/")
			require.NotEqual(t, url, page, "runbook_url %q", url)
			_, err := os.Stat(filepath.Join("..", page))
			require.NoError(t, err, "the runbook of %s", r.(map[string]any)["alert"])
		}
	}

	dir := t.TempDir()
	b, err := json.Marshal(map[string]any{"groups": groups})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "khook-rules.yaml"), b, 0o644))
	tests, err := os.ReadFile("helm/alerts_test.yaml")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "alerts_test.yaml"), tests, 0o644))

	for _, args := range [][]string{{"check", "rules", "khook-rules.yaml"}, {"test", "rules", "alerts_test.yaml"}} {
		cmd := exec.Command(promtool(t), args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	}
}

// Every khook_ metric the alerts and the dashboard use is one the code defines, so neither
// can silently point at a metric that was renamed.
func TestChartUsesRealMetrics(t *testing.T) {
	defined := codeMetrics(t)
	require.True(t, defined["khook_plugin_active"])

	r := renderChart(t, "--set", "metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true")
	rule, err := json.Marshal(r.get(t, "PrometheusRule", "khook-alerts").Object["spec"])
	require.NoError(t, err)
	dash := r.configMap(t, "khook-dashboard").Data["khook-overview.json"]
	var parsed struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal([]byte(dash), &parsed), "the dashboard is JSON")
	require.NotEmpty(t, parsed.Panels)

	used := regexp.MustCompile(`khook_[a-z_]+`)
	for _, text := range []string{string(rule), dash} {
		for _, name := range used.FindAllString(text, -1) {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_count"), "_sum")
			require.True(t, defined[base], "%s is used by the chart but no code defines it", name)
		}
	}
}

// stubCRDs are minimal CustomResourceDefinitions for the Gateway API's and the Prometheus
// operator's kinds, so the API server can validate the chart's HTTPRoute, ServiceMonitor and
// PrometheusRule without those projects.
const stubCRDs = "testdata/stub-crds.yaml"

// The chart against a real kube-apiserver: every object of every values file passes a
// server-side dry run; then a real `helm install`, an upgrade to the production values and
// the guide's `helm rollback`, checking what the API server holds after each.
func TestChartOnAPIServer(t *testing.T) {
	cluster := kubetest.Start(t, kubetest.Options{})
	cs, err := k8s.NewForConfig(cluster.Config)
	require.NoError(t, err)
	dyn, err := dynamic.NewForConfig(cluster.Config)
	require.NoError(t, err)
	ctx := context.Background()
	apply(t, cluster.Config, stubCRDs, "")
	// The CRD comes from its own chart, installed as the docs say, before the main chart.
	helmRun := helmOn(t, cluster)
	mustHelm(t, helmRun, "install", "khook-crds", crdChartDir, "--namespace", "kagent", "--create-namespace")
	for _, ns := range []string{"kagent", "development", "staging", "production"} {
		ensureNamespace(t, cs, ns)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(cs.Discovery()))

	for _, file := range valuesFiles {
		r := renderChart(t, valuesArgs(file)...)
		for _, obj := range r.objects {
			m, err := mapper.RESTMapping(obj.GroupVersionKind().GroupKind(), obj.GroupVersionKind().Version)
			require.NoError(t, err, "%s: %s", cmpName(file), obj.GetKind())
			var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
			if m.Scope.Name() == "namespace" {
				ri = dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
			}
			_, err = ri.Create(ctx, obj, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"})
			require.NoError(t, err, "%s: %s %s", cmpName(file), obj.GetKind(), obj.GetName())
		}
	}

	// The streams Job is a hook that needs NATS; it is checked by the dry run above.
	run := func(args ...string) string {
		t.Helper()
		return mustHelm(t, helmRun, args...)
	}
	notes := run("install", "khook", chartDir, "--namespace", "kagent", "--no-hooks", "--set", "webhook.enabled=true")
	require.Contains(t, notes, "khook-producer-kubernetes")
	require.Contains(t, notes, "khook-producer-webhook")
	require.Contains(t, notes, "curl -X POST localhost:8090/webhook")
	require.Contains(t, notes, "NATS JetStream is NOT installed by this chart")

	mapperReplicas := func() int32 {
		d, err := cs.AppsV1().Deployments("kagent").Get(ctx, "khook-mapper", metav1.GetOptions{})
		require.NoError(t, err)
		return *d.Spec.Replicas
	}
	require.Equal(t, int32(1), mapperReplicas())
	d, err := cs.AppsV1().Deployments("kagent").Get(ctx, "khook-producer-webhook", metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, int32(1), *d.Spec.Replicas)
	cm, err := cs.CoreV1().ConfigMaps("kagent").Get(ctx, "khook-plugin-config", metav1.GetOptions{})
	require.NoError(t, err)
	require.Contains(t, cm.Data["plugins.yaml"], "enabled: 'true'")

	// The chart's RBAC, as the API server decides it: each stage may do what it needs and
	// nothing more.
	can := func(sa string, attr authv1.ResourceAttributes) bool {
		t.Helper()
		sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authv1.SubjectAccessReview{Spec: authv1.SubjectAccessReviewSpec{
			User: "system:serviceaccount:kagent:" + sa, ResourceAttributes: &attr,
		}}, metav1.CreateOptions{})
		require.NoError(t, err)
		return sar.Status.Allowed
	}
	require.True(t, can("khook-producer", authv1.ResourceAttributes{Group: "events.k8s.io", Resource: "events", Verb: "watch"}))
	require.False(t, can("khook-producer", authv1.ResourceAttributes{Resource: "secrets", Verb: "get", Namespace: "kagent"}))
	require.True(t, can("khook-dispatcher", authv1.ResourceAttributes{Group: "kagent.dev", Resource: "hooks", Subresource: "status", Verb: "patch", Namespace: "shop"}))
	require.True(t, can("khook-dispatcher", authv1.ResourceAttributes{Group: "coordination.k8s.io", Resource: "leases", Verb: "update", Namespace: "kagent"}))
	require.False(t, can("khook-dispatcher", authv1.ResourceAttributes{Group: "coordination.k8s.io", Resource: "leases", Verb: "update", Namespace: "shop"}))
	require.False(t, can("khook-dispatcher", authv1.ResourceAttributes{Group: "kagent.dev", Resource: "hooks", Verb: "update", Namespace: "shop"}))
	require.False(t, can("khook-mapper", authv1.ResourceAttributes{Resource: "configmaps", Verb: "get", Namespace: "kagent"}))

	// Upgrade to production values: two replicas, autoscaled mapper, production alerts.
	run("upgrade", "khook", chartDir, "--namespace", "kagent", "--no-hooks", "--values", filepath.Join(chartDir, "values-prod.yaml"))
	_, err = cs.AutoscalingV2().HorizontalPodAutoscalers("kagent").Get(ctx, "khook-mapper", metav1.GetOptions{})
	require.NoError(t, err)
	_, err = cs.PolicyV1().PodDisruptionBudgets("kagent").Get(ctx, "khook-mapper", metav1.GetOptions{})
	require.NoError(t, err)
	d, err = cs.AppsV1().Deployments("kagent").Get(ctx, "khook-producer-webhook", metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, int32(2), *d.Spec.Replicas)

	// The guide's full rollback: back to the first release.
	run("rollback", "khook", "1", "--namespace", "kagent", "--no-hooks")
	_, err = cs.AutoscalingV2().HorizontalPodAutoscalers("kagent").Get(ctx, "khook-mapper", metav1.GetOptions{})
	require.True(t, apierrors.IsNotFound(err), "the HPA is gone after the rollback: %v", err)
	cm, err = cs.CoreV1().ConfigMaps("kagent").Get(ctx, "khook-plugin-config", metav1.GetOptions{})
	require.NoError(t, err)
	require.NotContains(t, cm.Data["plugins.yaml"], "enableTLS", "the production plugin config is rolled back")
	d, err = cs.AppsV1().Deployments("kagent").Get(ctx, "khook-producer-webhook", metav1.GetOptions{})
	require.NoError(t, err)
	require.Equal(t, int32(1), *d.Spec.Replicas, "the replica count is rolled back")
	require.Contains(t, run("history", "khook", "--namespace", "kagent"), "Rollback to 1")
}

// writeSelfSigned writes tls.crt and tls.key for localhost into dir.
func writeSelfSigned(t *testing.T, dir string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(dir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
}

// hooks.source=both gives the dispatcher Hook resources and the hooks ConfigMap at once:
// the mounted ConfigMap, the API access of the cluster source, and kubernetes.hooks: both.
func TestChartHooksFromClusterAndFile(t *testing.T) {
	r := renderChart(t, "--set", "hooks.source=both,networkPolicy.enabled=true",
		"--set-json", `hooks.file=[{"apiVersion":"kagent.dev/v1alpha2","kind":"Hook","metadata":{"name":"deploys","namespace":"shop"},"spec":{"eventConfigurations":[{"eventType":"deploy-failed","agentRef":{"name":"sre"},"prompt":"{{.ResourceName}} failed"}]}}]`)
	cfg, _, _ := r.loadRenderedConfig(t)
	require.Equal(t, "both", cfg.Kubernetes.Hooks)
	hooks := r.configMap(t, "khook-hooks").Data["hooks.yaml"]
	idx, err := hook.Parse([]byte(hooks))
	require.NoError(t, err, hooks)
	require.Len(t, idx, 1)
	d := r.deployment(t, "khook-dispatcher")
	require.Contains(t, mountNames(d.Spec.Template.Spec.Containers[0]), "hooks")
	require.True(t, *d.Spec.Template.Spec.AutomountServiceAccountToken, "the dispatcher reads Hook resources")
	require.Contains(t, r.names("ClusterRole"), "khook-dispatcher")
}
