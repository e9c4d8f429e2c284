#!/usr/bin/env bash
# The fault-injection suite in long mode: every scenario (or those named) against the
# real pipeline built in release mode, more and longer faults than the short mode that
# scripts/test.sh runs, each scenario's ledger printed.
#
#   scripts/faults.sh                        all scenarios, a random seed (printed)
#   scripts/faults.sh --seed 7 agent-kill    one scenario, a chosen seed
#   scripts/faults.sh --rate 800             long mode at the short mode's workload
#   scripts/faults.sh --mode short           the short mode, from release binaries
#   scripts/faults.sh --list                 the scenarios
#
# --rate N: readings per second the agents make, 800 to 120 800. Long mode defaults to
# the benchmark's 120 000 (5 devices x 240 channels every 10 ms, as bench/src/
# deployment.rs): the five seed devices get simulated channels added (registered in
# device_channels) and an agent process each. Short mode defaults to 800, the seed
# channels alone on two agents (what scripts/test.sh runs).
#
# Each scenario starts private PostgreSQL, Redis, Mosquitto and Tansu servers on free
# ports; `scripts/stack.sh up` installs them (this script runs it first).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/stack.sh up >/dev/null
cargo build --release --locked -p edge-agent -p bridge -p cloud-ingester -p iotctl -p e2e
E2E_BIN_DIR="${CARGO_TARGET_DIR:-target}/release" exec "${CARGO_TARGET_DIR:-target}/release/faults" "$@"
