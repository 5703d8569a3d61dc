#!/usr/bin/env bash
# The one command that runs every test (unit + integration + end-to-end).
#
# Starts a real Kafka broker with scripts/kafka.sh unless KAFKA_BOOTSTRAP_SERVERS is already set
# (with its SASL_SSL listener: every KEY=VALUE line the script prints is exported, for the TLS and
# SCRAM tests), a real schema registry with scripts/registry.sh unless SCHEMA_REGISTRY_URL is
# already set (the two start side by side), a Toxiproxy with scripts/toxiproxy.sh unless
# TOXIPROXY_URL is already set, builds the binaries the end-to-end tests run as processes
# (captain-bridge, captain-sim), runs the whole suite, and stops what it started, even when
# tests fail.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -- schedule`).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

started=()
stop_started() {
  # A registry still starting in the background has to finish starting to be stoppable.
  if [[ -n ${registry_pid:-} ]]; then wait "$registry_pid" 2>/dev/null || true; fi
  for service in "${started[@]}"; do "scripts/$service.sh" stop || true; done
}
trap stop_started EXIT

if [[ -z ${SCHEMA_REGISTRY_URL:-} ]]; then
  export CAPTAIN_REGISTRY_INSTANCE=test-$$
  started+=(registry)
  registry_out=$(mktemp)
  scripts/registry.sh start >"$registry_out" &
  registry_pid=$!
fi
if [[ -z ${KAFKA_BOOTSTRAP_SERVERS:-} ]]; then
  export CAPTAIN_KAFKA_INSTANCE=test-$$
  started+=(kafka)
  lines=$(KAFKA_SASL_SSL=1 scripts/kafka.sh start)
  while IFS= read -r line; do
    if [[ $line == KAFKA_*=* ]]; then export "${line?}"; fi
  done <<<"$lines"
fi
echo "test.sh: Kafka at $KAFKA_BOOTSTRAP_SERVERS (SASL_SSL at ${KAFKA_SASL_SSL_BOOTSTRAP:-none})" >&2

if [[ -z ${TOXIPROXY_URL:-} ]]; then
  export CAPTAIN_TOXIPROXY_INSTANCE=test-$$
  started+=(toxiproxy)
  line=$(scripts/toxiproxy.sh start | tail -n 1)
  export TOXIPROXY_URL=${line#TOXIPROXY_URL=}
fi
echo "test.sh: Toxiproxy at $TOXIPROXY_URL" >&2
if [[ -n ${registry_pid:-} ]]; then
  wait "$registry_pid" || { echo "test.sh: the schema registry did not start" >&2; exit 1; }
  line=$(tail -n 1 "$registry_out")
  rm -f "$registry_out"
  export SCHEMA_REGISTRY_URL=${line#SCHEMA_REGISTRY_URL=}
fi
echo "test.sh: schema registry at $SCHEMA_REGISTRY_URL" >&2

cargo build --workspace --bins
cargo test --workspace --all-targets "$@"
