{{/*
The pod template of the standalone (or promoter) Deployment and of the replica StatefulSet:
one shadow-sidecar container, the policy/data/tmp volumes, the pod security context and the
scheduling values of `deployment`. Takes the chart context, with shadowKafkaRole in scale-out.
*/}}
{{- define "shadow-sidecar.podTemplate" -}}
metadata:
  labels:
    {{- include "shadow-sidecar.labels" . | nindent 4 }}
    {{- with .Values.deployment.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/policy: {{ .Values.policy.content | sha256sum }}
    {{- with .Values.deployment.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ .Values.deployment.terminationGracePeriodSeconds }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    {{- include "shadow-sidecar.container" . | nindent 4 }}
  volumes:
    {{- include "shadow-sidecar.volumes" . | nindent 4 }}
  {{- with .Values.deployment.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.deployment.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.deployment.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
