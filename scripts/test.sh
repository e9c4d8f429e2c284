#!/usr/bin/env bash
# The project's test command (README, .ci/run): brings up the real local service stack,
# then runs every check against it. No mocks: the integration tests talk to the stack's
# PostgreSQL, Redis, Mosquitto and Kafka-compatible broker.
#
#   scripts/test.sh            everything (the stack stays up afterwards for debugging;
#                              `scripts/stack.sh down` stops it)
#   FUZZ_SECONDS=300 scripts/test.sh    fuzz longer than the default 20 s per target
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
step() { printf '\n== %s\n' "$*"; }

step "local service stack"
scripts/stack.sh up
set -a
# shellcheck disable=SC1091
. "${STACK_DIR:-$root/.stack}/env"
set +a

step "toolchain components"
rustup component add rustfmt clippy >/dev/null
# A bare-metal target with no std proves the protocol crate really is no_std.
rustup target add thumbv7em-none-eabihf >/dev/null

step "format"
cargo fmt --all --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "protocol builds for a microcontroller (no_std, no allocator)"
cargo build --locked -p protocol --target thumbv7em-none-eabihf

step "edge agent for the Pi: aarch64 cross-build, --help under qemu, systemd unit"
scripts/cross-build.sh --check

step "tests"
test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$test_log"

# No Docker engine here: the compose file and Dockerfiles are checked instead (spec, the
# code's topics, ports and settings; the binaries just built accept each service's setup).
# Like fmt and clippy, a failure stops the run; it is not counted among the tests.
step "docker-compose.yml and Dockerfiles, validated"
scripts/check-compose.py --binaries "${CARGO_TARGET_DIR:-target}/debug"

step "fuzz the decoders"
scripts/fuzz.sh "${FUZZ_SECONDS:-20}"

# cargo prints one result line per test binary; end with the total, so the last line
# says how many tests ran.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "\ntests: %d passed, %d failed\n", passed, failed }' "$test_log"
