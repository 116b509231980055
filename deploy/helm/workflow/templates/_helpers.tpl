{{/* Name of every object: `workflow` unless fullnameOverride says otherwise (the runbook's commands use it). */}}
{{- define "workflow.fullname" -}}
{{- default "workflow" .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "workflow.selectorLabels" -}}
app: {{ include "workflow.fullname" . }}
app.kubernetes.io/name: workflow
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "workflow.labels" -}}
{{ include "workflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: engine
app.kubernetes.io/part-of: workflow
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "workflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "workflow.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Replicas share state only through an external store: refuse a multi-replica release on SQLite. */}}
{{- define "workflow.checkStore" -}}
{{- if and (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) (not (or .Values.store.url .Values.store.existingSecret)) -}}
{{- fail "more than one replica (replicaCount > 1 or autoscaling.enabled) needs a shared store: set store.url or store.existingSecret (PostgreSQL)" -}}
{{- end -}}
{{- end -}}
