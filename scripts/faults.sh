#!/usr/bin/env bash
# The fault-injection suite in long mode: every scenario (or those named) against the
# real pipeline built in release mode, more and longer faults than the short mode that
# scripts/test.sh runs, each scenario's ledger printed. Takes about 15 minutes.
#
#   scripts/faults.sh                        all scenarios, a random seed (printed)
#   scripts/faults.sh --seed 7 agent-kill    one scenario, a chosen seed
#   scripts/faults.sh --mode short           the short mode, from release binaries
#   scripts/faults.sh --list                 the scenarios
#
# Each scenario starts private PostgreSQL, Redis, Mosquitto and Tansu servers on free
# ports; `scripts/stack.sh up` installs them (this script runs it first).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/stack.sh up >/dev/null
cargo build --release --locked -p edge-agent -p bridge -p cloud-ingester -p iotctl -p e2e
E2E_BIN_DIR="${CARGO_TARGET_DIR:-target}/release" exec "${CARGO_TARGET_DIR:-target}/release/faults" "$@"
