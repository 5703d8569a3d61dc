#!/usr/bin/env bash
# A real, single-node Apache Kafka (KRaft) on 127.0.0.1 for tests and benchmarks, without Docker.
#
#   scripts/kafka.sh start   fetch the pinned broker jars (first time only), format a fresh KRaft
#                            store in a temporary directory, start the broker, wait until it answers
#                            metadata requests; the last line printed is KAFKA_BOOTSTRAP_SERVERS=host:port
#                            (the lines before it, if any, are what clients of the modes below need)
#   scripts/kafka.sh restart stop the broker started by `start` (or find it dead, e.g. after a
#                            kill -9) and start it again on the same ports with the same data:
#                            topics, records, committed offsets and SCRAM users survive; prints
#                            what `start` prints
#   scripts/kafka.sh stop    stop the broker started by `start` and delete its data
#   scripts/kafka.sh status  print the bootstrap address (and the lines before it) if a broker
#                            started by `start` is alive
#   scripts/kafka.sh fetch   only fetch the jars
#   scripts/kafka.sh tool CLASS ARGS...   run a Kafka tool class with the fetched jars (e.g.
#                            org.apache.kafka.tools.ProducerPerformance)
#
# Environment: KAFKA_PORT (default: a free port), KAFKA_HEAP (default 512m),
# KAFKA_START_TIMEOUT seconds (default 90), CAPTAIN_KAFKA_DIR (default <repo>/.kafka),
# CAPTAIN_KAFKA_INSTANCE (default none: one broker per instance name), and for `start`:
#   KAFKA_SASL_SSL=1   also a SASL_SSL listener (TLS + SCRAM-SHA-256 and SCRAM-SHA-512), with a
#                      user created at format time and a CA and broker certificate (for 127.0.0.1
#                      and localhost) made with keytool; prints KAFKA_SASL_SSL_BOOTSTRAP=host:port,
#                      KAFKA_CA_PEM=path, KAFKA_SCRAM_USER=name, KAFKA_SCRAM_PASSWORD=secret (a
#                      throwaway test secret). The PLAINTEXT listener stays.
#   KAFKA_ADVERTISED_HOST, KAFKA_ADVERTISED_PORT   the PLAINTEXT listener advertises this address
#                      (e.g. a toxiproxy in front of it; default 127.0.0.1 and the listener's own
#                      port) so clients that bootstrap there stay behind it after the first
#                      metadata answer. KAFKA_BOOTSTRAP_SERVERS is then the advertised address;
#                      also printed: KAFKA_LISTENER=host:port (the real socket: the proxy's
#                      upstream) and KAFKA_INTERNAL_BOOTSTRAP=host:port (a second PLAINTEXT
#                      listener that advertises itself: for the broker's own inter-broker traffic
#                      and for test tools that must not go through the proxy).
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
  recorded_pid && kill -0 "$KAFKA_PID" 2>/dev/null
}

# Whether the state holds a real PID: 0 (written before the broker is launched) would make
# `kill` signal this script's own process group.
recorded_pid() {
  [[ ${KAFKA_PID:-} =~ ^[1-9][0-9]*$ ]]
}

# What clients need, from the state file: the extra lines, then the bootstrap address last.
print_env() {
  local var
  for var in ${KAFKA_CLIENT_VARS:-}; do echo "$var=${!var}"; done
  echo "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS"
}

# A CA and a broker key pair signed by it, for 127.0.0.1 and localhost, in $1: ca.pem for clients,
# broker.p12 (key, certificate and CA chain) for the broker, both under the password $2. keytool
# ships with every JDK, so this needs nothing beyond what the broker needs.
make_tls() {
  local dir=$1 pass=$2
  mkdir -p "$dir"
  keytool -genkeypair -alias ca -dname "CN=captain-bridge test CA" -keyalg RSA -keysize 2048 \
    -validity 365 -ext bc:c -keystore "$dir/ca.p12" -storetype PKCS12 -storepass "$pass"
  keytool -exportcert -rfc -alias ca -keystore "$dir/ca.p12" -storetype PKCS12 -storepass "$pass" \
    -file "$dir/ca.pem"
  keytool -genkeypair -alias broker -dname "CN=localhost" -keyalg RSA -keysize 2048 -validity 365 \
    -keystore "$dir/broker.p12" -storetype PKCS12 -storepass "$pass"
  keytool -certreq -alias broker -keystore "$dir/broker.p12" -storetype PKCS12 -storepass "$pass" \
    -file "$dir/broker.csr"
  keytool -gencert -alias ca -keystore "$dir/ca.p12" -storetype PKCS12 -storepass "$pass" \
    -infile "$dir/broker.csr" -outfile "$dir/broker.pem" -rfc -validity 365 \
    -ext SAN=IP:127.0.0.1,DNS:localhost -ext KU=digitalSignature,keyEncipherment -ext EKU=serverAuth
  # The CA first, so that the signed certificate's chain can be built on import.
  keytool -importcert -noprompt -alias ca -file "$dir/ca.pem" -keystore "$dir/broker.p12" \
    -storetype PKCS12 -storepass "$pass"
  keytool -importcert -alias broker -file "$dir/broker.pem" -keystore "$dir/broker.p12" \
    -storetype PKCS12 -storepass "$pass"
}

random_secret() {
  python3 -c 'import secrets, string; a = string.ascii_letters + string.digits; print("".join(secrets.choice(a) for _ in range(24)))'
}

start() {
  if alive; then
    log "already running (pid $KAFKA_PID)"
    print_env
    return
  fi
  fetch
  local t0 port cport iport sport data cluster_id bootstrap ready tls pass user password
  local listeners advertised protocols inter client_vars=() scram=()
  t0=$(date +%s.%N)
  port=${KAFKA_PORT:-$(free_port)}
  cport=$(free_port)
  data=$(mktemp -d "${TMPDIR:-/tmp}/captain-kafka.XXXXXX")
  bootstrap=127.0.0.1:$port
  ready=127.0.0.1:$port
  listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
  advertised="PLAINTEXT://127.0.0.1:$port"
  protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  inter=PLAINTEXT
  if [[ -n ${KAFKA_ADVERTISED_HOST:-}${KAFKA_ADVERTISED_PORT:-} ]]; then
    # The broker's own traffic (and the readiness check) must not depend on a proxy that may
    # not exist yet or may be cut by a test: it gets a listener that advertises itself.
    iport=$(free_port)
    bootstrap=${KAFKA_ADVERTISED_HOST:-127.0.0.1}:${KAFKA_ADVERTISED_PORT:-$port}
    ready=127.0.0.1:$iport
    listeners+=",INTERNAL://127.0.0.1:$iport"
    advertised="PLAINTEXT://$bootstrap,INTERNAL://127.0.0.1:$iport"
    protocols+=",INTERNAL:PLAINTEXT"
    inter=INTERNAL
    KAFKA_LISTENER=127.0.0.1:$port
    KAFKA_INTERNAL_BOOTSTRAP=$ready
    client_vars+=(KAFKA_LISTENER KAFKA_INTERNAL_BOOTSTRAP)
  fi
  if [[ ${KAFKA_SASL_SSL:-0} == 1 ]]; then
    sport=$(free_port)
    tls=$data/tls
    pass=$(random_secret)
    user=captain
    password=$(random_secret)
    make_tls "$tls" "$pass" >"$data/keytool.log" 2>&1 \
      || { cat "$data/keytool.log" >&2; log "making the test CA and broker certificate failed"; exit 1; }
    listeners+=",SASL_SSL://127.0.0.1:$sport"
    advertised+=",SASL_SSL://127.0.0.1:$sport"
    protocols+=",SASL_SSL:SASL_SSL"
    scram=(--add-scram "SCRAM-SHA-256=[name=$user,password=$password]"
           --add-scram "SCRAM-SHA-512=[name=$user,password=$password]")
    KAFKA_SASL_SSL_BOOTSTRAP=127.0.0.1:$sport
    KAFKA_CA_PEM=$tls/ca.pem
    KAFKA_SCRAM_USER=$user
    KAFKA_SCRAM_PASSWORD=$password
    client_vars+=(KAFKA_SASL_SSL_BOOTSTRAP KAFKA_CA_PEM KAFKA_SCRAM_USER KAFKA_SCRAM_PASSWORD)
  fi
  cat >"$data/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=$inter
listener.security.protocol.map=$protocols
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
  if [[ -n ${sport:-} ]]; then
    cat >>"$data/server.properties" <<EOF
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$tls/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$pass
listener.name.sasl_ssl.ssl.key.password=$pass
EOF
  fi
  # Never starting with '-': StorageTool's argument parser would take such an id for an option.
  cluster_id=$(python3 -c 'import base64,uuid
while True:
    c = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not c.startswith("-"): break
print(c)')
  # SCRAM users live in the cluster metadata: KRaft creates them when formatting.
  java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$data/server.properties" ${scram[@]+"${scram[@]}"} \
    >"$data/format.log" 2>&1 \
    || { cat "$data/format.log" >&2; log "formatting KRaft storage failed"; exit 1; }

  mkdir -p "$kdir"
  {
    printf 'KAFKA_PID=0\nKAFKA_DATA=%s\nKAFKA_BOOTSTRAP_SERVERS=%s\nKAFKA_READY=%s\n' "$data" "$bootstrap" "$ready"
    printf 'KAFKA_CLIENT_VARS="%s"\n' "${client_vars[*]}"
    for var in "${client_vars[@]}"; do printf '%s=%s\n' "$var" "${!var}"; done
  } >"$state"
  launch "$data" "$ready"
  log "broker $version up (pid $KAFKA_PID, data $data) in $(python3 -c "import time; print(round(time.time()-$t0, 1))")s"
  # shellcheck disable=SC1090
  source "$state"
  print_env
}

# Starts the broker of the formatted store $1 and waits until it answers metadata requests on
# $2 (host:port); records its PID in the state file as KAFKA_PID.
launch() {
  local data=$1 ready=$2 pid deadline
  # setsid: the broker must outlive the shell (and CI step) that started it until `stop`.
  KAFKA_HEAP_OPTS="-Xms${KAFKA_HEAP:-512m} -Xmx${KAFKA_HEAP:-512m}"
  setsid nohup java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$repo/scripts/kafka/log4j2.properties" -Dkafka.logs.dir="$data" \
    -cp "$libs/*" kafka.Kafka "$data/server.properties" >>"$data/stdout.log" 2>&1 </dev/null &
  pid=$!
  KAFKA_PID=$pid
  sed -i "s/^KAFKA_PID=.*/KAFKA_PID=$pid/" "$state"

  deadline=$(($(date +%s) + ${KAFKA_START_TIMEOUT:-90}))
  until (exec 3<>"/dev/tcp/${ready%:*}/${ready##*:}") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { tail -50 "$data/stdout.log" "$data/server.log" >&2 2>/dev/null; log "broker exited during start-up"; exit 1; }
    (($(date +%s) < deadline)) || { log "broker did not open port ${ready##*:} in time"; stop; exit 1; }
    sleep 0.2
  done
  # An open port is not a serving broker: ask for metadata (list topics) until it answers.
  until java_run org.apache.kafka.tools.TopicCommand --bootstrap-server "$ready" --list >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { log "broker exited during start-up"; exit 1; }
    (($(date +%s) < deadline)) || { log "broker did not answer metadata requests in time"; stop; exit 1; }
    sleep 0.5
  done
}

# Stops the recorded broker process (SIGTERM: a clean shutdown; SIGKILL after 20 s).
terminate() {
  recorded_pid || return 0
  if kill -0 "$KAFKA_PID" 2>/dev/null; then
    kill -TERM "$KAFKA_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$KAFKA_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$KAFKA_PID" 2>/dev/null || true
  fi
}

restart() {
  if ! [[ -f $state ]]; then log "no broker recorded: run start first"; exit 1; fi
  # shellcheck disable=SC1090
  source "$state"
  [[ -f $KAFKA_DATA/server.properties ]] || { log "the data of the recorded broker ($KAFKA_DATA) is gone"; exit 1; }
  fetch
  local t0
  t0=$(date +%s.%N)
  terminate
  # The same server.properties: same ports, same listeners, same log dirs.
  launch "$KAFKA_DATA" "$KAFKA_READY"
  log "broker $version restarted (pid $KAFKA_PID, data $KAFKA_DATA) in $(python3 -c "import time; print(round(time.time()-$t0, 1))")s"
  # shellcheck disable=SC1090
  source "$state"
  print_env
}

stop() {
  if ! [[ -f $state ]]; then log "no broker recorded"; return; fi
  # shellcheck disable=SC1090
  source "$state"
  terminate
  case "$KAFKA_DATA" in
    */captain-kafka.*) rm -rf "$KAFKA_DATA" ;;
  esac
  rm -f "$state"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  restart) restart ;;
  stop) stop ;;
  fetch) fetch ;;
  status) if alive; then print_env; else exit 1; fi ;;
  tool) shift; fetch; data=${TMPDIR:-/tmp} java_run "$@" ;;
  *) echo "usage: $0 start|restart|stop|status|fetch|tool CLASS ARGS..." >&2; exit 2 ;;
esac
