#!/usr/bin/env bash
# Runs the fuzz targets for a bounded time each: `decode` (the packet decoder) and `server`
# (real servers in-process fed hostile bytes on every port).
# Usage: scripts/fuzz.sh [secs] [target...]     (default targets: decode server)
#
# Builds with the coverage instrumentation cargo-fuzz would add, but on stable Rust and
# without cargo-fuzz or a sanitizer, so CI needs nothing beyond the toolchain and a C++
# compiler (libfuzzer-sys builds libFuzzer). For AddressSanitizer runs use cargo-fuzz:
# `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run server`.
#
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script: the status is
# the fuzz binary's own (its output goes to a log first, then is filtered). `.ci/run`
# proves that with the `gate_check` target, which crashes on its first input.
# New corpus entries are written to a scratch directory, not the committed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decode server)
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros, as cargo-fuzz does.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --quiet --manifest-path fuzz/Cargo.toml --target-dir fuzz/target/plain \
  --target "$host" --bins
for target in "${targets[@]}"; do
  scratch=$(mktemp -d)
  log=$(mktemp)
  mkdir -p "fuzz/artifacts/$target" "fuzz/corpus/$target"
  echo "fuzz $target: ${seconds}s"
  # -rss_limit_mb: the server target holds two servers and their caches.
  status=0
  "fuzz/target/plain/$host/release/$target" "$scratch" "fuzz/corpus/$target" \
    -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=4096 -timeout=30 \
    -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ *DONE)|panic|ERROR|SUMMARY|Done" "$log" || true
  rm -rf "$scratch" "$log"
  if [ "$status" -ne 0 ]; then
    echo "fuzz $target: FAILED (exit $status); inputs in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
