#!/usr/bin/env bash
# Hostile clients against the release server on its default limits, one kind per phase,
# while healthy encrypted pairs chat at a fixed rate; prints each phase's healthy p99 next
# to the quiet baseline's and the server's RSS. Results in target/hostile/.
#
#   scripts/hostile.sh [seconds-per-phase]     (default 5: about 1.5 minutes in all)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
out=target/hostile
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p ruyi -p ruyi-load
bin=target/release
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
start_ruyi # defaults except token auth (the load tool's users have no registered tokens)
trap stop_ruyi EXIT
"$bin/ruyi-load" hostile --tcp "127.0.0.1:$tcp" --ws "127.0.0.1:$ws" --http "127.0.0.1:$http" \
  --seconds "$secs" --server-pid "$pid" --json "$out/hostile.json" "${@:2}" | tee "$out/summary.txt"
kill -0 "$pid" || { echo "the server died" >&2; tail -5 "$data/server.log" >&2; exit 1; }
if grep -q "panicked" "$data/server.log"; then echo "the server logged a panic" >&2; exit 1; fi
echo "server alive, no panic; results in $out/"
