{{/* Names and labels shared by every resource. */}}
{{- define "refinery.fullname" -}}
{{- printf "%s" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "refinery.labels" -}}
app.kubernetes.io/name: refinery
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "refinery.selector" -}}
app.kubernetes.io/name: refinery
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "refinery.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{- define "refinery.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "refinery.fullname" .)) -}}
{{- end -}}

{{- define "refinery.kafkaBootstrap" -}}
{{- printf "%s-kafka-bootstrap:9092" .Values.kafka.name -}}
{{- end -}}

{{- define "refinery.mlflowUri" -}}
{{- printf "http://%s-mlflow:%v" (include "refinery.fullname" .) .Values.mlflow.port -}}
{{- end -}}

{{/* The vLLM replicas by their StatefulSet names: what every gateway balances over. */}}
{{- define "refinery.vllmUpstreams" -}}
{{- $name := printf "%s-vllm" (include "refinery.fullname" .) -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.vllm.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s:%v" $name $i $name $.Values.vllm.port) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/* Settings and secrets every Refinery container reads. */}}
{{- define "refinery.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "refinery.fullname" . }}-settings
env:
  - name: REFINERY_API_KEYS
    valueFrom: {secretKeyRef: {name: {{ include "refinery.secretName" . }}, key: api-keys}}
  - name: REFINERY_SIGNING_SECRET
    valueFrom: {secretKeyRef: {name: {{ include "refinery.secretName" . }}, key: signing-secret}}
{{- end -}}

{{- define "refinery.taskVolume" -}}
{{- if .Values.model.taskConfigMap }}
- name: task
  configMap: {name: {{ .Values.model.taskConfigMap }}}
{{- end }}
{{- end -}}

{{- define "refinery.taskMount" -}}
{{- if .Values.model.taskConfigMap }}
- {name: task, mountPath: /etc/refinery, readOnly: true}
{{- end }}
{{- end -}}

{{/* MLflow's backend store: the chart's PostgreSQL, or an external database. */}}
{{- define "refinery.mlflowBackendEnv" -}}
{{- if .Values.postgres.enabled }}
- name: POSTGRES_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "refinery.secretName" . }}, key: postgres-password}}
- name: BACKEND_STORE_URI
  value: {{ printf "postgresql://%s:$(POSTGRES_PASSWORD)@%s-postgres:5432/%s" .Values.postgres.user (include "refinery.fullname" .) .Values.postgres.database | quote }}
{{- else }}
- name: BACKEND_STORE_URI
  value: {{ required "postgres.externalUri is required when postgres.enabled is false" .Values.postgres.externalUri | quote }}
{{- end }}
{{- end -}}
