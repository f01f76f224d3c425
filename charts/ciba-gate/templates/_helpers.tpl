{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "ciba-gate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, or release-chart. */}}
{{- define "ciba-gate.fullname" -}}
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

{{- define "ciba-gate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "ciba-gate.labels" -}}
helm.sh/chart: {{ include "ciba-gate.chart" . }}
app.kubernetes.io/name: {{ include "ciba-gate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ciba-gate
{{- end }}

{{/* Selector of the workload's pods (Deployment, PDB). */}}
{{- define "ciba-gate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ciba-gate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The label every pod running this release's sidecar carries (in sidecarOnly mode:
add it to your workload's pod template). The callback Service and the NetworkPolicy
select it: all of these pods share one store and one state key.
*/}}
{{- define "ciba-gate.gateLabel" -}}
ciba-gate/gate: {{ include "ciba-gate.fullname" . }}
{{- end }}

{{- define "ciba-gate.configMapName" -}}
{{- printf "%s-config" (include "ciba-gate.fullname" .) }}
{{- end }}

{{- define "ciba-gate.policiesConfigMapName" -}}
{{- if .Values.policies.existingConfigMap }}
{{- .Values.policies.existingConfigMap }}
{{- else }}
{{- printf "%s-policies" (include "ciba-gate.fullname" .) }}
{{- end }}
{{- end }}

{{- define "ciba-gate.redisName" -}}
{{- printf "%s-redis" (include "ciba-gate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ciba-gate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The sidecar's config file: .Values.config with the keys the chart owns set from
other values (listen addresses, policy directory, store, OP, callback, TLS paths).
*/}}
{{- define "ciba-gate.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $_ := set $cfg "listen" (printf "127.0.0.1:%v" .Values.ports.proxy) }}
{{- $policy := dict "dir" "/etc/ciba-gate/policies" }}
{{- $_ := set $cfg "policy" (mergeOverwrite (default dict $cfg.policy) $policy) }}
{{- $_ := set $cfg "admin" (dict "listen" (printf "0.0.0.0:%v" .Values.ports.admin)) }}
{{- $_ := set $cfg "store" (dict "kind" "redis" "url_env" "REDIS_URL" "key_prefix" .Values.redis.keyPrefix) }}
{{- if .Values.op.enabled }}
{{- $approvals := default dict $cfg.approvals }}
{{- $clientAuth := dict "method" .Values.op.clientAuthMethod "secret" (dict "env" "CIBA_CLIENT_SECRET") }}
{{- $op := dict "issuer" (required "op.issuer is required when op.enabled" .Values.op.issuer) "client_id" (required "op.clientId is required when op.enabled" .Values.op.clientId) "client_auth" $clientAuth "delivery" .Values.op.delivery }}
{{- $_ := set $approvals "op" (mergeOverwrite (default dict $approvals.op) $op) }}
{{- $_ := set $approvals "user" (dict "hint_type" .Values.op.loginHintType "env" "CIBA_LOGIN_HINT") }}
{{- $_ := set $approvals "state_key" (dict "env" "CIBA_GATE_STATE_KEY") }}
{{- if ne .Values.op.delivery "poll" }}
{{- $tls := dict "cert_file" "/etc/ciba-gate/tls/tls.crt" "key_file" "/etc/ciba-gate/tls/tls.key" }}
{{- $_ := set $approvals "callback" (dict "listen" (printf "0.0.0.0:%v" .Values.ports.callback) "path" .Values.op.callbackPath "tls" $tls) }}
{{- else }}
{{- $_ := unset $approvals "callback" }}
{{- end }}
{{- $_ := set $cfg "approvals" $approvals }}
{{- else }}
{{- $_ := unset $cfg "approvals" }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* Whether the callback listener runs (ping or push delivery). */}}
{{- define "ciba-gate.callbackEnabled" -}}
{{- if and .Values.op.enabled (ne .Values.op.delivery "poll") }}true{{ end }}
{{- end }}

{{/* The ciba-gate container. Used by the Deployment and printed by NOTES.txt in sidecarOnly mode. */}}
{{- define "ciba-gate.sidecarContainer" -}}
name: ciba-gate
image: {{ include "ciba-gate.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- if .Values.nativeSidecar }}
restartPolicy: Always
{{- end }}
args: ["serve", "--config", "/etc/ciba-gate/config.yaml"]
ports:
  {{- if include "ciba-gate.callbackEnabled" . }}
  - name: callback
    containerPort: {{ .Values.ports.callback }}
    protocol: TCP
  {{- end }}
  - name: admin
    containerPort: {{ .Values.ports.admin }}
    protocol: TCP
env:
  {{- if .Values.op.enabled }}
  - name: CIBA_CLIENT_SECRET
    valueFrom:
      secretKeyRef:
        name: {{ required "secrets.existingSecret is required when op.enabled" .Values.secrets.existingSecret }}
        key: {{ .Values.secrets.clientSecretKey }}
  - name: CIBA_GATE_STATE_KEY
    valueFrom:
      secretKeyRef:
        name: {{ .Values.secrets.existingSecret }}
        key: {{ .Values.secrets.stateKeyKey }}
  - name: CIBA_LOGIN_HINT
    valueFrom:
      secretKeyRef:
        name: {{ .Values.secrets.existingSecret }}
        key: {{ .Values.secrets.loginHintKey }}
  {{- end }}
  {{- if .Values.redis.enabled }}
  {{- if .Values.redis.auth.existingSecret }}
  - name: REDIS_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ .Values.redis.auth.existingSecret }}
        key: {{ .Values.redis.auth.passwordKey }}
  - name: REDIS_URL
    value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "ciba-gate.redisName" .) | quote }}
  {{- else }}
  - name: REDIS_URL
    value: {{ printf "redis://%s:6379/0" (include "ciba-gate.redisName" .) | quote }}
  {{- end }}
  {{- else }}
  - name: REDIS_URL
    valueFrom:
      secretKeyRef:
        name: {{ required "redis.external.existingSecret is required when redis.enabled is false" .Values.redis.external.existingSecret }}
        key: {{ .Values.redis.external.urlKey }}
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .Values.probes.startup }}
startupProbe:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.probes.liveness }}
livenessProbe:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.probes.readiness }}
readinessProbe:
  {{- toYaml . | nindent 2 }}
{{- end }}
resources:
  {{- toYaml .Values.resources | nindent 2 }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: ciba-gate-config
    mountPath: /etc/ciba-gate/config.yaml
    subPath: config.yaml
    readOnly: true
  - name: ciba-gate-policies
    mountPath: /etc/ciba-gate/policies
    readOnly: true
  {{- if include "ciba-gate.callbackEnabled" . }}
  - name: ciba-gate-tls
    mountPath: /etc/ciba-gate/tls
    readOnly: true
  {{- end }}
  - name: ciba-gate-tmp
    mountPath: /tmp
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* The sidecar's volumes. */}}
{{- define "ciba-gate.sidecarVolumes" -}}
- name: ciba-gate-config
  configMap:
    name: {{ include "ciba-gate.configMapName" . }}
- name: ciba-gate-policies
  configMap:
    name: {{ include "ciba-gate.policiesConfigMapName" . }}
{{- if include "ciba-gate.callbackEnabled" . }}
- name: ciba-gate-tls
  secret:
    secretName: {{ required "tls.existingSecret is required for ping/push delivery" .Values.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
- name: ciba-gate-tmp
  emptyDir:
    sizeLimit: 16Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
