#!/usr/bin/env bash
# bench-bridge.sh - runs the bridge throughput benchmark (`bench bridge`, the bench crate's
# bench/src/bridge_throughput/) against the local stack, built in release like the rest of
# the benchmark suite, after making sure what its shell-pipeline baseline needs is
# installed: a Python venv under target/bench-venv with confluent-kafka (a PyPI wheel
# that bundles a librdkafka recent enough for Tansu; Debian's kcat is too old for it).
#
#   scripts/bench-bridge.sh                 the default run (200k frames, 100 devices, 4 publishers)
#   BENCH_FRAMES=50000 scripts/bench-bridge.sh
#   scripts/bench-bridge.sh --frames 50000 --connections 2     (flags go to the bench)
#
# Needs the stack: `scripts/stack.sh up` first (this script does not start or stop it).
# Flags and environment knobs: `target/release/bench bridge --help`, or the top of
# bench/src/bridge_throughput/mod.rs.

set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

if [[ ! -f .stack/env ]]; then
  echo "bench-bridge.sh: .stack/env is missing; run scripts/stack.sh up first" >&2
  exit 1
fi
set -a
# shellcheck disable=SC1091
. .stack/env
set +a

command -v mosquitto >/dev/null || { echo "bench-bridge.sh: mosquitto is not installed (scripts/stack.sh up installs it)" >&2; exit 1; }
command -v mosquitto_sub >/dev/null || { echo "bench-bridge.sh: mosquitto_sub is not installed (apt-get install mosquitto-clients)" >&2; exit 1; }

# The shell-pipeline baseline's Kafka producer. A failure here is not fatal: the bench
# then prints why that row has no number.
VENV="$REPO_ROOT/target/bench-venv"
if ! "$VENV/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      apt-get install -y python3-venv >/dev/null
      python3 -m venv "$VENV"
    fi
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'confluent-kafka>=2.6' \
    || echo "bench-bridge.sh: could not install confluent-kafka; the shell-pipeline row will say so" >&2
fi
export BENCH_PYTHON="${BENCH_PYTHON:-$VENV/bin/python}"

cargo build --release --locked -p bench
exec "${CARGO_TARGET_DIR:-target}/release/bench" bridge "$@"
