{{/*
Names, labels, images and the duration arithmetic the templates share.
*/}}

{{/* The CSI driver name: fixed by the driver binary (GetPluginInfo). */}}
{{- define "mirrorfs-csi.driverName" -}}
csi.mirrorfs.io
{{- end }}

{{- define "mirrorfs-csi.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's name prefix for every object (at most 45 characters, leaving room for suffixes). */}}
{{- define "mirrorfs-csi.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "mirrorfs-csi.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mirrorfs-csi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mirrorfs-csi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mirrorfs-csi.labels" -}}
helm.sh/chart: {{ include "mirrorfs-csi.chart" . }}
{{ include "mirrorfs-csi.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mirrorfs
{{- end }}

{{/* The mirrorfs image reference. */}}
{{- define "mirrorfs-csi.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* A sidecar image reference; the argument is the sidecar's values. */}}
{{- define "mirrorfs-csi.sidecarImage" -}}
{{- printf "%s:%s" .image.repository .image.tag }}
{{- end }}

{{/*
Seconds in a duration of the form <number><s|m|h> (the schema allows only that form).
*/}}
{{- define "mirrorfs-csi.seconds" -}}
{{- $n := regexFind "^[0-9]+" . | atoi }}
{{- $unit := regexFind "[smh]$" . }}
{{- if eq $unit "h" }}{{ mul $n 3600 }}{{ else if eq $unit "m" }}{{ mul $n 60 }}{{ else }}{{ $n }}{{ end }}
{{- end }}

{{/*
The provisioner's --timeout: controller.provisionerTimeout, which must exceed driver.pathWait, or
driver.pathWait + 30s.
*/}}
{{- define "mirrorfs-csi.provisionerTimeout" -}}
{{- $wait := include "mirrorfs-csi.seconds" .Values.driver.pathWait | atoi }}
{{- with .Values.controller.provisionerTimeout }}
{{- $timeout := include "mirrorfs-csi.seconds" . | atoi }}
{{- if le $timeout $wait }}
{{- fail (printf "controller.provisionerTimeout (%s) must be longer than driver.pathWait (%s): a CreateVolume call may wait that long for a directory the mirror has not applied yet" . $.Values.driver.pathWait) }}
{{- end }}
{{- . }}
{{- else }}
{{- printf "%ds" (add $wait 30) }}
{{- end }}
{{- end }}

{{/* Flags of `mirrorfs csi` shared by both roles. */}}
{{- define "mirrorfs-csi.driverArgs" -}}
- --endpoint=unix:///csi/csi.sock
- --path-wait={{ .Values.driver.pathWait }}
- --max-lag={{ .Values.driver.maxLag }}
{{- with .Values.driver.region }}
- --region={{ . }}
{{- end }}
{{- if .Values.driver.metrics.enabled }}
- --metrics-addr=0.0.0.0:{{ .Values.driver.metrics.port }}
{{- end }}
{{- end }}

{{/* The startup probe's failureThreshold: driver.startupTimeout in 5-second periods. */}}
{{- define "mirrorfs-csi.startupProbeFailures" -}}
{{- $s := include "mirrorfs-csi.seconds" .Values.driver.startupTimeout | atoi }}
{{- max 1 (div (add $s 4) 5) }}
{{- end }}
