{{/*
Names and labels. Every template here takes the chart's context (.Values, .Release, .Chart);
from a parent chart pass the subchart's: (index .Subcharts "shadow-sidecar").
*/}}
{{- define "shadow-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shadow-sidecar.fullname" -}}
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

{{- define "shadow-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Scale-out (kafka.scaleOut.enabled): the promoter Deployment and the replica StatefulSet pass
the chart context with one more key, shadowKafkaRole ("promoter" or "replica"):
  merge (dict "shadowKafkaRole" "replica") .
It becomes the app.kubernetes.io/component label (part of their selectors, so the two
workloads never select each other's pods) and the container's SHADOW_KAFKA_ROLE. Without it
(standalone, or the sidecar in your own pod) every template renders as before.
*/}}

{{- define "shadow-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shadow-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- with get . "shadowKafkaRole" }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "shadow-sidecar.labels" -}}
helm.sh/chart: {{ include "shadow-sidecar.chart" . }}
{{ include "shadow-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- if not (get . "shadowKafkaRole") }}
app.kubernetes.io/component: shadow-sidecar
{{- end }}
{{- end }}

{{/* The replica StatefulSet and its headless Service (52: room for the pod ordinal). */}}
{{- define "shadow-sidecar.replicaName" -}}
{{- printf "%s-replica" (include "shadow-sidecar.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "shadow-sidecar.policyConfigMap" -}}
{{- .Values.policy.existingConfigMap | default (printf "%s-policy" (include "shadow-sidecar.fullname" .)) }}
{{- end }}

{{- define "shadow-sidecar.tokenSecret" -}}
{{- .Values.adminToken.existingSecret | default (include "shadow-sidecar.fullname" .) }}
{{- end }}

{{/*
The tokens file (auth.tokensFile.existingSecret, or auth.tokens rendered into the Secret
<fullname>-tokens), mounted as a directory at /etc/shadow-auth (never with subPath: Kubernetes
swaps a mounted Secret's files in place only without it, and the sidecar re-reads the file on
change). "shadow-sidecar.tokensFile" is its path, empty without one; it refuses both sources
at once and an inline name or digest used twice (the sidecar would refuse that file).
*/}}
{{- define "shadow-sidecar.tokensFile" -}}
{{- $auth := .Values.auth | default dict }}
{{- $existing := dig "tokensFile" "existingSecret" "" $auth }}
{{- $inline := $auth.tokens | default list }}
{{- if and $existing $inline }}
{{- fail "auth.tokensFile.existingSecret and auth.tokens: set one of them, not both" }}
{{- end }}
{{- $names := dict }}
{{- $digests := dict }}
{{- range $i, $t := $inline }}
{{- if hasKey $names (toString $t.name) }}
{{- fail (printf "auth.tokens[%d].name: %q is used twice; names are audit actors" $i $t.name) }}
{{- end }}
{{- if hasKey $digests (toString $t.sha256) }}
{{- fail (printf "auth.tokens[%d].sha256: the same secret as %q" $i (get $digests (toString $t.sha256))) }}
{{- end }}
{{- $_ := set $names (toString $t.name) true }}
{{- $_ := set $digests (toString $t.sha256) (toString $t.name) }}
{{- end }}
{{- if or $existing $inline }}/etc/shadow-auth/tokens.yaml{{ end }}
{{- end }}

{{- define "shadow-sidecar.tokensSecret" -}}
{{- dig "tokensFile" "existingSecret" "" (.Values.auth | default dict) | default (printf "%s-tokens" (include "shadow-sidecar.fullname" .)) }}
{{- end }}

{{- define "shadow-sidecar.tokensKey" -}}
{{- $file := dig "tokensFile" dict (.Values.auth | default dict) }}
{{- if $file.existingSecret }}{{ $file.existingSecretKey | default "tokens.yaml" }}{{ else }}tokens.yaml{{ end }}
{{- end }}

{{- define "shadow-sidecar.dataClaim" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-data" (include "shadow-sidecar.fullname" .)) }}
{{- end }}

{{/*
The sidecar container. Include it in a pod's `containers:` list:
  containers:
    - name: my-app
      ...
    {{- include "shadow-sidecar.container" (index .Subcharts "shadow-sidecar") | nindent 4 }}
*/}}
{{- define "shadow-sidecar.container" -}}
- name: shadow-sidecar
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - run
    - --config
    - /etc/shadow/policy.yaml
    - --db
    - /var/lib/shadow/shadow.duckdb
    - --host
    - 0.0.0.0
    - --port
    - {{ .Values.containerPort | quote }}
    - --agent-concurrency
    - {{ .Values.agent.concurrency | quote }}
    - --agent-timeout
    - {{ .Values.agent.timeoutSeconds | quote }}
    {{- with .Values.agent.url }}
    - --agent
    - {{ . | quote }}
    {{- end }}
    {{- if .Values.kafka.enabled }}
    - --source
    - {{ printf "kafka://%s?events=%s&outcomes=%s&group=%s" .Values.kafka.bootstrap .Values.kafka.eventsTopic .Values.kafka.outcomesTopic .Values.kafka.group | quote }}
    {{- end }}
    {{- range .Values.extraSources }}
    - --source
    - {{ . | quote }}
    {{- end }}
    {{- if .Values.mirror.port }}
    - --mirror-port
    - {{ .Values.mirror.port | quote }}
    {{- end }}
    {{- if .Values.proxy.upstreamPort }}
    - --proxy-upstream
    - {{ printf "http://127.0.0.1:%v" .Values.proxy.upstreamPort | quote }}
    - --proxy-listen
    - {{ printf "0.0.0.0:%v" .Values.proxy.port | quote }}
    {{- end }}
  env:
    # Temp files (Python, DuckDB spill) go to the /tmp emptyDir: the root filesystem is read-only.
    - name: TMPDIR
      value: /tmp
    - name: HOME
      value: /tmp
    {{- if or .Values.adminToken.value .Values.adminToken.existingSecret }}
    - name: SHADOW_ADMIN_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ include "shadow-sidecar.tokenSecret" . }}
          key: {{ .Values.adminToken.existingSecretKey }}
    {{- end }}
    {{- with include "shadow-sidecar.tokensFile" . }}
    # Named credentials and their roles (docs/api.md); re-read within a second of a change.
    - name: SHADOW_TOKENS_FILE
      value: {{ . | quote }}
    {{- end }}
    {{- if dig "metricsOpen" false (.Values.auth | default dict) }}
    - name: SHADOW_METRICS_OPEN
      value: "true"
    {{- end }}
    {{- if .Values.kafka.enabled }}
    {{- with get . "shadowKafkaRole" }}
    - name: SHADOW_KAFKA_ROLE
      value: {{ . | quote }}
    {{- end }}
    {{- with .Values.kafka.comparisonsTopic }}
    - name: SHADOW_KAFKA_COMPARISONS_TOPIC
      value: {{ . | quote }}
    {{- end }}
    {{- with .Values.kafka.autonomyTopic }}
    - name: SHADOW_KAFKA_AUTONOMY_TOPIC
      value: {{ . | quote }}
    {{- end }}
    {{- end }}
    {{- with .Values.gateway.publicUrl }}
    - name: SHADOW_PUBLIC_URL
      value: {{ . | quote }}
    {{- end }}
    {{- with .Values.gateway.secret.existingSecret }}
    - name: SHADOW_GATEWAY_SECRET
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $.Values.gateway.secret.existingSecretKey }}
    {{- end }}
    {{- range .Values.gateway.upstreamSecrets }}
    - name: {{ .env }}
      valueFrom:
        secretKeyRef:
          name: {{ .secretName }}
          key: {{ .secretKey }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: shadow-http
      containerPort: {{ .Values.containerPort }}
      protocol: TCP
    {{- if .Values.mirror.port }}
    - name: shadow-mirror
      containerPort: {{ .Values.mirror.port }}
      protocol: TCP
    {{- end }}
    {{- if .Values.proxy.upstreamPort }}
    - name: shadow-proxy
      containerPort: {{ .Values.proxy.port }}
      protocol: TCP
    {{- end }}
  startupProbe:
    httpGet:
      path: /healthz
      port: shadow-http
    {{- toYaml .Values.probes.startup | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: shadow-http
    {{- toYaml .Values.probes.liveness | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: shadow-http
    {{- toYaml .Values.probes.readiness | nindent 4 }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: shadow-policy
      mountPath: /etc/shadow
      readOnly: true
    - name: shadow-data
      mountPath: /var/lib/shadow
    - name: shadow-tmp
      mountPath: /tmp
    {{- if include "shadow-sidecar.tokensFile" . }}
    # The whole directory, never a subPath: only then does Kubernetes update the file in place.
    - name: shadow-tokens
      mountPath: /etc/shadow-auth
      readOnly: true
    {{- end }}
{{- end }}

{{/*
The volumes the sidecar container mounts (shadow-tokens only with a tokens file). Include it
in the pod's `volumes:` list:
  volumes:
    {{- include "shadow-sidecar.volumes" (index .Subcharts "shadow-sidecar") | nindent 4 }}
*/}}
{{- define "shadow-sidecar.volumes" -}}
- name: shadow-policy
  configMap:
    name: {{ include "shadow-sidecar.policyConfigMap" . }}
    items:
      - key: policy.yaml
        path: policy.yaml
{{- if not .Values.persistence.enabled }}
- name: shadow-data
  emptyDir: {}
{{- else if ne (get . "shadowKafkaRole") "replica" }}
{{- /* A replica's shadow-data comes from the StatefulSet's volumeClaimTemplates. */}}
- name: shadow-data
  persistentVolumeClaim:
    claimName: {{ include "shadow-sidecar.dataClaim" . }}
{{- end }}
- name: shadow-tmp
  emptyDir:
    sizeLimit: 1Gi
{{- if include "shadow-sidecar.tokensFile" . }}
- name: shadow-tokens
  secret:
    secretName: {{ include "shadow-sidecar.tokensSecret" . }}
    items:
      - key: {{ include "shadow-sidecar.tokensKey" . }}
        path: tokens.yaml
{{- end }}
{{- end }}
