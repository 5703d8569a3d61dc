#!/usr/bin/env bash
# The one command that runs every test (unit + integration + end-to-end).
#
# Starts a real Kafka broker with scripts/kafka.sh unless KAFKA_BOOTSTRAP_SERVERS is already set,
# builds the binaries the end-to-end tests run as processes (captain-bridge, captain-sim), runs
# the whole suite, and stops the broker it started, even when tests fail.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -- schedule`).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if [[ -z ${KAFKA_BOOTSTRAP_SERVERS:-} ]]; then
  export CAPTAIN_KAFKA_INSTANCE=test-$$
  trap 'scripts/kafka.sh stop' EXIT
  line=$(scripts/kafka.sh start | tail -n 1)
  export KAFKA_BOOTSTRAP_SERVERS=${line#KAFKA_BOOTSTRAP_SERVERS=}
fi
echo "test.sh: Kafka at $KAFKA_BOOTSTRAP_SERVERS" >&2

cargo build --workspace --bins
cargo test --workspace --all-targets "$@"
