#!/usr/bin/env bash
# bench.sh - the benchmark suite in one command: every component's benchmark, then the
# pipeline end to end (bench/), written up as docs/benchmarks.md and docs/benchmarks.svg.
#
#   scripts/bench.sh            full run (about 15 minutes on a 2-core machine, once built);
#                               writes docs/benchmarks.md and docs/benchmarks.svg
#   scripts/bench.sh --quick    smoke run (2-3 minutes once built); writes
#                               to a temporary directory and prints where
#   scripts/bench.sh --out DIR  write the report to DIR instead
#   scripts/bench.sh --no-perf  skip the perf profiles of the throughput windows
#
# Starts the local stack if needed (scripts/stack.sh up), builds the release binaries,
# runs, in order: the bridge throughput bench (scripts/bench-bridge.sh, which runs
# `target/release/bench bridge`: Kafka ceiling, embedded mode without and with the gateway
# registry (logins and sealed frames checked), client mode against
# Mosquitto), the ingest bench (cloud-ingester), the edge-agent footprint bench, the
# console bench (overview, live viewers, charts), and the
# end-to-end bench (target/release/bench), which parses the component benches' output
# and writes the report (release binaries under $CARGO_TARGET_DIR when it is set). Each
# bench's raw output goes to target/bench-logs/<run>/ and into the report's appendix.
# Installs Debian's linux-perf when missing and running as root (the profile is optional
# otherwise).

set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

QUICK=0
PERF=1
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-perf) PERF=0 ;;
    --out) OUT="${2:?--out needs a directory}"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
T0=$(date +%s)
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
LOGS="$REPO_ROOT/target/bench-logs/$RUN_ID"
mkdir -p "$LOGS"
if [[ -z "$OUT" ]]; then
  if [[ $QUICK == 1 ]]; then
    OUT=$(mktemp -d -t bench-report.XXXXXX)
  else
    OUT="$REPO_ROOT/docs"
  fi
fi
mkdir -p "$OUT"

step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "stack"
scripts/stack.sh up
set -a
# shellcheck disable=SC1091
. .stack/env
set +a

if [[ $PERF == 1 ]] && ! command -v perf >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    step "installing linux-perf (Debian) for the profile"
    apt-get install -y linux-perf >/dev/null || echo "bench.sh: could not install linux-perf; no profile" >&2
  else
    echo "bench.sh: perf is not installed (apt-get install linux-perf); no profile" >&2
  fi
fi
PERF_FLAG=()
if [[ $PERF == 1 ]] && command -v perf >/dev/null && perf record -q -o "$LOGS/perf-check.data" -- true >/dev/null 2>&1; then
  PERF_FLAG=(--perf)
fi

step "building the release binaries"
cargo build --release --locked -p edge-agent -p bridge -p cloud-ingester -p bench
RELEASE="${CARGO_TARGET_DIR:-target}/release"

# Runs one component bench: its stdout to $LOGS/NAME.log (parsed by the report), its
# stderr (build output, progress) to $LOGS/NAME.err, the command line to $LOGS/NAME.cmd.
component() {
  local name=$1 shown=$2
  shift 2
  step "component bench: $name"
  echo "$shown" >"$LOGS/$name.cmd"
  if ! "$@" >"$LOGS/$name.log" 2>"$LOGS/$name.err"; then
    echo "bench.sh: the $name bench failed; its output is in $LOGS/$name.log and $LOGS/$name.err" >&2
    tail -n 20 "$LOGS/$name.err" >&2
    exit 1
  fi
  cat "$LOGS/$name.log"
}

if [[ $QUICK == 1 ]]; then
  BRIDGE_FRAMES=20000
  INGEST_ENV=(BENCH_READINGS=200000 BENCH_ROUNDS=1 BENCH_NAIVE_READINGS=5000 BENCH_AUTOCOMMIT_READINGS=500)
  FOOTPRINT_SECONDS=15
else
  BRIDGE_FRAMES=200000
  INGEST_ENV=(BENCH_READINGS=1000000 BENCH_ROUNDS=2)
  FOOTPRINT_SECONDS=60
fi

component bridge \
  "scripts/bench-bridge.sh --frames $BRIDGE_FRAMES --only ceiling,embedded,embedded-sealed,embedded-tls,client" \
  scripts/bench-bridge.sh --frames "$BRIDGE_FRAMES" --only ceiling,embedded,embedded-sealed,embedded-tls,client
component ingest \
  "${INGEST_ENV[*]} cargo bench --locked -p cloud-ingester --bench ingest" \
  env "${INGEST_ENV[@]}" cargo bench --locked -p cloud-ingester --bench ingest
component footprint \
  "cargo bench --locked -p edge-agent --bench footprint -- $FOOTPRINT_SECONDS" \
  cargo bench --locked -p edge-agent --bench footprint -- "$FOOTPRINT_SECONDS"
component console \
  "cargo bench --locked -p console --bench console" \
  cargo bench --locked -p console --bench console

step "end to end"
MINUTES_BEFORE=$(awk -v s="$(( $(date +%s) - T0 ))" 'BEGIN { printf "%.2f", s / 60 }')
QUICK_FLAG=()
if [[ $QUICK == 1 ]]; then
  QUICK_FLAG=(--quick)
fi
"$RELEASE/bench" \
  --bin-dir "$RELEASE" \
  --components "$LOGS" \
  --work "$LOGS/e2e" \
  --out "$OUT" \
  --started "$STARTED" \
  --minutes-before "$MINUTES_BEFORE" \
  "${QUICK_FLAG[@]}" "${PERF_FLAG[@]}" 2>&1 | tee "$LOGS/e2e.log"

step "done in $(( ($(date +%s) - T0) / 60 )) min $(( ($(date +%s) - T0) % 60 )) s"
echo "report:    $OUT/benchmarks.md"
echo "chart:     $OUT/benchmarks.svg"
echo "raw logs:  $LOGS"
