{{/* The chart name, or nameOverride. */}}
{{- define "nfs-subdir-provisioner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The name of the release's objects: fullnameOverride, else the release name if it contains the
chart name, else <release>-<chart>.
*/}}
{{- define "nfs-subdir-provisioner.fullname" -}}
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

{{/* Labels that select the pods; also in the anti-affinity term. */}}
{{- define "nfs-subdir-provisioner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nfs-subdir-provisioner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object: Helm's, and `labels` (upstream's key). */}}
{{- define "nfs-subdir-provisioner.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "nfs-subdir-provisioner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The name classes use in `provisioner:`: storageClass.provisionerName (upstream's key), else
provisionerName, else what upstream's chart (named nfs-subdir-external-provisioner) would name a
release of this name, so that a release installed under its old name keeps its classes.
*/}}
{{- define "nfs-subdir-provisioner.provisionerName" -}}
{{- if .Values.storageClass.provisionerName -}}
{{- .Values.storageClass.provisionerName -}}
{{- else if .Values.provisionerName -}}
{{- .Values.provisionerName -}}
{{- else -}}
{{- $upstream := "nfs-subdir-external-provisioner" -}}
{{- $full := "" -}}
{{- if .Values.fullnameOverride -}}
{{- $full = .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains $upstream .Release.Name -}}
{{- $full = .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $full = printf "%s-%s" .Release.Name $upstream | trunc 63 | trimSuffix "-" -}}
{{- end -}}
cluster.local/{{ $full }}
{{- end -}}
{{- end -}}

{{- define "nfs-subdir-provisioner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nfs-subdir-provisioner.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}
