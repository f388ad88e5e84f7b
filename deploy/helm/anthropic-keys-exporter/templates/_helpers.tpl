{{/*
Names and labels, as the prometheus-community charts spell them.
*/}}
{{- define "anthropic-keys-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name. When the release name already contains the chart name it is used alone, so that
`helm install anthropic-keys-exporter` does not produce anthropic-keys-exporter-anthropic-keys-exporter.
*/}}
{{- define "anthropic-keys-exporter.fullname" -}}
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

{{- define "anthropic-keys-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "anthropic-keys-exporter.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "anthropic-keys-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "anthropic-keys-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "anthropic-keys-exporter.labels" -}}
helm.sh/chart: {{ include "anthropic-keys-exporter.chart" . }}
{{ include "anthropic-keys-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: exporter
app.kubernetes.io/part-of: anthropic-keys-exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "anthropic-keys-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "anthropic-keys-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "anthropic-keys-exporter.image" -}}
{{- .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- with .Values.image.digest }}@{{ . }}{{ end }}
{{- end }}

{{/*
Where things are inside the container. Every Secret and ConfigMap is mounted as a whole directory, never
with subPath: the kubelet updates a directory mount when its source changes, and the exporter re-reads key
files before every poll and reloads its configuration file and web configuration when they change.
*/}}
{{- define "anthropic-keys-exporter.configDir" -}}/etc/anthropic-keys-exporter/config{{- end }}
{{- define "anthropic-keys-exporter.configFile" -}}{{ include "anthropic-keys-exporter.configDir" . }}/config.yml{{- end }}
{{- define "anthropic-keys-exporter.keysDir" -}}/etc/anthropic-keys-exporter/keys{{- end }}
{{- define "anthropic-keys-exporter.webConfigDir" -}}/etc/anthropic-keys-exporter/web{{- end }}
{{- define "anthropic-keys-exporter.webConfigFile" -}}{{ include "anthropic-keys-exporter.webConfigDir" . }}/web-config.yml{{- end }}
{{- define "anthropic-keys-exporter.tlsDir" -}}/etc/anthropic-keys-exporter/tls{{- end }}

{{/* The Secret the chart creates for the organizations whose adminKey is given in the values. */}}
{{- define "anthropic-keys-exporter.adminKeysSecretName" -}}
{{- printf "%s-admin-keys" (include "anthropic-keys-exporter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "anthropic-keys-exporter.webConfigSecretName" -}}
{{- printf "%s-web-config" (include "anthropic-keys-exporter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "anthropic-keys-exporter.sharded" -}}
{{- if gt (int .Values.sharding.totalShards) 1 }}true{{ end }}
{{- end }}

{{/* Whether the exporter gets a web configuration file: TLS, basic auth or response headers. */}}
{{- define "anthropic-keys-exporter.webConfigEnabled" -}}
{{- $web := .Values.webConfig }}
{{- if or $web.tls.enabled $web.basicAuthUsers $web.httpHeaders }}true{{ end }}
{{- end }}

{{/* Checks the values cannot express in values.schema.json; called by every workload rendering. */}}
{{- define "anthropic-keys-exporter.validate" -}}
{{- $names := dict }}
{{- range .Values.organizations }}
{{- if hasKey $names .name }}
{{- fail (printf "organizations: the name %q appears twice; each organization needs a name of its own (it is the `organization` label)" .name) }}
{{- end }}
{{- $_ := set $names .name true }}
{{- end }}
{{- if include "anthropic-keys-exporter.sharded" . }}
{{- if semverCompare "<1.28-0" .Capabilities.KubeVersion.Version }}
{{- fail (printf "sharding.totalShards > 1 needs Kubernetes 1.28 or later (the pod label apps.kubernetes.io/pod-index gives each pod its shard); this cluster is %s" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if ne (int .Values.replicaCount) 1 }}
{{- fail "replicaCount applies to the unsharded Deployment; with sharding.totalShards > 1 the StatefulSet runs one pod per shard: leave replicaCount at 1" }}
{{- end }}
{{- end }}
{{- $tls := .Values.webConfig.tls }}
{{- if $tls.enabled }}
{{- if not $tls.existingSecret }}
{{- fail "webConfig.tls.enabled needs webConfig.tls.existingSecret: the Secret (type kubernetes.io/tls) holding the server certificate and key" }}
{{- end }}
{{- if eq $tls.clientAuthType "RequireAndVerifyClientCert" }}
{{- fail "webConfig.tls.clientAuthType RequireAndVerifyClientCert would fail the kubelet's liveness and readiness probes, which present no client certificate; use VerifyClientCertIfGiven (with basic auth for clients without a certificate)" }}
{{- end }}
{{- if and (eq $tls.clientAuthType "VerifyClientCertIfGiven") (not $tls.clientCaKey) }}
{{- fail "webConfig.tls.clientAuthType VerifyClientCertIfGiven needs webConfig.tls.clientCaKey: the key of the CA bundle in webConfig.tls.existingSecret" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The shard an organization belongs to, as the exporter computes it: the first 8 bytes of SHA-256(name) as a
big-endian unsigned integer, modulo the number of shards. Computed digit by digit (acc = (acc*16 + d) % M)
so that no intermediate value exceeds 16*M: template integers are signed 64-bit.
Call with (dict "name" NAME "shards" M).
*/}}
{{- define "anthropic-keys-exporter.shardOf" -}}
{{- $digits := dict "0" 0 "1" 1 "2" 2 "3" 3 "4" 4 "5" 5 "6" 6 "7" 7 "8" 8 "9" 9 "a" 10 "b" 11 "c" 12 "d" 13 "e" 14 "f" 15 }}
{{- $shards := int .shards }}
{{- $acc := 0 }}
{{- range $char := splitList "" (substr 0 16 (sha256sum .name)) }}
{{- $acc = mod (add (mul $acc 16) (get $digits $char)) $shards }}
{{- end }}
{{- $acc }}
{{- end }}

{{- define "anthropic-keys-exporter.headlessServiceName" -}}
{{- printf "%s-headless" (include "anthropic-keys-exporter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The job regular expression AnthropicExporterDown watches: the chart's override when the chart renders the
rules, else the rules file's.
*/}}
{{- define "anthropic-keys-exporter.downJob" -}}
{{- $override := "" }}
{{- if .Values.prometheusRule.enabled }}
{{- $override = dig "AnthropicExporterDown" "warning" "job" "" .Values.prometheusRule.alerts }}
{{- end }}
{{- $override | default (regexFind "job=~\"[^\"]*\"" (.Files.Get "files/anthropic-keys-exporter.rules.yml") | trimPrefix "job=~\"" | trimSuffix "\"") }}
{{- end }}
