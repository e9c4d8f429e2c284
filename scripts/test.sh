#!/usr/bin/env bash
# The project's test command (README, .ci/run): brings up the real local service stack,
# then runs every check against it. No mocks: the integration tests talk to the stack's
# PostgreSQL, Redis, Mosquitto and Kafka-compatible broker.
#
#   scripts/test.sh            everything (the stack stays up afterwards for debugging;
#                              `scripts/stack.sh down` stops it)
#   FUZZ_SECONDS=300 scripts/test.sh    fuzz longer than the default 20 s per target
#
# It cannot hang: every step runs under timeout(1) (its whole process group is SIGKILLed
# 30 s after an unheeded SIGTERM), and nothing is read from a pipe a leftover process could
# hold: cargo test writes to a log file, shown as it grows. Each step says how long it
# took. Tests, the compose check and fuzzing all run even when one fails; the script then
# names what failed and exits non-zero. A process a test started and left running (a
# pipeline binary, a private test server) counts as a failure.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
target_dir=${CARGO_TARGET_DIR:-target}
# No incremental state: CI builds once from scratch, and the incremental caches of some
# 50 test binaries would need gigabytes of disk more (a developer may set it to 1).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

failures=()
current_step=
step_started=$SECONDS

# Closes the running step with its duration, and opens the next.
step() {
  end_step
  current_step=$*
  step_started=$SECONDS
  printf '\n== %s\n' "$current_step"
}
end_step() {
  if [[ -n $current_step ]]; then
    printf '== %s (took %d s)\n' "$current_step" $((SECONDS - step_started))
  fi
  current_step=
}

# The timeout(1) pid of the bounded command running now, and the tail showing its log;
# Ctrl-C or SIGTERM stops them (a background job in a script ignores SIGINT, and timeout
# runs the command in its own group). Both run in the background because bash runs a
# trap only once a foreground command ends, but at once during `wait`.
running=
tailing=
trap 'kill -TERM $running $tailing 2>/dev/null || true; exit 130' INT TERM

# bounded LIMIT [--log FILE] COMMAND...: runs COMMAND for at most LIMIT (timeout(1)'s
# syntax: 50m, 90s). With --log, its output goes to FILE, shown here as it grows.
# Returns the command's status; 124 or 137 when it timed out.
bounded() {
  local limit=$1 log= status=0
  shift
  if [[ $1 == --log ]]; then
    log=$2
    shift 2
  fi
  if [[ -n $log ]]; then
    : >"$log"
    timeout --kill-after=30s "$limit" "$@" >"$log" 2>&1 &
    running=$!
    # Ends by itself, after a last read, once the command's timeout process is gone.
    tail -n +1 -f --pid="$running" "$log" &
    tailing=$!
  else
    timeout --kill-after=30s "$limit" "$@" &
    running=$!
  fi
  wait "$running" || status=$?
  running=
  if [[ -n $tailing ]]; then
    wait "$tailing" || true
    tailing=
  fi
  return "$status"
}

# Records why the current step failed, from the status of `bounded`.
failed() {
  local status=$1 limit=$2
  if ((status == 124 || status == 137)); then
    failures+=("$current_step: timed out after $limit")
  else
    failures+=("$current_step: failed (exit status $status)")
  fi
  printf '== %s: %s\n' "$current_step" "${failures[-1]#*: }" >&2
}

summary() {
  end_step
  if ((${#failures[@]})); then
    printf '\nFAILED:\n' >&2
    printf '  %s\n' "${failures[@]}" >&2
    disk_note >&2
  fi
}

# Free space where the build goes, in MiB.
free_mib() {
  df -Pm "$target_dir" 2>/dev/null | awk 'NR == 2 { print $4 }'
}

# A full disk makes every later step fail in ways that do not say so (a linker error,
# a broken apt): name it once, with what a run needs.
disk_note() {
  local free
  free=$(free_mib)
  if [[ -n $free ]] && ((free < disk_needed_mib)); then
    printf '\nthe disk is (nearly) full: %s MiB free in %s; a run needs about %s MiB\n' \
      "$free" "$target_dir" "$disk_needed_mib"
    printf '(target/ and fuzz/target/ take 3.4 GB; a fresh machine also builds Tansu in /tmp)\n'
  fi
}

# run LIMIT COMMAND...: a step whose failure stops the run (the stack, toolchain, format,
# lint, builds), as a broken build makes the rest meaningless.
run() {
  local limit=$1 status=0
  shift
  bounded "$limit" "$@" || status=$?
  if ((status != 0)); then
    failed "$status" "$limit"
    summary
    exit 1
  fi
}

# Processes the tests may start: test and pipeline binaries, testkit's private servers
# (Mosquitto, Redis, Tansu, PostgreSQL) and the console's browser (ChromeDriver and the
# Chromium it runs). Zombies (already dead) do not count.
# Binaries are matched by this checkout's own target directory (tests start them by
# absolute path), so another checkout's build on the same machine is not taken for one.
test_processes() {
  local tmp=${TMPDIR:-/tmp} debug
  debug=$(cd "$target_dir" && pwd -P)/debug/
  ps -eo pid=,stat=,args= |
    awk -v tmp="${tmp%/}" -v debug="$debug" '
      $2 ~ /^Z/ { next }
      index($0, debug) ||
      index($0, "mosquitto -c " tmp "/") || index($0, tmp "/pgtest-") ||
      /tansu broker/ || /redis-server 127\.0\.0\.1:/ ||
      /chromedriver --port=/ || /chromium.*--user-data-dir=/ { print }' |
    grep -v -e "awk -v tmp" || true
}

# What a run takes on a fresh clone: 3.4 GB measured for target/ and fuzz/target/ (the
# test build alone 2.4 GB), plus Tansu's first build and cargo's downloads, with room.
disk_needed_mib=6000
mkdir -p "$target_dir"
free=$(free_mib)
if [[ -n $free ]] && ((free < disk_needed_mib)); then
  printf 'warning: %s MiB free in %s; a fresh run needs about %s MiB (going on)\n' \
    "$free" "$target_dir" "$disk_needed_mib" >&2
fi

step "local service stack"
run 30m scripts/stack.sh up
set -a
# shellcheck disable=SC1091
. "${STACK_DIR:-$root/.stack}/env"
set +a

step "toolchain components"
run 10m rustup component add rustfmt clippy
# A bare-metal target with no std proves the protocol crate really is no_std.
run 10m rustup target add thumbv7em-none-eabihf

step "format"
run 5m cargo fmt --all --check

step "lint"
run 40m cargo clippy --workspace --all-targets --locked -- -D warnings
run 1m python3 scripts/check-module-cycles.py

step "protocol builds for a microcontroller (no_std, no allocator)"
run 10m cargo build --locked -p protocol --target thumbv7em-none-eabihf

step "edge agent for the Pi: aarch64 cross-build, --help under qemu, systemd unit"
run 30m scripts/cross-build.sh --check

step "tests"
mkdir -p "$target_dir"
test_log=$target_dir/test-output.log
before=$(test_processes | awk '{ print $1 }')
test_limit=50m
# --no-fail-fast: every test binary runs and reports, even after one failed.
status=0
bounded "$test_limit" --log "$test_log" cargo test --workspace --locked --no-fail-fast ||
  status=$?
if ((status != 0)); then
  failed "$status" "$test_limit"
fi
echo "(cargo test's output: $test_log)"

# What the tests left running: a test must stop everything it starts, even when it fails
# (testkit::ChildGuard). Killed children go within moments; give them 10 s.
leftovers=
for _ in $(seq 10); do
  leftovers=$(test_processes | awk -v before=" $(echo $before) " 'index(before, " " $1 " ") == 0')
  [[ -z $leftovers ]] && break
  sleep 1
done
if [[ -n $leftovers ]]; then
  printf 'processes started by the tests are still running:\n%s\n' "$leftovers" >&2
  failures+=("tests: left processes running (listed above)")
fi

# libtest on stable has no per-test times; each test binary's total is the next best.
# The first ten by awk, which reads to the end: `head` exits early, and under pipefail
# sort's SIGPIPE (141) then ended the whole command (seen once the list outgrew a write).
echo "slowest test binaries:"
awk '
  /^ *Running / { name = $0; sub(/^ *Running /, "", name) }
  /^ *Doc-tests / { name = "doc-tests " $2 }
  /^test result:/ && match($0, /finished in [0-9.]+s/) {
    printf "  %8.1f s  %s\n", substr($0, RSTART + 12, RLENGTH - 13), name
  }' "$test_log" | sort -rn | awk 'NR <= 10'

# No Docker engine here: the compose file and Dockerfiles are checked instead (spec, the
# code's topics, ports and settings; the binaries just built accept each service's setup).
# Not counted among the tests.
step "docker-compose.yml and Dockerfiles, validated"
bounded 10m scripts/check-compose.py --binaries "$target_dir/debug" || failed $? 10m

step "fuzz the decoders"
fuzz_seconds=${FUZZ_SECONDS:-20}
fuzz_limit=$((900 + 2 * fuzz_seconds))s
bounded "$fuzz_limit" scripts/fuzz.sh "$fuzz_seconds" || failed $? "$fuzz_limit"

summary
# cargo prints one result line per test binary; end with the total, so the last line
# says how many tests ran.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "\ntests: %d passed, %d failed\n", passed, failed }' "$test_log"
((${#failures[@]} == 0))
