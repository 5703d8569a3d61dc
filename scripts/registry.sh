#!/usr/bin/env bash
# A real schema registry on 127.0.0.1 for tests, without Docker: Apicurio Registry (Apache-2.0)
# serving the Confluent-compatible API (ccompat v7) with in-memory storage.
#
#   scripts/registry.sh start   fetch the pinned registry (first time only), start it, wait until it
#                               answers; the last line printed is
#                               SCHEMA_REGISTRY_URL=http://127.0.0.1:PORT/apis/ccompat/v7
#   scripts/registry.sh stop    stop the registry started by `start` (its schemas are gone with it)
#   scripts/registry.sh status  print the URL if a registry started by `start` is alive
#   scripts/registry.sh fetch   only fetch and unpack the registry
#
# Environment: REGISTRY_PORT (default: a free port), REGISTRY_HEAP (default 384m),
# REGISTRY_START_TIMEOUT seconds (default 120), CAPTAIN_REGISTRY_DIR (default <repo>/.registry),
# CAPTAIN_REGISTRY_INSTANCE (default none: one registry per instance name),
# CAPTAIN_REGISTRY_JAVA (a java 21+ binary; default: the newest 21+ found, see find_java),
# REGISTRY_TLS_DIR (also serve https with a test CA kept in this directory: made there with
# openssl unless ca.pem, tls.pem and tls.key exist; prints SCHEMA_REGISTRY_TLS_URL=... and
# SCHEMA_REGISTRY_CA_FILE=... before the last line), REGISTRY_TLS_PORT (default: a free port).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rdir=${CAPTAIN_REGISTRY_DIR:-$repo/.registry}
pom=$repo/scripts/registry/pom.xml
version=$(sed -n 's:.*<apicurio.version>\(.*\)</apicurio.version>.*:\1:p' "$pom")
app=$rdir/apicurio-$version
# Several registries may run side by side (the test suite's, a test that stops and restarts its
# own): CAPTAIN_REGISTRY_INSTANCE names one; its state file records its PID, data dir and URL.
state=$rdir/registry${CAPTAIN_REGISTRY_INSTANCE:+-$CAPTAIN_REGISTRY_INSTANCE}.env

log() { echo "registry.sh: $*" >&2; }

java_major() {
  "$1" -version 2>&1 | sed -n '1s/.*version "\([0-9][0-9]*\).*/\1/p'
}

# Apicurio Registry 3 needs Java 21+, while the rest of the project runs on the default Java 17:
# take CAPTAIN_REGISTRY_JAVA if set, else the newest 21+ among JAVA_HOME, PATH and the usual JDK
# install directories (Debian/Ubuntu /usr/lib/jvm, Temurin/Adoptium /opt/java and /usr/local).
find_java() {
  local c m best="" best_m=0
  if [[ -n ${CAPTAIN_REGISTRY_JAVA:-} ]]; then
    m=$(java_major "$CAPTAIN_REGISTRY_JAVA" 2>/dev/null || true)
    if [[ -z $m ]] || ((m < 21)); then
      log "CAPTAIN_REGISTRY_JAVA=$CAPTAIN_REGISTRY_JAVA is not a Java 21+ binary (version: ${m:-unknown})"
      exit 1
    fi
    echo "$CAPTAIN_REGISTRY_JAVA"
    return
  fi
  for c in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java || true)" \
    /usr/lib/jvm/*/bin/java /opt/java/*/bin/java /opt/*/bin/java /usr/local/*/bin/java; do
    [[ -n $c && -x $c ]] || continue
    m=$(java_major "$c" 2>/dev/null || true)
    [[ -n $m ]] || continue
    if ((m >= 21 && m > best_m)); then best=$c; best_m=$m; fi
  done
  if [[ -z $best ]]; then
    log "Apicurio Registry $version needs Java 21+ and none was found (looked at JAVA_HOME, PATH,"
    log "/usr/lib/jvm, /opt/java, /opt, /usr/local); install one (e.g. Temurin 21 or 25) or set"
    log "CAPTAIN_REGISTRY_JAVA=/path/to/bin/java"
    exit 1
  fi
  echo "$best"
}

fetch() {
  if [[ -f $app/.complete ]]; then return; fi
  command -v mvn >/dev/null || { log "mvn is required to fetch Apicurio Registry $version from Maven Central"; exit 1; }
  log "fetching io.apicurio:apicurio-registry-app:$version:tar.gz:all (~160 MB)"
  rm -rf "$app" "$rdir/download"
  mkdir -p "$app" "$rdir/download"
  mvn -q -B -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$rdir/download" -DincludeTypes=tar.gz >&2
  tar -xzf "$rdir/download/apicurio-registry-app-$version-all.tar.gz" -C "$app"
  rm -rf "$rdir/download"
  [[ -f $app/quarkus-run.jar ]] || { log "the archive has no quarkus-run.jar"; exit 1; }
  touch "$app/.complete"
}

# A CA and a certificate it signs for 127.0.0.1, for tests of the client's TLS settings.
make_tls() {
  local dir=$1
  if [[ -f $dir/ca.pem && -f $dir/tls.pem && -f $dir/tls.key ]]; then return; fi
  command -v openssl >/dev/null || { log "openssl is required for REGISTRY_TLS_DIR"; exit 1; }
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=captain-bridge test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$dir/tls.ext"
  openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 7 -extfile "$dir/tls.ext" -out "$dir/tls.pem" 2>/dev/null
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

answers() {
  python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/subjects", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
}

alive() {
  [[ -f $state ]] || return 1
  SCHEMA_REGISTRY_TLS_URL="" SCHEMA_REGISTRY_CA_FILE=""
  # shellcheck disable=SC1090
  source "$state"
  kill -0 "$REGISTRY_PID" 2>/dev/null
}

start() {
  if alive; then
    log "already running (pid $REGISTRY_PID)"
    [[ -z ${SCHEMA_REGISTRY_TLS_URL:-} ]] || printf 'SCHEMA_REGISTRY_TLS_URL=%s\nSCHEMA_REGISTRY_CA_FILE=%s\n' "$SCHEMA_REGISTRY_TLS_URL" "$SCHEMA_REGISTRY_CA_FILE"
    echo "SCHEMA_REGISTRY_URL=$SCHEMA_REGISTRY_URL"
    return
  fi
  fetch
  local java t0 port mport data pid url deadline tls_port tls_url="" tls=()
  java=$(find_java)
  t0=$(date +%s.%N)
  port=${REGISTRY_PORT:-$(free_port)}
  mport=$(free_port)
  data=$(mktemp -d "${TMPDIR:-/tmp}/captain-registry.XXXXXX")
  url=http://127.0.0.1:$port/apis/ccompat/v7
  if [[ -n ${REGISTRY_TLS_DIR:-} ]]; then
    make_tls "$REGISTRY_TLS_DIR"
    tls_port=${REGISTRY_TLS_PORT:-$(free_port)}
    tls_url=https://127.0.0.1:$tls_port/apis/ccompat/v7
    tls=(-Dquarkus.http.ssl-port="$tls_port"
      -Dquarkus.http.ssl.certificate.files="$REGISTRY_TLS_DIR/tls.pem"
      -Dquarkus.http.ssl.certificate.key-files="$REGISTRY_TLS_DIR/tls.key"
      -Dquarkus.http.insecure-requests=enabled)
  fi
  # quarkus.management.enabled is fixed to true at Apicurio's build time (setting it false only
  # logs a warning), so the management interface is moved off its default 0.0.0.0:9000 to
  # loopback on a free port instead. Storage is Apicurio's default: in-memory H2.
  # setsid: the registry must outlive the shell (and CI step) that started it until `stop`.
  (
    cd "$data"
    setsid nohup "$java" "-Xms64m" "-Xmx${REGISTRY_HEAP:-384m}" -XX:+UseSerialGC \
      -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
      -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
      -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$mport" \
      -Dquarkus.log.console.json=false "${tls[@]}" \
      -jar "$app/quarkus-run.jar" >"$data/stdout.log" 2>&1 </dev/null &
    echo $! >"$data/pid"
  )
  pid=$(cat "$data/pid")
  mkdir -p "$rdir"
  printf 'REGISTRY_PID=%s\nREGISTRY_DATA=%s\nSCHEMA_REGISTRY_URL=%s\n' "$pid" "$data" "$url" >"$state"
  if [[ -n $tls_url ]]; then
    printf 'SCHEMA_REGISTRY_TLS_URL=%s\nSCHEMA_REGISTRY_CA_FILE=%s\n' "$tls_url" "$REGISTRY_TLS_DIR/ca.pem" >>"$state"
  fi

  deadline=$(($(date +%s) + ${REGISTRY_START_TIMEOUT:-120}))
  # An open port is not a serving registry: ask for the subject list until it answers 200.
  until answers "$url"; do
    kill -0 "$pid" 2>/dev/null || { tail -50 "$data/stdout.log" >&2; log "registry exited during start-up"; rm -f "$state"; exit 1; }
    (($(date +%s) < deadline)) || { tail -50 "$data/stdout.log" >&2; log "registry did not answer in time"; stop; exit 1; }
    sleep 0.3
  done
  log "Apicurio Registry $version up (pid $pid, java $(java_major "$java"), data $data) in $(python3 -c "import time; print(round(time.time()-$t0, 1))")s"
  if [[ -n $tls_url ]]; then
    printf 'SCHEMA_REGISTRY_TLS_URL=%s\nSCHEMA_REGISTRY_CA_FILE=%s\n' "$tls_url" "$REGISTRY_TLS_DIR/ca.pem"
  fi
  echo "SCHEMA_REGISTRY_URL=$url"
}

stop() {
  if ! [[ -f $state ]]; then log "no registry recorded"; return; fi
  # shellcheck disable=SC1090
  source "$state"
  if kill -0 "$REGISTRY_PID" 2>/dev/null; then
    kill -TERM "$REGISTRY_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$REGISTRY_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$REGISTRY_PID" 2>/dev/null || true
  fi
  case "$REGISTRY_DATA" in
    */captain-registry.*) rm -rf "$REGISTRY_DATA" ;;
  esac
  rm -f "$state"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  fetch) fetch ;;
  status)
    alive || exit 1
    [[ -z $SCHEMA_REGISTRY_TLS_URL ]] || printf 'SCHEMA_REGISTRY_TLS_URL=%s\nSCHEMA_REGISTRY_CA_FILE=%s\n' "$SCHEMA_REGISTRY_TLS_URL" "$SCHEMA_REGISTRY_CA_FILE"
    echo "SCHEMA_REGISTRY_URL=$SCHEMA_REGISTRY_URL"
    ;;
  *) echo "usage: $0 start|stop|status|fetch" >&2; exit 2 ;;
esac
