#!/usr/bin/env bash
# Produces launch requests at a steady pace, so the dashboard has something to show: COUNT
# requests (0 = forever), one every INTERVAL seconds, every 10th one invalid on purpose (no
# inputs: REJECTED and dead-lettered). Used by docker-compose.yml's `loadgen` service (with
# the Kafka image's console producer) and by scripts/deploy-check.sh (with scripts/kafka.sh's).
set -euo pipefail
: "${BOOTSTRAP:?BOOTSTRAP (host:port of a broker) is required}"
TOPIC=${TOPIC:-captain.launch-requests}
COUNT=${COUNT:-0}
INTERVAL=${INTERVAL:-1}
PRODUCER=${PRODUCER:-/opt/kafka/bin/kafka-console-producer.sh}
run=${RUN_ID:-$(date +%s)}

requests() {
  local i=0
  while ((COUNT == 0 || i < COUNT)); do
    i=$((i + 1))
    id="load-$run-$i"
    if ((i % 10 == 0)); then
      inputs='[]'
    else
      inputs="[{\"linkedin_people_search_url\":\"https://www.linkedin.com/search/results/people/?keywords=cto-$i\",\"custom_data\":{\"row\":\"$i\"}}]"
    fi
    printf '%s|{"request_id":"%s","action":"linkedin-search-people","inputs":%s,"parameters":{"max_results":4},"metadata":{"source":"loadgen"}}\n' \
      "$id" "$id" "$inputs"
    sleep "$INTERVAL"
  done
}

# One producer for the whole run; it exits when the loop above ends (COUNT reached).
# shellcheck disable=SC2086 # PRODUCER may be a command with arguments
requests | $PRODUCER --bootstrap-server "$BOOTSTRAP" --topic "$TOPIC" \
  --property parse.key=true --property 'key.separator=|'
