#!/usr/bin/env bash
# Fuzzes the protocol decoders with cargo-fuzz (libFuzzer): the frame and confirmation
# decoders and the topic parser must return on any input, never panic, and what they
# accept must round-trip. Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
#
# Runs on the stable toolchain with `--sanitizer none`: the protocol crate has no unsafe
# code, so AddressSanitizer (nightly-only) would add nothing; panics, overflows (debug
# assertions are on) and timeouts are still caught. Each run starts from the committed
# seeds in fuzz/seeds/ plus whatever corpus earlier runs left in fuzz/corpus/.
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (cargo install --locked cargo-fuzz)"
  cargo install --locked cargo-fuzz
fi

for target in decode_frame decode_confirm parse_topic; do
  mkdir -p "corpus/$target" artifacts
  log="artifacts/$target.log"
  echo "fuzz: $target for ${seconds}s (log: fuzz/$log)"
  if ! cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$seconds" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/, reproduce with:" >&2
    echo "  cd fuzz && cargo fuzz run --sanitizer none $target artifacts/$target/<file>" >&2
    exit 1
  fi
  grep -E '^Done' "$log"
done
