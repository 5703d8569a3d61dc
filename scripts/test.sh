#!/usr/bin/env bash
# The one command that runs every test (unit + integration + end-to-end).
#
# Starts a real Kafka broker with scripts/kafka.sh unless KAFKA_BOOTSTRAP_SERVERS is already set
# (with its SASL_SSL listener: every KEY=VALUE line the script prints is exported, for the TLS and
# SCRAM tests), a Toxiproxy with scripts/toxiproxy.sh unless TOXIPROXY_URL is already set, builds
# the binaries the end-to-end tests run as processes (captain-bridge, captain-sim), runs the whole
# suite, and stops what it started, even when tests fail.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -- schedule`).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

started_kafka=
started_toxiproxy=
cleanup() {
  if [[ -n $started_toxiproxy ]]; then scripts/toxiproxy.sh stop || true; fi
  if [[ -n $started_kafka ]]; then scripts/kafka.sh stop || true; fi
}
trap cleanup EXIT

if [[ -z ${KAFKA_BOOTSTRAP_SERVERS:-} ]]; then
  export CAPTAIN_KAFKA_INSTANCE=test-$$
  started_kafka=1
  lines=$(KAFKA_SASL_SSL=1 scripts/kafka.sh start)
  while IFS= read -r line; do
    if [[ $line == KAFKA_*=* ]]; then export "${line?}"; fi
  done <<<"$lines"
fi
echo "test.sh: Kafka at $KAFKA_BOOTSTRAP_SERVERS (SASL_SSL at ${KAFKA_SASL_SSL_BOOTSTRAP:-none})" >&2

if [[ -z ${TOXIPROXY_URL:-} ]]; then
  export CAPTAIN_TOXIPROXY_INSTANCE=test-$$
  started_toxiproxy=1
  line=$(scripts/toxiproxy.sh start | tail -n 1)
  export TOXIPROXY_URL=${line#TOXIPROXY_URL=}
fi
echo "test.sh: Toxiproxy at $TOXIPROXY_URL" >&2

cargo build --workspace --bins
cargo test --workspace --all-targets "$@"
