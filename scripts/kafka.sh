#!/usr/bin/env bash
# A real, single-node Apache Kafka (KRaft) on 127.0.0.1 for tests and benchmarks, without Docker.
#
#   scripts/kafka.sh start   fetch the pinned broker jars (first time only), format a fresh KRaft
#                            store in a temporary directory, start the broker, wait until it answers
#                            metadata requests; the last line printed is KAFKA_BOOTSTRAP_SERVERS=host:port
#   scripts/kafka.sh stop    stop the broker started by `start` and delete its data
#   scripts/kafka.sh status  print the bootstrap address if a broker started by `start` is alive
#   scripts/kafka.sh fetch   only fetch the jars
#   scripts/kafka.sh tool CLASS ARGS...   run a Kafka tool class with the fetched jars (e.g.
#                            org.apache.kafka.tools.ProducerPerformance)
#
# Environment: KAFKA_PORT (default: a free port), KAFKA_HEAP (default 512m),
# KAFKA_START_TIMEOUT seconds (default 90), CAPTAIN_KAFKA_DIR (default <repo>/.kafka),
# CAPTAIN_KAFKA_INSTANCE (default none: one broker per instance name).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kdir=${CAPTAIN_KAFKA_DIR:-$repo/.kafka}
pom=$repo/scripts/kafka/pom.xml
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
libs=$kdir/libs-$version
# Several brokers may run side by side (a developer's, the test suite's, a test's own):
# CAPTAIN_KAFKA_INSTANCE names one; its state file records its PID, data dir and address.
state=$kdir/broker${CAPTAIN_KAFKA_INSTANCE:+-$CAPTAIN_KAFKA_INSTANCE}.env

log() { echo "kafka.sh: $*" >&2; }

fetch() {
  if [[ -f $libs/.complete ]]; then return; fi
  command -v mvn >/dev/null || { log "mvn is required to fetch Kafka $version from Maven Central"; exit 1; }
  command -v java >/dev/null || { log "java (17+) is required to run Kafka"; exit 1; }
  log "fetching org.apache.kafka:kafka_2.13:$version and its runtime dependencies"
  rm -rf "$libs"
  mkdir -p "$libs"
  mvn -q -B -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime >&2
  touch "$libs/.complete"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

java_run() {
  java -Xms64m -Xmx256m -cp "$libs/*" -Dlog4j2.configurationFile="$repo/scripts/kafka/log4j2.properties" \
    -Dkafka.logs.dir="${data:-/tmp}" "$@"
}

alive() {
  [[ -f $state ]] || return 1
  # shellcheck disable=SC1090
  source "$state"
  kill -0 "$KAFKA_PID" 2>/dev/null
}

start() {
  if alive; then
    log "already running (pid $KAFKA_PID)"
    echo "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS"
    return
  fi
  fetch
  local t0 port cport data cluster_id pid deadline
  t0=$(date +%s.%N)
  port=${KAFKA_PORT:-$(free_port)}
  cport=$(free_port)
  data=$(mktemp -d "${TMPDIR:-/tmp}/captain-kafka.XXXXXX")
  cat >"$data/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data/logs
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.flush.interval.messages=9223372036854775807
EOF
  # Never starting with '-': StorageTool's argument parser would take such an id for an option.
  cluster_id=$(python3 -c 'import base64,uuid
while True:
    c = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not c.startswith("-"): break
print(c)')
  java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$data/server.properties" >"$data/format.log" 2>&1 \
    || { cat "$data/format.log" >&2; log "formatting KRaft storage failed"; exit 1; }

  # setsid: the broker must outlive the shell (and CI step) that started it until `stop`.
  KAFKA_HEAP_OPTS="-Xms${KAFKA_HEAP:-512m} -Xmx${KAFKA_HEAP:-512m}"
  setsid nohup java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$repo/scripts/kafka/log4j2.properties" -Dkafka.logs.dir="$data" \
    -cp "$libs/*" kafka.Kafka "$data/server.properties" >"$data/stdout.log" 2>&1 </dev/null &
  pid=$!
  mkdir -p "$kdir"
  printf 'KAFKA_PID=%s\nKAFKA_DATA=%s\nKAFKA_BOOTSTRAP_SERVERS=127.0.0.1:%s\n' "$pid" "$data" "$port" >"$state"

  deadline=$(($(date +%s) + ${KAFKA_START_TIMEOUT:-90}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { tail -50 "$data/stdout.log" "$data/server.log" >&2 2>/dev/null; log "broker exited during start-up"; exit 1; }
    (($(date +%s) < deadline)) || { log "broker did not open port $port in time"; stop; exit 1; }
    sleep 0.2
  done
  # An open port is not a serving broker: ask for metadata (list topics) until it answers.
  until java_run org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" --list >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { log "broker exited during start-up"; exit 1; }
    (($(date +%s) < deadline)) || { log "broker did not answer metadata requests in time"; stop; exit 1; }
    sleep 0.5
  done
  log "broker $version up (pid $pid, data $data) in $(python3 -c "import time; print(round(time.time()-$t0, 1))")s"
  echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$port"
}

stop() {
  if ! [[ -f $state ]]; then log "no broker recorded"; return; fi
  # shellcheck disable=SC1090
  source "$state"
  if kill -0 "$KAFKA_PID" 2>/dev/null; then
    kill -TERM "$KAFKA_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$KAFKA_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$KAFKA_PID" 2>/dev/null || true
  fi
  case "$KAFKA_DATA" in
    */captain-kafka.*) rm -rf "$KAFKA_DATA" ;;
  esac
  rm -f "$state"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  fetch) fetch ;;
  status) if alive; then echo "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS"; else exit 1; fi ;;
  tool) shift; fetch; data=${TMPDIR:-/tmp} java_run "$@" ;;
  *) echo "usage: $0 start|stop|status|fetch|tool CLASS ARGS..." >&2; exit 2 ;;
esac
