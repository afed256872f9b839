{{/* Names, labels and checks shared by the templates. */}}

{{- define "secrets-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "secrets-broker.fullname" -}}
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

{{/* Selector labels: fixed for the life of a release. */}}
{{- define "secrets-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "secrets-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "secrets-broker.labels" -}}
{{ include "secrets-broker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "secrets-broker.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Refuses an egress block that is everything or that contains the instance
metadata address 169.254.169.254: the broker must never reach node
credentials. IPv4 blocks are checked by arithmetic; an IPv6 block may not be
::/0.
*/}}
{{- define "secrets-broker.checkCIDR" -}}
{{- $cidr := . | toString -}}
{{- if not (regexMatch "^[0-9a-fA-F:.]+/[0-9]+$" $cidr) -}}
{{- fail (printf "networkPolicy: %q is not a CIDR block (address/prefix)" $cidr) -}}
{{- end -}}
{{- $parts := splitList "/" $cidr -}}
{{- $prefix := atoi (index $parts 1) -}}
{{- if contains ":" (index $parts 0) -}}
{{- if eq $prefix 0 -}}
{{- fail (printf "networkPolicy: %q admits every address; list the actual ones" $cidr) -}}
{{- end -}}
{{- else -}}
{{- $o := splitList "." (index $parts 0) -}}
{{- if or (ne (len $o) 4) (gt $prefix 32) -}}
{{- fail (printf "networkPolicy: %q is not an IPv4 CIDR block" $cidr) -}}
{{- end -}}
{{- $addr := 0 -}}
{{- range $o -}}
{{- $addr = add (mul $addr 256) (atoi .) -}}
{{- end -}}
{{- $imds := add (mul 169 16777216) (mul 254 65536) (mul 169 256) 254 -}}
{{- $size := 1 -}}
{{- range until (sub 32 $prefix | int) -}}
{{- $size = mul $size 2 -}}
{{- end -}}
{{- if eq (div $addr $size) (div $imds $size) -}}
{{- fail (printf "networkPolicy: %q contains 169.254.169.254 (instance metadata)" $cidr) -}}
{{- end -}}
{{- end -}}
{{- end -}}
