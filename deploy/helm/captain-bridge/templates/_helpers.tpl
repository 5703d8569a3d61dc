{{/* Names and labels. */}}
{{- define "captain-bridge.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "captain-bridge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "captain-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "captain-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "captain-bridge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "captain-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "captain-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "captain-bridge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where the Secret's keys are mounted as files. */}}
{{- define "captain-bridge.secretsDir" -}}/run/secrets/captain-bridge{{- end -}}

{{/* shutdown.drain_timeout in seconds; the schema allows whole seconds only ("20s"). */}}
{{- define "captain-bridge.drainSeconds" -}}
{{- $drain := ((.Values.config.shutdown | default dict).drain_timeout | default "20s") | toString -}}
{{- if not (regexMatch "^[0-9]+s$" $drain) -}}
{{- fail (printf "config.shutdown.drain_timeout must be whole seconds such as \"20s\", not %q" $drain) -}}
{{- end -}}
{{- trimSuffix "s" $drain | atoi -}}
{{- end -}}

{{/* The pod's grace period: above the drain, else in-flight launches are killed mid-way. */}}
{{- define "captain-bridge.gracePeriod" -}}
{{- $drain := include "captain-bridge.drainSeconds" . | atoi -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add $drain 30 -}}
{{- else -}}
{{- $grace := .Values.terminationGracePeriodSeconds | int -}}
{{- if le $grace $drain -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above config.shutdown.drain_timeout (%ds): the drain is followed by up to 25 s of consumer, callback server and producer shutdown" $grace $drain) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}
{{- end -}}

{{/* The bridge's config file: the user's keys, then what the chart owns. */}}
{{- define "captain-bridge.config" -}}
{{- $dir := include "captain-bridge.secretsDir" . -}}
{{- $owned := dict
  "callbacks" (dict "listen" (printf "0.0.0.0:%d" (.Values.service.ports.callbacks | int)) "keys_file" (printf "%s/%s" $dir .Values.secrets.callbackKeysKey))
  "ops" (dict "listen" (printf "0.0.0.0:%d" (.Values.service.ports.metrics | int)))
  "captain" (dict "api_key_file" (printf "%s/%s" $dir .Values.secrets.apiKeyKey)) -}}
{{- if .Values.secrets.callbackHeaderSecretKey -}}
{{- $_ := set $owned.callbacks "header_secret_file" (printf "%s/%s" $dir .Values.secrets.callbackHeaderSecretKey) -}}
{{- end -}}
{{- if .Values.secrets.schemaRegistryPasswordKey -}}
{{- $_ := set $owned "schema_registry" (dict "password_file" (printf "%s/%s" $dir .Values.secrets.schemaRegistryPasswordKey)) -}}
{{- else if .Values.secrets.schemaRegistryTokenKey -}}
{{- $_ := set $owned "schema_registry" (dict "token_file" (printf "%s/%s" $dir .Values.secrets.schemaRegistryTokenKey)) -}}
{{- end -}}
{{- toYaml (mergeOverwrite (deepCopy .Values.config) $owned) -}}
{{- end -}}
