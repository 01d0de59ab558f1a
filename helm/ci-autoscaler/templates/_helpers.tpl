{{/* Names ----------------------------------------------------------------------------- */}}

{{/* The chart name, or nameOverride; at most 63 characters. */}}
{{- define "ci-autoscaler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The object name prefix: fullnameOverride, else release-chart (the release name alone when
it already contains the chart name); at most 63 characters. */}}
{{- define "ci-autoscaler.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's objects: fullname-component, at most 52 characters so that a
StatefulSet's pod and revision names stay within the 63 of a label value.
Call: include "ci-autoscaler.componentName" (list . "worker") */}}
{{- define "ci-autoscaler.componentName" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%s" (include "ci-autoscaler.fullname" $ctx | trunc 40 | trimSuffix "-") (index . 1) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "ci-autoscaler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels ---------------------------------------------------------------------------- */}}

{{/* The labels that select one component's pods. Call with (list . "web"). */}}
{{- define "ci-autoscaler.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "ci-autoscaler.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Every label of one component's objects. Call with (list . "web"). */}}
{{- define "ci-autoscaler.labels" -}}
{{- $ctx := index . 0 -}}
helm.sh/chart: {{ include "ci-autoscaler.chart" $ctx }}
{{ include "ci-autoscaler.selectorLabels" . }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ci-autoscaler
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
{{- with $ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Capabilities ---------------------------------------------------------------------- */}}

{{/* "true" when the cluster (or .Values.apiVersions, for rendering without one) serves an
API, given as group/version plus kind. Call with (list . "monitoring.coreos.com/v1" "ServiceMonitor"). */}}
{{- define "ci-autoscaler.hasApi" -}}
{{- $ctx := index . 0 -}}
{{- $gv := index . 1 -}}
{{- $gvk := printf "%s/%s" $gv (index . 2) -}}
{{- if or ($ctx.Capabilities.APIVersions.Has $gvk) (has $gv $ctx.Values.apiVersions) (has $gvk $ctx.Values.apiVersions) -}}
true
{{- end -}}
{{- end -}}

{{/* Values derived once -------------------------------------------------------------- */}}

{{/* The namespace of the agent pods. */}}
{{- define "ci-autoscaler.agentNamespace" -}}
{{- default .Release.Namespace .Values.agents.namespace -}}
{{- end -}}

{{/* The service image reference. */}}
{{- define "ci-autoscaler.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the tokens. */}}
{{- define "ci-autoscaler.secretName" -}}
{{- default (include "ci-autoscaler.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The Secret the chart makes for Redis: the bundled Redis's password, or the external URL. */}}
{{- define "ci-autoscaler.redisSecretName" -}}
{{- include "ci-autoscaler.componentName" (list . "redis") -}}
{{- end -}}

{{/* The Jenkins API URL: jenkins.url, else the bundled controller's Service. */}}
{{- define "ci-autoscaler.jenkinsUrl" -}}
{{- if .Values.jenkins.url -}}
{{- .Values.jenkins.url -}}
{{- else if .Values.jenkinsController.enabled -}}
{{- printf "http://%s.%s.svc:%d" (include "ci-autoscaler.componentName" (list . "jenkins")) .Release.Namespace (int .Values.jenkinsController.service.port) -}}
{{- end -}}
{{- end -}}

{{/* Refuses value combinations that cannot work, with the reason. */}}
{{- define "ci-autoscaler.validate" -}}
{{- if and .Values.redis.enabled (or .Values.redis.external.url .Values.redis.external.existingSecret) -}}
{{- fail "redis: set redis.enabled=false to use redis.external, or leave redis.external empty for the bundled Redis" -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not (or .Values.redis.external.url .Values.redis.external.existingSecret)) -}}
{{- fail "redis: redis.enabled=false needs redis.external.url or redis.external.existingSecret" -}}
{{- end -}}
{{- if and .Values.worker.keda.enabled .Values.redis.external.existingSecret (not .Values.worker.keda.redis.address) -}}
{{- fail "worker.keda.redis.address (host:port) is required with redis.external.existingSecret" -}}
{{- end -}}
{{- end -}}

{{/* A secret value: the one given, else the one already in the cluster's Secret (so an
upgrade keeps it), else a new random one. Call with (dict "ctx" . "secret" NAME "key" KEY "value" GIVEN). */}}
{{- define "ci-autoscaler.keepOrGenerate" -}}
{{- if .value -}}
{{- .value -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- $data := (get (default dict $existing) "data") | default dict -}}
{{- if hasKey $data .key -}}
{{- index $data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment --------------------------------------------------------------------- */}}

{{/* REDIS_URL (and the bundled Redis's REDIS_PASSWORD it is built from). */}}
{{- define "ci-autoscaler.redisEnv" -}}
{{- if .Values.redis.enabled -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "ci-autoscaler.redisSecretName" . }}
      key: redis-password
- name: REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "ci-autoscaler.componentName" (list . "redis")) | quote }}
{{- else -}}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "ci-autoscaler.redisSecretName" .) .Values.redis.external.existingSecret }}
      key: {{ ternary .Values.redis.external.existingSecretKey "redis-url" (ne .Values.redis.external.existingSecret "") }}
{{- end -}}
{{- end -}}

{{/* Settings every process reads. */}}
{{- define "ci-autoscaler.commonEnv" -}}
- name: CI_AUTOSCALER_CONFIG
  value: /etc/ci-autoscaler/ci-autoscaler.yaml
- name: CI_AUTOSCALER_QUEUE
  value: {{ .Values.settings.queueName | quote }}
- name: CI_AUTOSCALER_KEY_PREFIX
  value: {{ .Values.settings.keyPrefix | quote }}
{{ include "ci-autoscaler.redisEnv" . }}
{{- end -}}

{{/* What the worker and the reconcile loop read: Jenkins, the agent namespace, placement. */}}
{{- define "ci-autoscaler.engineEnv" -}}
{{ include "ci-autoscaler.commonEnv" . }}
- name: JENKINS_URL
  value: {{ include "ci-autoscaler.jenkinsUrl" . | quote }}
{{- with .Values.jenkins.agentUrl }}
- name: JENKINS_AGENT_URL
  value: {{ . | quote }}
{{- end }}
- name: JENKINS_USER
  value: {{ .Values.jenkins.user | quote }}
- name: JENKINS_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "ci-autoscaler.secretName" . }}
      key: jenkins-api-token
- name: AGENT_NAMESPACE
  value: {{ include "ci-autoscaler.agentNamespace" . | quote }}
- name: CI_AUTOSCALER_TARGET_UTILISATION
  value: {{ .Values.settings.targetUtilisation | quote }}
- name: CI_AUTOSCALER_METRICS_INTERVAL_SECONDS
  value: {{ .Values.settings.metricsIntervalSeconds | quote }}
{{- if and .Values.settings.referenceNode.cpu .Values.settings.referenceNode.memory }}
- name: CI_AUTOSCALER_REFERENCE_NODE_CPU
  value: {{ .Values.settings.referenceNode.cpu | quote }}
- name: CI_AUTOSCALER_REFERENCE_NODE_MEMORY
  value: {{ .Values.settings.referenceNode.memory | quote }}
{{- end }}
{{- end -}}

{{/* Security --------------------------------------------------------------------------- */}}

{{/* The pod securityContext: never root, RuntimeDefault seccomp. Call with a uid. */}}
{{- define "ci-autoscaler.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Every container's securityContext: non-root, read-only root filesystem, no privilege
and no capability. Call with a uid. */}}
{{- define "ci-autoscaler.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* The uid the service image runs as (USER in the Dockerfile). */}}
{{- define "ci-autoscaler.uid" -}}10001{{- end -}}

{{/* The Secret and key of the Redis password for KEDA, as JSON; empty when there is none. */}}
{{- define "ci-autoscaler.kedaPasswordSecret" -}}
{{- if .Values.redis.enabled -}}
{{- dict "name" (include "ci-autoscaler.redisSecretName" .) "key" "redis-password" | toJson -}}
{{- else if .Values.redis.external.existingSecret -}}
{{- with .Values.redis.external.existingSecretPasswordKey -}}
{{- dict "name" $.Values.redis.external.existingSecret "key" . | toJson -}}
{{- end -}}
{{- else if contains ":" (urlParse .Values.redis.external.url).userinfo -}}
{{- dict "name" (include "ci-autoscaler.redisSecretName" .) "key" "redis-password" | toJson -}}
{{- end -}}
{{- end -}}
