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

{{/* A duration as values.schema.json takes it ("500ms", "10s", "1m", "2h") in milliseconds. Its
number read in base 10 (atoi), as Prometheus' model.ParseDuration reads it: mul and int64 alone
read a string with base 0 (spf13/cast), "010" as octal 8 and "09" as 0. */}}
{{- define "ci-autoscaler.durationMs" -}}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 -}}
{{- mul (atoi (regexFind "^[0-9]+" .)) (get $units (regexFind "(ms|s|m|h)$" .)) -}}
{{- end -}}

{{/* "true" when the chart makes the ServiceMonitor (enabled, and the cluster serves it). */}}
{{- define "ci-autoscaler.serviceMonitorRendered" -}}
{{- if and .Values.serviceMonitor.enabled (include "ci-autoscaler.hasApi" (list . "monitoring.coreos.com/v1" "ServiceMonitor")) -}}
true
{{- end -}}
{{- end -}}

{{/* Installations ----------------------------------------------------------------------- */}}

{{/* The web Service's label that names its release, copied onto every scraped series by the
ServiceMonitor (spec.targetLabels): two releases in one namespace share a job and a namespace,
and the alerts tell them apart by it. */}}
{{- define "ci-autoscaler.releaseLabel" -}}ci-autoscaler.io/release{{- end -}}

{{/* That label as the Prometheus Operator writes it on the series: every character but
[a-zA-Z0-9_] made "_" (sanitizeLabelName, pkg/prometheus/promcfg.go). The rules in
files/alerts.yaml name it so. */}}
{{- define "ci-autoscaler.releaseSeriesLabel" -}}
{{- regexReplaceAll "[^a-zA-Z0-9_]" (include "ci-autoscaler.releaseLabel" .) "_" -}}
{{- end -}}

{{/* Values derived once -------------------------------------------------------------- */}}

{{/* The namespace of the agent pods: agents.namespace, else "<release namespace>-agents". */}}
{{- define "ci-autoscaler.agentNamespace" -}}
{{- default (printf "%s-agents" .Release.Namespace | trunc 63 | trimAll "-") .Values.agents.namespace -}}
{{- end -}}

{{/* "true" when the agents have a namespace of their own (not the release's). */}}
{{- define "ci-autoscaler.agentsApart" -}}
{{- if ne (include "ci-autoscaler.agentNamespace" .) .Release.Namespace -}}true{{- end -}}
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
{{- /* the worker and reconcile pods exit at start without them ("JENKINS_URL: required"),
over and over: the install looked fine, the pods crash-loop */ -}}
{{- if not (include "ci-autoscaler.jenkinsUrl" .) -}}
{{- fail "jenkins.url is required: Jenkins' URL for the API (e.g. https://jenkins.example.com), or jenkinsController.enabled=true for the bundled one" -}}
{{- end -}}
{{- /* the bundled controller's user, as its token, may be made once it runs */ -}}
{{- if and (not .Values.jenkins.user) (not .Values.jenkinsController.enabled) -}}
{{- fail "jenkins.user is required: the Jenkins user whose API token is secrets.jenkinsApiToken" -}}
{{- end -}}
{{- $np := .Values.networkPolicy -}}
{{- if and $np.enabled $np.agents.enabled (not .Values.jenkinsController.enabled) (not $np.agents.jenkins.addresses) (not $np.agents.egress) -}}
{{- fail "networkPolicy.agents.jenkins.addresses: give Jenkins' addresses as CIDRs (e.g. [10.20.0.15/32]): agents may reach only DNS, Jenkins and networkPolicy.agents.egress" -}}
{{- end -}}
{{- end -}}

{{/* A secret value: the one given, else the one already in the release's Secret (`lookup`:
helm install and upgrade read the cluster; helm template and Argo CD get nothing back), else
the render fails naming the value to set. Never generated: a random value would change on every
render, and every Argo CD sync would rotate it. With "optional" true, empty is allowed.
Call with (dict "ctx" . "secret" NAME "key" KEY "value" GIVEN "name" VALUE-PATH). */}}
{{- define "ci-autoscaler.keepOrRequire" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- $data := (get (default dict $existing) "data") | default dict -}}
{{- if .value -}}
{{- .value -}}
{{- else if index $data .key -}}
{{- index $data .key | b64dec -}}
{{- else if not .optional -}}
{{- required (printf "%s is required: this release's Secret %s holds no %s to keep (make one with `openssl rand -hex 20`, or name your own Secret in secrets.existingSecret)" .name .secret .key) .value -}}
{{- end -}}
{{- end -}}

{{/* The TCP ports agents reach an external Jenkins on, as a JSON list:
networkPolicy.agents.jenkins.ports, else the port of jenkins.agentUrl (else jenkins.url; 443 for
https, 80 for http) and the inbound agent port 50000. */}}
{{- define "ci-autoscaler.jenkinsPorts" -}}
{{- $ports := .Values.networkPolicy.agents.jenkins.ports -}}
{{- if not $ports -}}
{{- $url := urlParse (default .Values.jenkins.url .Values.jenkins.agentUrl) -}}
{{- $port := 443 -}}
{{- if contains ":" $url.host -}}
{{- $port = atoi (last (splitList ":" $url.host)) -}}
{{- else if eq $url.scheme "http" -}}
{{- $port = 80 -}}
{{- end -}}
{{- $ports = list $port 50000 -}}
{{- end -}}
{{- toJson $ports -}}
{{- end -}}

{{/* Quantities ---------------------------------------------------------------------------- */}}

{{/* A Kubernetes memory quantity ("512Mi", "1.5Gi", "500M", "536870912") in bytes, as an
integer. */}}
{{- define "ci-autoscaler.bytes" -}}
{{- $q := toString . -}}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$" $q) -}}
{{- fail (printf "%q is not a memory quantity this chart can read (e.g. 512Mi, 1Gi, 500M)" $q) -}}
{{- end -}}
{{- $units := dict "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "k" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 -}}
{{- $unit := regexFind "[A-Za-z]+$" $q -}}
{{- $number := float64 (trimSuffix $unit $q) -}}
{{- printf "%.0f" (floor (mulf $number (get $units $unit | default 1.0))) -}}
{{- end -}}

{{/* Addresses -------------------------------------------------------------------------------- */}}

{{/* The cloud metadata addresses agents must never reach: AWS, GCP, Azure and OpenStack
(169.254.169.254), AWS's IPv6 one (fd00:ec2::254), Alibaba Cloud (100.100.100.200). */}}
{{- define "ci-autoscaler.metadataCidrs" -}}
169.254.169.254/32 fd00:ec2::254/128 100.100.100.200/32
{{- end -}}

{{/* A CIDR as JSON: {"family": 4 or 6, "bits": its address as a string of 32 or 128 0s and
1s, "prefix": its length}. Fails on anything else, naming it. */}}
{{- define "ci-autoscaler.cidrBits" -}}
{{- $cidr := toString . -}}
{{- $parts := splitList "/" $cidr -}}
{{- if ne (len $parts) 2 -}}
{{- fail (printf "%q is not a CIDR (address/length)" $cidr) -}}
{{- end -}}
{{- $address := index $parts 0 -}}
{{- $prefix := atoi (index $parts 1) -}}
{{- $bits := "" -}}
{{- $family := 4 -}}
{{- if regexMatch "^[0-9]{1,3}(\\.[0-9]{1,3}){3}$" $address -}}
{{- range splitList "." $address -}}
{{- if gt (atoi .) 255 -}}{{- fail (printf "%q is not a CIDR: %s is over 255" $cidr .) -}}{{- end -}}
{{- $bits = printf "%s%08b" $bits (atoi .) -}}
{{- end -}}
{{- else if regexMatch "^[0-9a-fA-F:]+$" $address -}}
{{- $family = 6 -}}
{{- $halves := splitList "::" (lower $address) -}}
{{- if gt (len $halves) 2 -}}{{- fail (printf "%q is not a CIDR: a double colon twice" $cidr) -}}{{- end -}}
{{- $head := ternary (list) (splitList ":" (index $halves 0)) (eq (index $halves 0) "") -}}
{{- $tail := list -}}
{{- if eq (len $halves) 2 -}}
{{- $tail = ternary (list) (splitList ":" (index $halves 1)) (eq (index $halves 1) "") -}}
{{- end -}}
{{- $missing := sub 8 (add (len $head) (len $tail)) -}}
{{- if or (lt $missing 0) (and (eq (len $halves) 1) (ne $missing 0)) -}}
{{- fail (printf "%q is not a CIDR: an IPv6 address has 8 groups" $cidr) -}}
{{- end -}}
{{- $groups := $head -}}
{{- range until (int $missing) -}}
{{- $groups = append $groups "0" -}}
{{- end -}}
{{- $groups = concat $groups $tail -}}
{{- $nibbles := dict "0" "0000" "1" "0001" "2" "0010" "3" "0011" "4" "0100" "5" "0101" "6" "0110" "7" "0111" "8" "1000" "9" "1001" "a" "1010" "b" "1011" "c" "1100" "d" "1101" "e" "1110" "f" "1111" -}}
{{- range $groups -}}
{{- if or (eq . "") (gt (len .) 4) -}}{{- fail (printf "%q is not a CIDR: group %q" $cidr .) -}}{{- end -}}
{{- range $digit := splitList "" (printf "%s%s" (repeat (sub 4 (len .) | int) "0") .) -}}
{{- $bits = printf "%s%s" $bits (get $nibbles $digit) -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- fail (printf "%q is not an IPv4 or IPv6 CIDR (IPv6 in hex groups)" $cidr) -}}
{{- end -}}
{{- if gt $prefix (len $bits) -}}
{{- fail (printf "%q is not a CIDR: a /%d is longer than the address" $cidr $prefix) -}}
{{- end -}}
{{- dict "family" $family "bits" $bits "prefix" $prefix | toJson -}}
{{- end -}}

{{/* "true" when CIDR `inner` lies within CIDR `outer` (same family; outer's prefix bits
equal). Call with (list OUTER INNER). */}}
{{- define "ci-autoscaler.cidrWithin" -}}
{{- $outer := include "ci-autoscaler.cidrBits" (index . 0) | fromJson -}}
{{- $inner := include "ci-autoscaler.cidrBits" (index . 1) | fromJson -}}
{{- $length := int $outer.prefix -}}
{{- if and (eq (int $outer.family) (int $inner.family)) (le $length (int $inner.prefix)) (eq (substr 0 $length $outer.bits) (substr 0 $length $inner.bits)) -}}
true
{{- end -}}
{{- end -}}

{{/* An egress rule for agents, as YAML, with every metadata address its ipBlocks contain added
to their `except`. Fails on a rule without `to` (it would reach every address) and on an
ipBlock inside a metadata address. Call with (list RULE WHERE). */}}
{{- define "ci-autoscaler.agentEgressRule" -}}
{{- $rule := deepCopy (index . 0) -}}
{{- $where := index . 1 -}}
{{- if not $rule.to -}}
{{- fail (printf "%s: give `to` (a rule without it reaches every address, cloud metadata included; use an ipBlock of 0.0.0.0/0 for anywhere, metadata excepted)" $where) -}}
{{- end -}}
{{- $metadata := splitList " " (include "ci-autoscaler.metadataCidrs" dict) -}}
{{- range $i, $peer := $rule.to -}}
{{- if $peer.ipBlock -}}
{{- $block := $peer.ipBlock -}}
{{- $except := $block.except | default list -}}
{{- range $m := $metadata -}}
{{- if include "ci-autoscaler.cidrWithin" (list $m $block.cidr) -}}
{{- fail (printf "%s: to[%d].ipBlock %s is a cloud metadata address: agents may never reach one" $where $i $block.cidr) -}}
{{- end -}}
{{- if and (include "ci-autoscaler.cidrWithin" (list $block.cidr $m)) (not (has $m $except)) -}}
{{- $except = append $except $m -}}
{{- end -}}
{{- end -}}
{{- if $except -}}
{{- $_ := set $block "except" $except -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{ toYaml $rule }}
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
{{- if .Values.redis.sentinel.enabled }}
{{/* The master is asked of the sentinels; REDIS_URL then gives only the password and db. */}}
- name: REDIS_SENTINELS
  value: {{ include "ci-autoscaler.sentinelAddresses" . | quote }}
- name: REDIS_SENTINEL_MASTER
  value: {{ .Values.redis.sentinel.masterName | quote }}
{{- /* The sentinel user that may only ask (statefulset-redis.yaml), not requirepass. */}}
- name: REDIS_SENTINEL_USERNAME
  value: {{ include "ci-autoscaler.sentinelClientUser" . | quote }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "ci-autoscaler.redisSecretName" . }}
      key: redis-sentinel-client-password
- name: CI_AUTOSCALER_REDIS_MIN_REPLICAS
  value: {{ .Values.redis.sentinel.minReplicas | quote }}
{{- end }}
{{- else -}}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "ci-autoscaler.redisSecretName" .) .Values.redis.external.existingSecret }}
      key: {{ ternary .Values.redis.external.existingSecretKey "redis-url" (ne .Values.redis.external.existingSecret "") }}
{{- with .Values.redis.external.sentinels }}
- name: REDIS_SENTINELS
  value: {{ join "," . | quote }}
- name: REDIS_SENTINEL_MASTER
  value: {{ required "redis.external.sentinelMaster: required with redis.external.sentinels" $.Values.redis.external.sentinelMaster | quote }}
- name: CI_AUTOSCALER_REDIS_MIN_REPLICAS
  value: {{ $.Values.redis.external.minReplicas | quote }}
{{- include "ci-autoscaler.externalSentinelPasswordEnv" $ }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* REDIS_SENTINEL_PASSWORD for your own sentinels, when they have one: the key
redis.external.existingSecretSentinelPasswordKey of existingSecret, else
redis.external.sentinelPassword in the chart's Secret; with redis.external.sentinelUsername,
the ACL user it is the password of (REDIS_SENTINEL_USERNAME; the processes refuse a user
without a password, so the render does first). */}}
{{- define "ci-autoscaler.externalSentinelPasswordEnv" -}}
{{- $external := .Values.redis.external -}}
{{- with $external.sentinelUsername }}
{{- if not (or $external.sentinelPassword (and $external.existingSecret $external.existingSecretSentinelPasswordKey)) }}
{{- fail "redis.external.sentinelUsername: requires redis.external.sentinelPassword (or existingSecret and existingSecretSentinelPasswordKey), that user's password" }}
{{- end }}
- name: REDIS_SENTINEL_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- if and $external.existingSecret $external.existingSecretSentinelPasswordKey }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $external.existingSecret }}
      key: {{ $external.existingSecretSentinelPasswordKey }}
{{- else if $external.sentinelPassword }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "ci-autoscaler.redisSecretName" . }}
      key: redis-sentinel-password
{{- end }}
{{- end -}}

{{/* The bundled sentinels' user for the service's processes: SENTINEL GET-MASTER-ADDR-BY-NAME,
MASTERS, MASTER, REPLICAS, SENTINELS and nothing else (no FAILOVER, SET, REMOVE, MONITOR). */}}
{{- define "ci-autoscaler.sentinelClientUser" -}}ci-autoscaler{{- end -}}

{{/* The bundled Redis's headless Service: a DNS name per pod, for replication and Sentinel. */}}
{{- define "ci-autoscaler.redisHeadless" -}}
{{- include "ci-autoscaler.componentName" (list . "redis-headless") -}}
{{- end -}}

{{/* The DNS name of Redis pod N (call with a list: context, N). */}}
{{- define "ci-autoscaler.redisPodHost" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%d.%s.%s.svc" (include "ci-autoscaler.componentName" (list $ctx "redis")) (int (index . 1)) (include "ci-autoscaler.redisHeadless" $ctx) $ctx.Release.Namespace -}}
{{- end -}}

{{/* REDIS_SENTINELS: host:port of the sentinel beside each Redis pod. */}}
{{- define "ci-autoscaler.sentinelAddresses" -}}
{{- $ctx := . -}}
{{- $out := list -}}
{{- range $i := until (int .Values.redis.sentinel.replicas) -}}
{{- $out = append $out (printf "%s:26379" (include "ci-autoscaler.redisPodHost" (list $ctx $i))) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* The web's REDIS_URL: the Redis user ci-autoscaler.redisWebUser (bundled Redis), or
redis.external.webUrl / existingSecretWebKey; an external Redis without either gives the web the
full URL (NOTES.txt warns). */}}
{{- define "ci-autoscaler.webRedisEnv" -}}
{{- if .Values.redis.enabled -}}
- name: REDIS_WEB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "ci-autoscaler.redisSecretName" . }}
      key: redis-web-password
- name: REDIS_URL
  value: {{ printf "redis://%s:$(REDIS_WEB_PASSWORD)@%s:6379/0" (include "ci-autoscaler.redisWebUser" .) (include "ci-autoscaler.componentName" (list . "redis")) | quote }}
{{- if .Values.redis.sentinel.enabled }}
- name: REDIS_SENTINELS
  value: {{ include "ci-autoscaler.sentinelAddresses" . | quote }}
- name: REDIS_SENTINEL_MASTER
  value: {{ .Values.redis.sentinel.masterName | quote }}
{{- /* The sentinel user that may only ask (statefulset-redis.yaml), not requirepass. */}}
- name: REDIS_SENTINEL_USERNAME
  value: {{ include "ci-autoscaler.sentinelClientUser" . | quote }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "ci-autoscaler.redisSecretName" . }}
      key: redis-sentinel-client-password
- name: CI_AUTOSCALER_REDIS_MIN_REPLICAS
  value: {{ .Values.redis.sentinel.minReplicas | quote }}
{{- end }}
{{- else if or .Values.redis.external.webUrl (and .Values.redis.external.existingSecret .Values.redis.external.existingSecretWebKey) -}}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "ci-autoscaler.redisSecretName" .) .Values.redis.external.existingSecret }}
      key: {{ ternary .Values.redis.external.existingSecretWebKey "redis-web-url" (ne .Values.redis.external.existingSecret "") }}
{{- with .Values.redis.external.sentinels }}
- name: REDIS_SENTINELS
  value: {{ join "," . | quote }}
- name: REDIS_SENTINEL_MASTER
  value: {{ required "redis.external.sentinelMaster: required with redis.external.sentinels" $.Values.redis.external.sentinelMaster | quote }}
- name: CI_AUTOSCALER_REDIS_MIN_REPLICAS
  value: {{ $.Values.redis.external.minReplicas | quote }}
{{- include "ci-autoscaler.externalSentinelPasswordEnv" $ }}
{{- end }}
{{- else -}}
{{ include "ci-autoscaler.redisEnv" . }}
{{- end -}}
{{- end -}}

{{/* The Redis user of the web process. */}}
{{- define "ci-autoscaler.redisWebUser" -}}cia-web{{- end -}}

{{/* The web's Redis ACL rules (after `user <name> on >password`): the commands the webhooks,
/healthz, /readyz, /metrics and /status send, and reads of RQ's queue, registries and workers;
never a job (rq:job:*), CONFIG, EVAL, SCRIPT or FUNCTION LOAD. Its one code is the intake's
functions (FCALL), which the worker loads (workers/adapters/intake.py). Of the service's keys
it may write only those the web writes (`~`, read and write), and read the rest (`%R~`, Redis
7.0 key permissions: https://redis.io/docs/management/security/acl/#key-permissions), so a
stolen web pod cannot plant a worker's record (issue 17: a build's `request`, which the
worker's repairs trigger from; live agents, capacity rows, warm agents, the mover's claimed
lists):
  delivery:*     deliveries' dedupe marks (the intake's functions; also the catch-up's mark of
                 a commit, which push_run reads: FCALL's declared keys are read-write keys)
  intake         the intake list (pushes, tag pushes, STARTED and ending notifications,
                 spool drain); a STARTED's mark_running and commit status touch are the
                 worker's mover's (workers.engine.started), so build:*, live-agents,
                 agents-dirty and commit-status:due are read only
  commit:*       commits' run marks (push_run)
  metrics:ci_autoscaler_notifications_ignored_total
                 the one counter the web keeps in Redis (a forged notification)
README "Redis users" shows the same line for an external Redis. */}}
{{- define "ci-autoscaler.redisWebAcl" -}}
{{- $p := .Values.settings.keyPrefix -}}
{{- $q := .Values.settings.queueName -}}
resetkeys resetchannels -@all +ping +auth +info +multi +exec +discard +fcall +wait +exists +ttl +get +set +hget +hmget +hgetall +hset +hsetnx +hdel +hincrby +hincrbyfloat +sadd +srem +smembers +scard +zadd +zcard +zrange +zrevrange +zrangebyscore +zremrangebyrank +zinter +llen +rpush ~{{ $p }}delivery:* ~{{ $p }}intake ~{{ $p }}commit:* ~{{ $p }}metrics:ci_autoscaler_notifications_ignored_total %R~{{ $p }}* %R~rq:queue:{{ $q }} %R~rq:wip:{{ $q }} %R~rq:scheduled:{{ $q }} %R~rq:deferred:{{ $q }} %R~rq:failed:{{ $q }} %R~rq:workers:{{ $q }} %R~rq:worker:*
{{- end -}}

{{/* Settings every process reads, but Redis's address. */}}
{{- define "ci-autoscaler.settingsEnv" -}}
- name: CI_AUTOSCALER_CONFIG
  value: /etc/ci-autoscaler/ci-autoscaler.yaml
- name: CI_AUTOSCALER_QUEUE
  value: {{ .Values.settings.queueName | quote }}
- name: CI_AUTOSCALER_KEY_PREFIX
  value: {{ .Values.settings.keyPrefix | quote }}
- name: CI_AUTOSCALER_INSTALLATION
  value: {{ .Values.settings.installation | default (printf "%s/%s" .Release.Namespace .Release.Name) | quote }}
{{- end -}}

{{/* Settings every engine process reads (worker, reconcile): Redis with full rights. */}}
{{- define "ci-autoscaler.commonEnv" -}}
{{ include "ci-autoscaler.settingsEnv" . }}
{{ include "ci-autoscaler.redisEnv" . }}
{{- end -}}

{{/* The web's settings: Redis as its own user; Jenkins' URL (no credentials), which the web
no longer reads since a STARTED's run page is checked by the worker (workers.engine.run_links). */}}
{{- define "ci-autoscaler.webEnv" -}}
{{ include "ci-autoscaler.settingsEnv" . }}
{{ include "ci-autoscaler.webRedisEnv" . }}
- name: JENKINS_URL
  value: {{ include "ci-autoscaler.jenkinsUrl" . | quote }}
{{- with .Values.jenkins.publicUrl }}
- name: JENKINS_PUBLIC_URL
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* What the worker and the reconcile loop read: Jenkins, the agent namespace, placement. */}}
{{/* caBundle: the operator's CAs for Jenkins' and GitLab's HTTPS, in the pods that call them
(worker, reconcile): python-requests reads REQUESTS_CA_BUNDLE (python-jenkins, python-gitlab). */}}
{{- define "ci-autoscaler.caBundleMount" -}}
{{- if .Values.caBundle.configMap -}}
- name: ca-bundle
  mountPath: /etc/ci-autoscaler-ca
  readOnly: true
{{- end -}}
{{- end -}}

{{- define "ci-autoscaler.caBundleVolume" -}}
{{- if .Values.caBundle.configMap -}}
- name: ca-bundle
  configMap:
    name: {{ .Values.caBundle.configMap }}
{{- end -}}
{{- end -}}

{{- define "ci-autoscaler.engineEnv" -}}
{{ include "ci-autoscaler.commonEnv" . }}
{{- if .Values.caBundle.configMap }}
- name: REQUESTS_CA_BUNDLE
  value: {{ printf "/etc/ci-autoscaler-ca/%s" .Values.caBundle.key | quote }}
{{- end }}
- name: JENKINS_URL
  value: {{ include "ci-autoscaler.jenkinsUrl" . | quote }}
{{- with .Values.jenkins.publicUrl }}
{{- /* a STARTED's run page is recorded only under it or JENKINS_URL (the intake's mover:
workers.engine.run_links) */}}
- name: JENKINS_PUBLIC_URL
  value: {{ . | quote }}
{{- end }}
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
- name: CI_AUTOSCALER_PLACEMENT_CANDIDATES
  value: {{ .Values.settings.placementCandidates | quote }}
- name: CI_AUTOSCALER_SCALE_UP_PODS
  value: {{ .Values.settings.scaleUpPods.enabled | quote }}
- name: CI_AUTOSCALER_SCALE_UP_IMAGE
  value: {{ .Values.settings.scaleUpPods.image | quote }}
- name: CI_AUTOSCALER_SCALE_UP_PODS_MAX
  value: {{ .Values.settings.scaleUpPods.max | quote }}
- name: CI_AUTOSCALER_METRICS_INTERVAL_SECONDS
  value: {{ .Values.settings.metricsIntervalSeconds | quote }}
{{- /* Both or neither: one alone rendered nothing, and nodes_needed counted in the most common
shape without a word (the processes refuse either variable without the other). */}}
{{- $reference := .Values.settings.referenceNode }}
{{- if and $reference.cpu (not $reference.memory) }}
{{- fail "settings.referenceNode.memory: required with settings.referenceNode.cpu (the reference node's shape is both; leave both empty for the most common shape of the nodes)" }}
{{- end }}
{{- if and $reference.memory (not $reference.cpu) }}
{{- fail "settings.referenceNode.cpu: required with settings.referenceNode.memory (the reference node's shape is both; leave both empty for the most common shape of the nodes)" }}
{{- end }}
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

{{/* The ACL user of redis.external.url (rediss://USER:password@...), else empty. */}}
{{- define "ci-autoscaler.externalRedisUser" -}}
{{- $userinfo := (urlParse .Values.redis.external.url).userinfo -}}
{{- if contains ":" $userinfo -}}
{{- (splitn ":" 2 $userinfo)._0 -}}
{{- end -}}
{{- end -}}

{{/* Defaults under `helm upgrade --reuse-values` ------------------------------------------ */}}

{{/* Gives .Values, in place, every default of this chart's values.yaml (files/defaults.yaml, a
link to it) that an older chart's values lacked. `helm upgrade --reuse-values` renders the new
templates with the old release's values alone (Helm's action/upgrade.go reuseValues: the chart's
values.yaml is replaced by the old chart's), so a value added since is missing, not its default:
a template reading it rendered nothing or failed on a nil map ("nil pointer evaluating
interface {}.enabled"), and the upgrade from such a release failed. A key every chart has had
(files/first-chart-keys.yaml) is not given back: missing, the operator deleted it with
`--set key=null`. Maps are merged key by key, as Helm merges values; a value of another kind
(a list, a string) is the operator's and kept. Every template includes it first; it changes
nothing when the values are on today's values.yaml (their valuesKeys is today's: `helm install`,
and `helm upgrade` without --reuse-values), where a missing key is one the operator deleted.
Call: include "ci-autoscaler.defaults" . */}}
{{- define "ci-autoscaler.defaults" -}}
{{- if not (hasKey .Release "ciAutoscalerDefaultsGiven") -}}
{{- $defaults := fromYaml (.Files.Get "files/defaults.yaml") -}}
{{- /* Values on today's values.yaml (install, upgrade without --reuse-values) lack only what the
operator deleted: Helm's `--set key=null` must keep working (e.g. a DNS podSelector's default
k8s-app label on OpenShift); only an older chart's values (another valuesKeys) are filled. */ -}}
{{- if ne (toString .Values.valuesKeys) (toString $defaults.valuesKeys) -}}
{{- include "ci-autoscaler.fillDefaults" (list .Values $defaults (fromYaml (.Files.Get "files/first-chart-keys.yaml"))) -}}
{{- end -}}
{{- /* Once per render: .Release is made afresh for each render and never stored. */ -}}
{{- $_ := set .Release "ciAutoscalerDefaultsGiven" true -}}
{{- end -}}
{{- end -}}

{{/* One level of ci-autoscaler.defaults. Call with (list VALUES DEFAULTS FIRST-KEYS). */}}
{{- define "ci-autoscaler.fillDefaults" -}}
{{- $values := index . 0 -}}
{{- $first := index . 2 | default dict -}}
{{- range $key, $default := index . 1 -}}
{{- if not (hasKey $values $key) -}}
{{- if not (hasKey $first $key) -}}
{{- $_ := set $values $key $default -}}
{{- end -}}
{{- else if and (kindIs "map" $default) (kindIs "map" (index $values $key)) -}}
{{- include "ci-autoscaler.fillDefaults" (list (index $values $key) $default (get $first $key)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A LabelSelector of values.yaml as the operator gave it, as JSON. Call with (list GIVEN
DEFAULT): GIVEN from .Values, DEFAULT the same key of files/defaults.yaml. Helm merges a map given
in values into the default map key by key (pkg/chartutil/coalesce.go), so a selector of one's own
(a Traefik's labels) kept the default's labels (ingress-nginx's) beside its own, and the API
server, which ANDs them, matched no pod: every webhook (or DNS query) silently dropped. When the
selector differs from the default, the default's matchLabels pairs left unchanged are dropped
(and the default's matchExpressions when they are unchanged too). */}}
{{- define "ci-autoscaler.ownSelector" -}}
{{- $given := index . 0 -}}
{{- $default := index . 1 | default dict -}}
{{- if or (not (kindIs "map" $given)) (eq (toJson $given) (toJson $default)) -}}
{{- toJson $given -}}
{{- else -}}
{{- $own := deepCopy $given -}}
{{- $defaultLabels := $default.matchLabels | default dict -}}
{{- $labels := dict -}}
{{- range $key, $value := $own.matchLabels | default dict -}}
{{- if not (and (hasKey $defaultLabels $key) (eq (toJson $value) (toJson (get $defaultLabels $key)))) -}}
{{- $_ := set $labels $key $value -}}
{{- end -}}
{{- end -}}
{{- $_ := unset $own "matchLabels" -}}
{{- if $labels -}}
{{- $_ := set $own "matchLabels" $labels -}}
{{- end -}}
{{- if and (hasKey $default "matchExpressions") (eq (toJson $own.matchExpressions) (toJson $default.matchExpressions)) -}}
{{- $_ := unset $own "matchExpressions" -}}
{{- end -}}
{{- toJson $own -}}
{{- end -}}
{{- end -}}

{{/* Installation ------------------------------------------------------------------------ */}}

{{/* This release's installation identity (CI_AUTOSCALER_INSTALLATION): settings.installation,
else "<release namespace>/<release name>". */}}
{{- define "ci-autoscaler.installation" -}}
{{- .Values.settings.installation | default (printf "%s/%s" .Release.Namespace .Release.Name) -}}
{{- end -}}

{{/* The installation label value the service puts on its agent pods
(workers/core/installation_pods.py, label_value): the identity with every character a label
value may not hold made "."; one over 63 characters is cut to 54, trailing ".", "_" and "-"
dropped, and ends in "-" and the first 8 hex digits of the identity's SHA-256. */}}
{{- define "ci-autoscaler.installationLabel" -}}
{{- $id := include "ci-autoscaler.installation" . -}}
{{- $readable := regexReplaceAll "[^A-Za-z0-9._-]" $id "." -}}
{{- if le (len $readable) 63 -}}
{{- $readable -}}
{{- else -}}
{{- printf "%s-%s" (regexReplaceAll "[._-]+$" (trunc 54 $readable) "") (trunc 8 (sha256sum $id)) -}}
{{- end -}}
{{- end -}}

{{/* A digest of the data of the chart's Secrets a pod reads (call with (list . "secret.yaml"
"secret-redis.yaml")), for its template's annotation: a container reads env from a Secret only
when it starts, so a `helm upgrade` that changed a token or the Redis password (the bundled
Jenkins's API token given once Jenkins runs, a rotation) left the pods on the old one until
each was restarted by hand: the worker's Jenkins calls refused (401), the web's Redis AUTH
refused (every push spooled), a Redis pod on its old requirepass. One-way, and of the data
alone: a new chart version with the same secrets restarts nothing. Secrets of your own
(secrets.existingSecret, redis.external.existingSecret) are not read: restart the pods
yourself when you change them. */}}
{{- define "ci-autoscaler.secretsChecksum" -}}
{{- $ctx := index . 0 -}}
{{- /* The tokens' Secret is rendered first whatever is asked, so that an install missing
several secrets still names the tokens first (secrets.gitlabWebhookToken), then the Redis
password. */ -}}
{{- $_ := include (print $ctx.Template.BasePath "/secret.yaml") $ctx -}}
{{- $data := list -}}
{{- range $file := rest . -}}
{{- $data = append $data ((include (print $ctx.Template.BasePath "/" $file) $ctx | fromYaml).data | default dict) -}}
{{- end -}}
{{- $data | toJson | sha256sum -}}
{{- end -}}

{{/* A Kubernetes quantity ("512Mi", "1.5G", 268435456) in bytes, as a float; "" when it is not
one (values.schema.json refuses those anyway). A number is bytes already: Helm reads a values
file's numbers as floats, which toString writes "3.145728e+08", no quantity's form. */}}
{{- define "ci-autoscaler.quantityBytes" -}}
{{- if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) -}}
{{- float64 . -}}
{{- else -}}
{{- $q := toString . -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $units := dict "" 1.0 "m" 0.001 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 -}}
{{- $unit := trimPrefix $num $q -}}
{{- if and $num (hasKey $units $unit) -}}
{{- mulf (float64 $num) (get $units $unit) -}}
{{- end -}}
{{- end -}}
{{- end -}}
