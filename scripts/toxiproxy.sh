#!/usr/bin/env bash
# A real Toxiproxy (TCP fault injection) on 127.0.0.1 for tests and benchmarks, without Docker.
#
#   scripts/toxiproxy.sh start   build the pinned toxiproxy-server with `go install` into .tools/
#                                (first time only), start it on 127.0.0.1, wait until its HTTP API
#                                answers; the last line printed is TOXIPROXY_URL=http://host:port
#   scripts/toxiproxy.sh stop    stop the server started by `start` (its proxies go with it)
#   scripts/toxiproxy.sh status  print the URL if a server started by `start` is alive
#   scripts/toxiproxy.sh fetch   only build the binaries (server and toxiproxy-cli)
#
# Proxies and toxics are created through the HTTP API (crates/captain-testkit: toxiproxy.rs) or
# with .tools/toxiproxy-VERSION/toxiproxy-cli.
#
# Environment: TOXIPROXY_PORT (default: a free port), TOXIPROXY_START_TIMEOUT seconds (default 30),
# TOXIPROXY_LOG_LEVEL (default info), CAPTAIN_TOOLS_DIR (default <repo>/.tools),
# CAPTAIN_TOXIPROXY_INSTANCE (default none: one server per instance name).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${CAPTAIN_TOOLS_DIR:-$repo/.tools}
# Pinned: `@latest` of this module resolves to a 2022 release.
version=v2.12.0
module=github.com/Shopify/toxiproxy/v2
bin=$tools/toxiproxy-$version
state=$tools/toxiproxy${CAPTAIN_TOXIPROXY_INSTANCE:+-$CAPTAIN_TOXIPROXY_INSTANCE}.env

log() { echo "toxiproxy.sh: $*" >&2; }

fetch() {
  if [[ -f $bin/.complete ]]; then return; fi
  command -v go >/dev/null || { log "go is required to build toxiproxy $version from the Go module proxy"; exit 1; }
  log "building $module/cmd/server and cmd/cli@$version"
  rm -rf "$bin"
  mkdir -p "$bin"
  # `go install` has no Makefile to stamp the version; /version reports it so `start` can check it.
  GOBIN=$bin go install -ldflags "-X $module.Version=$version" \
    "$module/cmd/server@$version" "$module/cmd/cli@$version" >&2
  mv "$bin/server" "$bin/toxiproxy-server"
  mv "$bin/cli" "$bin/toxiproxy-cli"
  touch "$bin/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Prints the server's version if its API answers at $1, fails otherwise.
api_version() {
  python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/version", timeout=2) as r:
    print(r.read().decode().strip())
EOF
}

alive() {
  [[ -f $state ]] || return 1
  # shellcheck disable=SC1090
  source "$state"
  kill -0 "$TOXIPROXY_PID" 2>/dev/null
}

start() {
  if alive; then
    log "already running (pid $TOXIPROXY_PID)"
    echo "TOXIPROXY_URL=$TOXIPROXY_URL"
    return
  fi
  fetch
  local port url pid deadline logfile answer
  port=${TOXIPROXY_PORT:-$(free_port)}
  url=http://127.0.0.1:$port
  mkdir -p "$tools"
  logfile=$tools/toxiproxy${CAPTAIN_TOXIPROXY_INSTANCE:+-$CAPTAIN_TOXIPROXY_INSTANCE}.log
  # setsid: the server must outlive the shell (and CI step) that started it until `stop`.
  # Its default log level writes a debug line per API call.
  LOG_LEVEL=${TOXIPROXY_LOG_LEVEL:-info} setsid nohup "$bin/toxiproxy-server" -host 127.0.0.1 -port "$port" >"$logfile" 2>&1 </dev/null &
  pid=$!
  printf 'TOXIPROXY_PID=%s\nTOXIPROXY_URL=%s\n' "$pid" "$url" >"$state"

  deadline=$(($(date +%s) + ${TOXIPROXY_START_TIMEOUT:-30}))
  until answer=$(api_version "$url"); do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$logfile" >&2; rm -f "$state"; log "server exited during start-up"; exit 1; }
    (($(date +%s) < deadline)) || { log "API did not answer on $url in time"; stop; exit 1; }
    sleep 0.1
  done
  # A server already on that port (another instance's) would answer too: check it is ours.
  if [[ $answer != *"$version"* ]]; then
    log "the API on $url answers version '$answer', not $version"; stop; exit 1
  fi
  log "toxiproxy $version up (pid $pid, log $logfile)"
  echo "TOXIPROXY_URL=$url"
}

stop() {
  if ! [[ -f $state ]]; then log "no server recorded"; return; fi
  # shellcheck disable=SC1090
  source "$state"
  if kill -0 "$TOXIPROXY_PID" 2>/dev/null; then
    kill -TERM "$TOXIPROXY_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$TOXIPROXY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$TOXIPROXY_PID" 2>/dev/null || true
  fi
  rm -f "$state"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  fetch) fetch ;;
  status) if alive; then echo "TOXIPROXY_URL=$TOXIPROXY_URL"; else exit 1; fi ;;
  *) echo "usage: $0 start|stop|status|fetch" >&2; exit 2 ;;
esac
