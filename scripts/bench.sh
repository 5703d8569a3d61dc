#!/usr/bin/env bash
# The benchmark command: release builds, a real Kafka broker, captain-sim, and captain-bench.
#
#   scripts/bench.sh all                 every scenario, 3 repeats of >= 20 s (about 25 minutes)
#   scripts/bench.sh --quick all         a smoke run (1 repeat of 5 s)
#   scripts/bench.sh intake ceiling      some scenarios; `scripts/bench.sh --help` lists options
#
# Starts its own broker (scripts/kafka.sh, instance bench-$$) unless KAFKA_BOOTSTRAP_SERVERS is
# set, and a schema registry (scripts/registry.sh) when an argument mentions avro (e.g.
# `intake --formats json,avro`) unless SCHEMA_REGISTRY_URL is set; stops what it started on
# exit. Writes the table to stdout and target/bench/summary.json.
# Heavy: on a shared machine wrap it in `flock /tmp/captain-heavy.lock scripts/bench.sh ...`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

cargo build --release --workspace --bins >&2
target=${CARGO_TARGET_DIR:-$repo/target}

started=()
stop_started() { for service in "${started[@]}"; do "scripts/$service.sh" stop || true; done; }
trap stop_started EXIT

if [[ -z ${SCHEMA_REGISTRY_URL:-} && " $* " == *avro* ]]; then
  export CAPTAIN_REGISTRY_INSTANCE=bench-$$
  started+=(registry)
  line=$(scripts/registry.sh start | tail -n 1)
  export SCHEMA_REGISTRY_URL=${line#SCHEMA_REGISTRY_URL=}
  echo "bench.sh: schema registry at $SCHEMA_REGISTRY_URL" >&2
fi
if [[ -z ${KAFKA_BOOTSTRAP_SERVERS:-} ]]; then
  export CAPTAIN_KAFKA_INSTANCE=bench-$$
  started+=(kafka)
  line=$(scripts/kafka.sh start | tail -n 1)
  export KAFKA_BOOTSTRAP_SERVERS=${line#KAFKA_BOOTSTRAP_SERVERS=}
  # The broker's PID, so its CPU is reported next to the bridge's.
  state=${CAPTAIN_KAFKA_DIR:-$repo/.kafka}/broker-$CAPTAIN_KAFKA_INSTANCE.env
  BENCH_BROKER_PID=$(sed -n 's/^KAFKA_PID=//p' "$state")
  export BENCH_BROKER_PID
fi
echo "bench.sh: Kafka at $KAFKA_BOOTSTRAP_SERVERS" >&2

# Output goes to target/bench (relative to the repository) unless --out says otherwise.
"$target/release/captain-bench" "$@"
