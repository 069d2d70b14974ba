{{/* Names and labels, in the usual Helm shape. */}}
{{- define "khook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "khook.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "khook.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "khook.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: khook
{{- end }}

{{- define "khook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "khook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "khook.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
khook.plugins renders .Values.plugins through tpl, so the guide's templated values
("{{ .Values.webhook.port | default 8090 }}") become plain values, and returns YAML
{plugins: [...]}. The ConfigMap and the producer Deployments both use it.
*/}}
{{- define "khook.plugins" -}}
{{- tpl (toYaml (dict "plugins" .Values.plugins)) . }}
{{- end }}

{{/*
khook.enabledPlugins returns YAML {names: [...]}: the plugins whose rendered `enabled` is
true or absent, as khook itself decides.
*/}}
{{- define "khook.enabledPlugins" -}}
{{- $names := list }}
{{- range (include "khook.plugins" . | fromYaml).plugins }}
{{- if or (not (hasKey . "enabled")) (eq (toString .enabled | lower | trim) "true") }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- toYaml (dict "names" $names) }}
{{- end }}

{{/* khook.pluginConfig returns the rendered config of the plugin named .name as YAML. */}}
{{- define "khook.pluginConfig" -}}
{{- $want := .name }}
{{- range (include "khook.plugins" .root | fromYaml).plugins }}
{{- if eq .name $want }}{{ toYaml (default dict .config) }}{{ end }}
{{- end }}
{{- end }}

{{/* khook.webhookPort is the rendered port of the webhook plugin, 8090 by default. */}}
{{- define "khook.alertmanagerPort" -}}
{{- $cfg := include "khook.pluginConfig" (dict "root" . "name" "alertmanager") | fromYaml }}
{{- default 9095 $cfg.port | int }}
{{- end }}

{{/*
khook.serviceAccount is the ServiceAccount of a stage: serviceAccount.name for all of them
when set, else <fullname>-<stage>. Call with (dict "root" $ "stage" "producer").
*/}}
{{- define "khook.serviceAccount" -}}
{{- if eq .root.Values.deploymentMode "single" }}
{{- default (include "khook.fullname" .root) .root.Values.serviceAccount.name }}
{{- else }}
{{- default (printf "%s-%s" (include "khook.fullname" .root) .stage) .root.Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
khook.component is the component label of the pods that run a stage or plugin: the single
Deployment's in single mode, the combined producer's, or the stage's own. Call with
(dict "root" $ "stage" "producer" "plugin" "webhook").
*/}}
{{- define "khook.component" -}}
{{- if eq .root.Values.deploymentMode "single" }}single
{{- else if eq .root.Values.deploymentMode "edge" }}edge
{{- else if and (eq .stage "producer") (eq .root.Values.producers.mode "combined") }}producer
{{- else if eq .stage "producer" }}producer-{{ .plugin }}
{{- else }}{{ .stage }}
{{- end }}
{{- end }}

{{- define "khook.pluginConfigName" -}}
{{- default (printf "%s-plugin-config" (include "khook.fullname" .)) .Values.configMapNames.pluginConfig }}
{{- end }}

{{- define "khook.eventMappingsName" -}}
{{- default (printf "%s-event-mappings" (include "khook.fullname" .)) .Values.configMapNames.eventMappings }}
{{- end }}

{{- define "khook.webhookPort" -}}
{{- $cfg := include "khook.pluginConfig" (dict "root" . "name" "webhook") | fromYaml }}
{{- default 8090 $cfg.port | int }}
{{- end }}

{{/*
khook.stage merges a stage's own values over the top-level defaults and returns YAML.
Call with (dict "root" $ "values" .Values.mapper).
*/}}
{{- define "khook.stage" -}}
{{- $v := .root.Values }}
{{- $defaults := dict
  "replicaCount" $v.replicaCount
  "resources" $v.resources
  "affinity" $v.affinity
  "nodeSelector" $v.nodeSelector
  "tolerations" $v.tolerations
  "topologySpreadConstraints" $v.topologySpreadConstraints
  "podAnnotations" $v.podAnnotations
  "podLabels" $v.podLabels
  "autoscaling" $v.autoscaling
  "podDisruptionBudget" $v.podDisruptionBudget
  "terminationGracePeriodSeconds" $v.terminationGracePeriodSeconds }}
{{- toYaml (mustMergeOverwrite (deepCopy $defaults) (deepCopy (default dict .values))) }}
{{- end }}

{{/* khook.config renders khook.yaml, the one configuration file every stage reads. */}}
{{- define "khook.config" -}}
{{- $v := .Values }}
{{- $nats := dict "url" $v.nats.url }}
{{- if $v.nats.credentialsSecret.name }}
{{- $_ := set $nats "credentials_file" (printf "/etc/khook/nats-creds/%s" $v.nats.credentialsSecret.key) }}
{{- end }}
{{- if $v.nats.tls.secretName }}
{{- $tls := dict "ca_file" "/etc/khook/nats-tls/ca.crt" }}
{{- if $v.nats.tls.clientAuth }}
{{- $_ := set $tls "cert_file" "/etc/khook/nats-tls/tls.crt" }}
{{- $_ := set $tls "key_file" "/etc/khook/nats-tls/tls.key" }}
{{- end }}
{{- $_ := set $nats "tls" $tls }}
{{- end }}
{{- $streams := dict "prefix" $v.streams.prefix }}
{{- range $s := list "raw" "events" "dlq" "outcomes" }}
{{- $_ := set $streams $s (mustMergeOverwrite (dict "replicas" ($v.streams.replicas | int)) (deepCopy (default dict (index $v.streams $s)))) }}
{{- end }}
{{- $kagent := dict "url" $v.kagent.url "protocol" (toString $v.kagent.protocol) "user_id" $v.kagent.userId "timeout" $v.kagent.timeout }}
{{- if $v.kagent.tokenSecret.name }}
{{- $_ := set $kagent "token_file" (printf "/etc/khook/kagent-token/%s" $v.kagent.tokenSecret.key) }}
{{- end }}
{{- if eq $v.deploymentMode "edge" }}
{{- /* An edge runs its own NATS server, a leaf node of the hub's: no nats.url. */}}
{{- $nats = dict "embedded" (dict "store_dir" "/data" "listen" "") }}
{{- end }}
{{- $cfg := dict
  "nats" $nats
  "streams" $streams
  "files" (dict "plugins" "/etc/khook/plugins/plugins.yaml" "mappings" "/etc/khook/mappings/event-mappings.yaml" "hooks" "/etc/khook/hooks/hooks.yaml")
  "dispatcher" (dict "workers" ($v.dispatcher.workers | int) "suppression_window" $v.dispatcher.suppressionWindow "max_attempts" ($v.dispatcher.maxAttempts | int) "drain_timeout" (printf "%ds" (max 1 (sub (int (default $v.terminationGracePeriodSeconds $v.dispatcher.terminationGracePeriodSeconds)) 10))))
  "kagent" $kagent
  "server" (dict "metrics_addr" ":8080" "probes_addr" ":8081")
  "log" (dict "level" $v.logLevel "format" $v.logFormat)
  "kubernetes" (dict "hooks" $v.hooks.source) }}
{{- if $v.cluster }}
{{- $_ := set $cfg "cluster" $v.cluster }}
{{- end }}
{{- if $v.clusters }}
{{- $list := list }}
{{- range $v.clusters }}{{ $list = append $list (dict "name" .) }}{{ end }}
{{- $_ := set $cfg "clusters" $list }}
{{- end }}
{{- if eq $v.deploymentMode "edge" }}
{{- $hub := dict "url" (required "edge.hub.url is required with deploymentMode edge (the hub's leaf node URL, nats-leaf://hub.example.com:7422)" $v.edge.hub.url) }}
{{- if $v.edge.hub.passwordSecret.name }}
{{- $_ := set $hub "username" $v.edge.hub.username }}
{{- $_ := set $hub "password_file" (printf "/etc/khook/edge-hub/%s" $v.edge.hub.passwordSecret.key) }}
{{- else if $v.edge.hub.credentialsSecret.name }}
{{- $_ := set $hub "credentials_file" (printf "/etc/khook/edge-creds/%s" $v.edge.hub.credentialsSecret.key) }}
{{- end }}
{{- if $v.edge.hub.tls.secretName }}
{{- $tls := dict "ca_file" "/etc/khook/edge-tls/ca.crt" }}
{{- if $v.edge.hub.tls.clientAuth }}
{{- $_ := set $tls "cert_file" "/etc/khook/edge-tls/tls.crt" }}
{{- $_ := set $tls "key_file" "/etc/khook/edge-tls/tls.key" }}
{{- end }}
{{- $_ := set $hub "tls" $tls }}
{{- end }}
{{- $_ := set $cfg "edge" (dict "hub" $hub "buffer" (dict "max_age" $v.edge.buffer.maxAge "max_bytes" ($v.edge.buffer.maxBytes | int64))) }}
{{- end }}
{{- if $v.api.enabled }}
{{- $_ := set $cfg "api" (dict "enabled" true "addr" ":8082" "token_file" (printf "/etc/khook/api-token/%s" $v.api.tokenSecret.key)) }}
{{- end }}
{{- toYaml (mustMergeOverwrite $cfg (deepCopy $v.config)) }}
{{- end }}

{{/* khook.checksums annotates pods with the config's hash when restartOnConfigChange. */}}
{{- define "khook.checksums" -}}
{{- if .Values.restartOnConfigChange }}
checksum/config: {{ include "khook.config" . | sha256sum }}
checksum/plugins: {{ include "khook.plugins" . | sha256sum }}
checksum/mappings: {{ toYaml .Values.eventMappings | sha256sum }}
checksum/hooks: {{ toYaml .Values.hooks | sha256sum }}
{{- end }}
{{- end }}

{{/*
khook.deployment renders one stage's Deployment, and its HPA and PDB. Call with a dict:
root ($), component (producer-webhook, mapper, ...), stage (a khook.stage result), args (the
khook subcommand and flags), serviceAccount, ports (extra container ports), volumes and
mounts (extra), webhook (true when the pod serves the webhook plugin), lagConsumer (the
durable name whose lag the HPA may scale on).
*/}}
{{- define "khook.deployment" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $s := .stage }}
{{- $name := .name | default (printf "%s-%s" (include "khook.fullname" $root) .component) }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "khook.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if .recreate }}
  # One pod owns the volume at a time: the old pod stops before the new one starts.
  replicas: 1
  strategy: {type: Recreate}
  {{- else if not $s.autoscaling.enabled }}
  replicas: {{ $s.replicaCount }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "khook.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ .component }}
  template:
    metadata:
      labels:
        {{- include "khook.selectorLabels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
        {{- with $s.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- if $v.metrics.podAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: "8080"
        prometheus.io/path: /metrics
        {{- end }}
        {{- with include "khook.checksums" $root | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $s.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ .serviceAccount }}
      # A release named khook has Services named khook-*, for which the kubelet would inject
      # KHOOK_* variables; khook finds its peers by DNS and needs none of them.
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $s.terminationGracePeriodSeconds | int }}
      automountServiceAccountToken: {{ .needsAPI }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      containers:
        - name: khook
          image: {{ include "khook.image" $root }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args:
            {{- range .args }}
            - {{ . | quote }}
            {{- end }}
            - --config
            - /etc/khook/config/khook.yaml
          ports:
            - {name: metrics, containerPort: 8080, protocol: TCP}
            - {name: probes, containerPort: 8081, protocol: TCP}
            {{- range .ports }}
            - {{ toYaml . | nindent 14 | trim }}
            {{- end }}
          env:
            - name: LOG_LEVEL
              value: {{ $v.logLevel | quote }}
            - name: LOG_FORMAT
              value: {{ $v.logFormat | quote }}
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef: {fieldPath: metadata.namespace}
            - name: POD_NAME
              valueFrom:
                fieldRef: {fieldPath: metadata.name}
            {{- with $v.tracing }}
            {{- if .otlpEndpoint }}
            - {name: OTEL_EXPORTER_OTLP_ENDPOINT, value: {{ .otlpEndpoint | quote }}}
            - {name: OTEL_EXPORTER_OTLP_PROTOCOL, value: {{ .protocol | quote }}}
            {{- end }}
            {{- if .jaegerEndpoint }}
            - {name: JAEGER_ENDPOINT, value: {{ .jaegerEndpoint | quote }}}
            {{- end }}
            {{- if .serviceName }}
            - {name: JAEGER_SERVICE_NAME, value: {{ .serviceName | quote }}}
            {{- end }}
            {{- if or .otlpEndpoint .jaegerEndpoint }}
            - {name: OTEL_TRACES_SAMPLER, value: {{ .sampler | quote }}}
            - {name: OTEL_TRACES_SAMPLER_ARG, value: {{ .samplerArg | quote }}}
            {{- end }}
            {{- end }}
            {{- range $v.secrets.env }}
            - name: {{ .name }}
              valueFrom:
                secretKeyRef:
                  name: {{ required "secrets.existingSecret is required when secrets.env is set" $v.secrets.existingSecret }}
                  key: {{ .key }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- with $v.envFrom }}
          envFrom:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          livenessProbe:
            httpGet: {path: /healthz, port: probes}
            initialDelaySeconds: {{ $v.probes.liveness.initialDelaySeconds }}
            periodSeconds: {{ $v.probes.liveness.periodSeconds }}
          readinessProbe:
            httpGet: {path: /readyz, port: probes}
            initialDelaySeconds: {{ $v.probes.readiness.initialDelaySeconds }}
            periodSeconds: {{ $v.probes.readiness.periodSeconds }}
          resources:
            {{- toYaml $s.resources | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "khook.volumeMounts" (dict "root" $root "webhook" .webhook "api" .api) | trim | nindent 12 }}
      volumes:
        {{- include "khook.volumes" (dict "root" $root "webhook" .webhook "api" .api) | trim | nindent 8 }}
      {{- with $s.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $s.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $s.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $s.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- if $s.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "khook.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ $name }}
  minReplicas: {{ $s.autoscaling.minReplicas }}
  maxReplicas: {{ $s.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $s.autoscaling.targetCPUUtilizationPercentage }}
    {{- if and .lagConsumer $s.autoscaling.consumerLag.enabled }}
    - type: Pods
      pods:
        metric:
          name: khook_consumer_pending_messages
          selector:
            matchLabels:
              consumer: {{ .lagConsumer }}
        target:
          type: AverageValue
          averageValue: {{ $s.autoscaling.consumerLag.targetAverageValue | quote }}
    {{- end }}
{{- end }}
{{- if and $s.podDisruptionBudget.enabled (or $s.autoscaling.enabled (gt (int $s.replicaCount) 1)) }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "khook.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  minAvailable: {{ $s.podDisruptionBudget.minAvailable }}
  selector:
    matchLabels:
      {{- include "khook.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/*
khook.volumes: the ConfigMaps are mounted as whole directories, never with subPath, because
kubelet only updates directory mounts; khook's file watcher follows its ..data symlink swap.
*/}}
{{- define "khook.volumes" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $full := include "khook.fullname" $root }}
- name: config
  configMap: {name: {{ $full }}-config}
- name: plugins
  configMap: {name: {{ include "khook.pluginConfigName" $root }}}
- name: mappings
  configMap: {name: {{ include "khook.eventMappingsName" $root }}}
{{- if ne $v.hooks.source "cluster" }}
- name: hooks
  configMap: {name: {{ $full }}-hooks}
{{- end }}
- name: tmp
  emptyDir: {sizeLimit: 64Mi}
{{- if eq $v.deploymentMode "edge" }}
{{- if $v.edge.persistence.enabled }}
- name: data
  persistentVolumeClaim: {claimName: {{ $full }}-edge-data}
{{- else }}
- name: data
  emptyDir: {}
{{- end }}
{{- with $v.edge.hub.passwordSecret.name }}
- name: edge-hub
  secret: {secretName: {{ . }}, defaultMode: 0440}
{{- end }}
{{- with $v.edge.hub.credentialsSecret.name }}
- name: edge-creds
  secret: {secretName: {{ . }}, defaultMode: 0440}
{{- end }}
{{- with $v.edge.hub.tls.secretName }}
- name: edge-tls
  secret: {secretName: {{ . }}, defaultMode: 0440}
{{- end }}
{{- end }}
{{- if $v.nats.credentialsSecret.name }}
- name: nats-creds
  secret: {secretName: {{ $v.nats.credentialsSecret.name }}, defaultMode: 0440}
{{- end }}
{{- if $v.nats.tls.secretName }}
- name: nats-tls
  secret: {secretName: {{ $v.nats.tls.secretName }}, defaultMode: 0440}
{{- end }}
{{- if $v.kagent.tokenSecret.name }}
- name: kagent-token
  secret: {secretName: {{ $v.kagent.tokenSecret.name }}, defaultMode: 0440}
{{- end }}
{{- if and $v.secrets.existingSecret $v.secrets.mountPath }}
- name: plugin-secrets
  secret: {secretName: {{ $v.secrets.existingSecret }}, defaultMode: 0440}
{{- end }}
{{- if and .webhook $v.webhook.tls.secretName }}
- name: webhook-tls
  secret: {secretName: {{ $v.webhook.tls.secretName }}, defaultMode: 0440}
{{- end }}
{{- if and .api $v.api.enabled }}
- name: api-token
  secret: {secretName: {{ required "api.tokenSecret.name is required when api.enabled is true" $v.api.tokenSecret.name }}, defaultMode: 0440}
{{- end }}
{{- with $v.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "khook.volumeMounts" -}}
{{- $v := .root.Values }}
- {name: config, mountPath: /etc/khook/config, readOnly: true}
- {name: plugins, mountPath: /etc/khook/plugins, readOnly: true}
- {name: mappings, mountPath: /etc/khook/mappings, readOnly: true}
{{- if ne $v.hooks.source "cluster" }}
- {name: hooks, mountPath: /etc/khook/hooks, readOnly: true}
{{- end }}
- {name: tmp, mountPath: /tmp}
{{- if eq $v.deploymentMode "edge" }}
- {name: data, mountPath: /data}
{{- if $v.edge.hub.passwordSecret.name }}
- {name: edge-hub, mountPath: /etc/khook/edge-hub, readOnly: true}
{{- end }}
{{- if $v.edge.hub.credentialsSecret.name }}
- {name: edge-creds, mountPath: /etc/khook/edge-creds, readOnly: true}
{{- end }}
{{- if $v.edge.hub.tls.secretName }}
- {name: edge-tls, mountPath: /etc/khook/edge-tls, readOnly: true}
{{- end }}
{{- end }}
{{- if $v.nats.credentialsSecret.name }}
- {name: nats-creds, mountPath: /etc/khook/nats-creds, readOnly: true}
{{- end }}
{{- if $v.nats.tls.secretName }}
- {name: nats-tls, mountPath: /etc/khook/nats-tls, readOnly: true}
{{- end }}
{{- if $v.kagent.tokenSecret.name }}
- {name: kagent-token, mountPath: /etc/khook/kagent-token, readOnly: true}
{{- end }}
{{- if and $v.secrets.existingSecret $v.secrets.mountPath }}
- {name: plugin-secrets, mountPath: {{ $v.secrets.mountPath }}, readOnly: true}
{{- end }}
{{- if and .webhook $v.webhook.tls.secretName }}
- {name: webhook-tls, mountPath: /etc/certs, readOnly: true}
{{- end }}
{{- if and .api $v.api.enabled }}
- {name: api-token, mountPath: /etc/khook/api-token, readOnly: true}
{{- end }}
{{- with $v.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- /*
khook.upstreamValues fails the release when the values carry upstream kagent-dev/khook's
chart keys, which this chart does not read: ignoring them would install a khook that calls
the wrong agent URL or logs at the wrong level, with nothing to say why. Each key names its
replacement; docs/kubernetes.md#migrating-from-upstream-khook has the whole table.
*/}}
{{- define "khook.upstreamValues" -}}
{{- $v := .Values }}
{{- $found := list }}
{{- $kagent := default dict $v.kagent }}
{{- if hasKey $kagent "apiUrl" }}{{ $found = append $found "kagent.apiUrl: set kagent.url" }}{{ end }}
{{- if or (hasKey $kagent "retryAttempts") (hasKey $kagent "retryBackoff") }}{{ $found = append $found "kagent.retryAttempts/retryBackoff: set dispatcher.maxAttempts (retries back off on their own)" }}{{ end }}
{{- if hasKey $v "controller" }}{{ $found = append $found "controller.*: set logLevel and logFormat; controller.deduplication.timeoutMinutes is dispatcher.suppressionWindow; leader election is not needed (the dispatcher scales out)" }}{{ end }}
{{- if hasKey $v "crds" }}{{ $found = append $found "crds.install: the CRD is the khook-crds chart (helm upgrade --install khook-crds ./helm/khook-crds)" }}{{ end }}
{{- if hasKey $v "healthCheck" }}{{ $found = append $found "healthCheck: set probes.liveness and probes.readiness" }}{{ end }}
{{- if hasKey (default dict $v.image) "registry" }}{{ $found = append $found "image.registry: put the registry in image.repository" }}{{ end }}
{{- if hasKey $v "namespace" }}{{ $found = append $found "namespace.*: use helm's --namespace and --create-namespace" }}{{ end }}
{{- $metrics := default dict $v.metrics }}
{{- if or (hasKey $metrics "enabled") (hasKey $metrics "port") }}{{ $found = append $found "metrics.enabled/metrics.port: metrics are always on port 8080" }}{{ end }}
{{- if $found }}
{{- fail (printf "values from upstream kagent-dev/khook's chart, which this chart does not read:\n  - %s\nSee docs/kubernetes.md#migrating-from-upstream-khook." (join "\n  - " $found)) }}
{{- end }}
{{- end }}
