#!/usr/bin/env bash
# A downstream consumer that is not ours, for tests: Confluent's Python client with its
# AvroDeserializer, run against a topic the bridge's encoder wrote (see
# scripts/avro-consumer/consume.py for the arguments and the output).
#
#   scripts/avro-consumer.sh setup          create .venv/avro-consumer from the pinned
#                                           requirements (again only when they change)
#   scripts/avro-consumer.sh consume ARGS   set up if needed, then run consume.py ARGS
#
# Needs python3 (3.10+) with venv and pip; packages come from PyPI.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
here=$repo/scripts/avro-consumer
venv=${CAPTAIN_AVRO_CONSUMER_VENV:-$repo/.venv/avro-consumer}

log() { echo "avro-consumer.sh: $*" >&2; }

setup() {
  local want
  want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
  if [[ -f $venv/.complete && $(cat "$venv/.complete") == "$want" ]]; then return; fi
  log "creating $venv (confluent-kafka with its Avro deserializer)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt" >&2
  echo "$want" >"$venv/.complete"
}

case "${1:-}" in
  setup) setup ;;
  consume) shift; setup; exec "$venv/bin/python" "$here/consume.py" "$@" ;;
  *) echo "usage: $0 setup|consume ARGS..." >&2; exit 2 ;;
esac
