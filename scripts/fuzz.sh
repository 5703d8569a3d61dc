#!/usr/bin/env bash
# Coverage-guided fuzzing of the decoders of untrusted input (cargo fuzz: libFuzzer, with
# AddressSanitizer), each target for a fixed time.
#
#   scripts/fuzz.sh [SECONDS [TARGET...]]   default: 60 s for each of the four targets
#
# Targets (fuzz/fuzz_targets/): launch_request (the launch topic's JSON decoder), callback_payload
# (the callback endpoint's body decoder), token (callback tokens and key material), config (the
# config file and environment loader). Each starts from its committed corpus, fuzz/corpus/TARGET,
# which it only reads: what a run finds goes to a scratch corpus (FUZZ_WORK, default
# target/fuzz-work/TARGET, kept between runs on a machine); `FUZZ_MERGE=1` minimizes it into the
# committed corpus afterwards (only inputs that add coverage). A crash, a panic, a leak or a timeout fails the script and leaves the
# input in fuzz/artifacts/TARGET/ (replay: cargo +nightly fuzz run TARGET FILE).
#
# cargo fuzz needs nightly Rust (-Zsanitizer): the script uses the `nightly` rustup toolchain, and
# installs it (minimal profile) if it is missing. cargo-fuzz itself is built from crates.io at a pinned
# version into .tools/ the first time (about a minute). The first build of the targets compiles the
# bridge and librdkafka with the fuzzing flags into fuzz/target (several minutes on 2 cores; later
# runs reuse it). Environment: FUZZ_JOBS (parallel runs per target, default 1), FUZZ_RSS_MB (default
# 2048), FUZZ_TIMEOUT (seconds for one input, default 10).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

seconds=${1:-60}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then targets=(launch_request callback_payload token config); fi
cargo_fuzz_version=0.13.2
tools=${CAPTAIN_TOOLS_DIR:-$repo/.tools}
root=$tools/cargo-fuzz-$cargo_fuzz_version
work=${FUZZ_WORK:-$repo/target/fuzz-work}

log() { echo "fuzz.sh: $*" >&2; }

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "installing the nightly toolchain (cargo fuzz needs it)"
  rustup toolchain install nightly --profile minimal >&2 \
    || { log "cannot install the nightly toolchain: cargo fuzz cannot run here"; exit 1; }
fi
if [[ ! -x $root/bin/cargo-fuzz ]]; then
  log "building cargo-fuzz $cargo_fuzz_version into $root"
  cargo install --locked --quiet --root "$root" cargo-fuzz --version "$cargo_fuzz_version" >&2
fi
export PATH=$root/bin:$PATH
log "$(rustup run nightly rustc --version), cargo-fuzz $cargo_fuzz_version"

started=$(date +%s)
# Every target with the same flags, so `run` below finds them built.
flags=(--release --debug-assertions)
cargo +nightly fuzz build "${flags[@]}" >&2
log "targets built in $(($(date +%s) - started)) s"

# A known, bounded leak in a dependency (see the file) would otherwise fail the config target.
export LSAN_OPTIONS="suppressions=$repo/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

extra=()
if ((${FUZZ_JOBS:-1} > 1)); then extra=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS"); fi
status=0
for target in "${targets[@]}"; do
  mkdir -p "$work/$target"
  log "$target: ${seconds} s from fuzz/corpus/$target"
  if cargo +nightly fuzz run "${flags[@]}" "$target" "$work/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb="${FUZZ_RSS_MB:-2048}" -timeout="${FUZZ_TIMEOUT:-10}" \
      -print_final_stats=1 ${extra[@]+"${extra[@]}"} >"$work/$target.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log" | tail -n 1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$work/$target.log" | tail -n 1)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$work/$target.log" | tail -n 1)
    log "$target: no failure; ${runs:-?} inputs in ${seconds} s, ${cov:-?}, peak RSS ${rss:-?} MB"
  else
    status=1
    tail -n 60 "$work/$target.log" >&2
    log "$target: FAILED (the input is in fuzz/artifacts/$target/; log $work/$target.log)"
  fi
  if [[ ${FUZZ_MERGE:-0} == 1 ]]; then
    # Keeps, of what the run found, the inputs that add coverage to the committed corpus.
    cargo +nightly fuzz run "${flags[@]}" "$target" "fuzz/corpus/$target" "$work/$target" -- -merge=1 \
      >"$work/$target.merge.log" 2>&1 || log "$target: merge failed (log $work/$target.merge.log)"
  fi
done
exit $status
