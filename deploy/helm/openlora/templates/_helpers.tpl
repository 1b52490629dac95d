{{- define "openlora.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "openlora.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "openlora.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openlora.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "openlora.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "openlora.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "openlora.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if and .Values.gpu.enabled (not .Values.image.tag) -}}
{{- $tag = printf "%s-cuda" $tag -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "openlora.secretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else -}}
{{- include "openlora.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "openlora.hasSecret" -}}
{{- if or .Values.auth.existingSecret .Values.auth.create -}}true{{- end -}}
{{- end -}}

{{- define "openlora.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "openlora.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The model argument: a hub id with its GGUF file, or a path. */}}
{{- define "openlora.model" -}}
{{- if .Values.model.ggufFile -}}
{{- printf "%s:%s" .Values.model.id .Values.model.ggufFile -}}
{{- else -}}
{{- .Values.model.id -}}
{{- end -}}
{{- end -}}

{{/* True when the model is a hub id (org/name), not a path in the container. */}}
{{- define "openlora.modelIsHubId" -}}
{{- if and (not (hasPrefix "/" .Values.model.id)) (not (hasPrefix "." .Values.model.id)) (eq (len (splitList "/" .Values.model.id)) 2) -}}true{{- end -}}
{{- end -}}

{{/* Environment shared by the init container and the server: the hub. */}}
{{- define "openlora.hubEnv" -}}
- name: HF_HOME
  value: /var/cache/openlora/hf
{{- with .Values.hub.endpoint }}
- name: HF_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- if .Values.hub.tokenSecret.name }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.hub.tokenSecret.name }}
      key: {{ .Values.hub.tokenSecret.key }}
{{- end }}
{{- if .Values.hub.maxBytes }}
- name: OPENLORA_HUB_MAX_BYTES
  value: {{ .Values.hub.maxBytes | int64 | quote }}
{{- end }}
{{- if .Values.hub.timeoutSecs }}
- name: OPENLORA_HUB_TIMEOUT_SECS
  value: {{ .Values.hub.timeoutSecs | int64 | quote }}
{{- end }}
{{- end -}}
