{{/*
Names, labels and images shared by the templates. Object names are upstream's (values *.name), so
tools and runbooks written for upstream find the same objects.
*/}}

{{- define "spiderpool.labels" -}}
app.kubernetes.io/name: spiderpool
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "spiderpool.annotations" -}}
{{- with .Values.global.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "component" "spiderpool-agent" "context" $). */}}
{{- define "spiderpool.selectorLabels" -}}
app.kubernetes.io/name: spiderpool
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "spiderpool.agent.name" -}}
{{- .Values.spiderpoolAgent.name | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "spiderpool.controller.name" -}}
{{- .Values.spiderpoolController.name | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "spiderpool.init.name" -}}
{{- .Values.spiderpoolInit.name | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* An image reference: (dict "image" .Values.x.image "context" $). Digest wins over tag; the tag
defaults to v<appVersion>; global.imageRegistryOverride replaces the registry. */}}
{{- define "spiderpool.image" -}}
{{- $registry := .image.registry -}}
{{- with .context.Values.global.imageRegistryOverride }}{{ $registry = . }}{{ end -}}
{{- $repository := printf "%s/%s" $registry .image.repository | trimPrefix "/" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default (printf "v%s" .context.Chart.AppVersion) .image.tag) -}}
{{- end -}}
{{- end }}

{{/* Host names the probes use: the loopback of an enabled family. */}}
{{- define "spiderpool.probeHost" -}}
{{- .Values.ipam.enableIPv4 | ternary "127.0.0.1" "::1" -}}
{{- end }}

{{/* Features of upstream's chart that spiderpool-rs does not have: refuse to render rather than
silently install less than asked. */}}
{{- define "spiderpool.unsupported" -}}
{{- $unsupported := dict
  "rdma.rdmaSharedDevicePlugin.install" .Values.rdma.rdmaSharedDevicePlugin.install
  "sriov.install" .Values.sriov.install
  "spiderpoolAgent.prometheus.enabledRdmaMetric" .Values.spiderpoolAgent.prometheus.enabledRdmaMetric
  "spiderpoolController.podResourceInject.enabled" .Values.spiderpoolController.podResourceInject.enabled
  "spiderpoolController.enableValidatingResourcesDeletedWebhook" .Values.spiderpoolController.enableValidatingResourcesDeletedWebhook
  "spiderpoolAgent.networkResourcePlugin.enabled" (dig "networkResourcePlugin" "enabled" false .Values.spiderpoolAgent)
  "iaasNetworkProvider.serverUrl" (ne .Values.iaasNetworkProvider.serverUrl "")
-}}
{{- range $key, $on := $unsupported }}
{{- if $on }}
{{- fail (printf "%s: spiderpool-rs does not support this upstream feature (charts/spiderpool/README.md, \"Values we do not support\"); leave it at its default" $key) }}
{{- end }}
{{- end }}
{{- if and .Values.spiderpoolController.tls.method (not (has .Values.spiderpoolController.tls.method (list "auto" "provided" "certmanager"))) }}
{{- fail (printf "spiderpoolController.tls.method: %q is not one of auto, provided, certmanager" .Values.spiderpoolController.tls.method) }}
{{- end }}
{{- if and (eq .Values.spiderpoolController.tls.method "provided") (or (not .Values.spiderpoolController.tls.provided.tlsCert) (not .Values.spiderpoolController.tls.provided.tlsKey) (not .Values.spiderpoolController.tls.provided.tlsCa)) }}
{{- fail "spiderpoolController.tls.method=provided needs spiderpoolController.tls.provided.tlsCert, tlsKey and tlsCa (base64-encoded PEM)" }}
{{- end }}
{{- if ne .Values.coordinator.name "default" }}
{{- fail (printf "coordinator.name: %q; the operator reconciles only the SpiderCoordinator named default, as upstream's does" .Values.coordinator.name) }}
{{- end }}
{{- if and .Values.clusterDefaultPool.installIPv4IPPool (not .Values.ipam.enableIPv4) }}
{{- fail "clusterDefaultPool.installIPv4IPPool needs ipam.enableIPv4" }}
{{- end }}
{{- if and .Values.clusterDefaultPool.installIPv6IPPool (not .Values.ipam.enableIPv6) }}
{{- fail "clusterDefaultPool.installIPv6IPPool needs ipam.enableIPv6" }}
{{- end }}
{{- if and .Values.clusterDefaultPool.installIPv4IPPool (not .Values.clusterDefaultPool.ipv4Subnet) }}
{{- fail "clusterDefaultPool.installIPv4IPPool needs clusterDefaultPool.ipv4Subnet" }}
{{- end }}
{{- if and .Values.clusterDefaultPool.installIPv6IPPool (not .Values.clusterDefaultPool.ipv6Subnet) }}
{{- fail "clusterDefaultPool.installIPv6IPPool needs clusterDefaultPool.ipv6Subnet" }}
{{- end }}
{{- end }}
