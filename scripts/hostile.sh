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
data=$(mktemp -d)
tcp=$((20000 + RANDOM % 20000)); http=$((tcp + 1)); ws=$((tcp + 2))
# Defaults except token auth (the load tool's users have no registered tokens).
"$bin/ruyi" --no-token-auth --data-dir "$data" --tcp-addr "127.0.0.1:$tcp" \
  --http-addr "127.0.0.1:$http" --ws-addr "127.0.0.1:$ws" >"$data/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$http") 2>/dev/null && break
  sleep 0.05
done
"$bin/ruyi-load" hostile --tcp "127.0.0.1:$tcp" --ws "127.0.0.1:$ws" --http "127.0.0.1:$http" \
  --seconds "$secs" --server-pid "$pid" --json "$out/hostile.json" "${@:2}" | tee "$out/summary.txt"
kill -0 "$pid" || { echo "the server died; see $data/server.log" >&2; exit 1; }
grep -c "panicked" "$data/server.log" && { echo "the server logged a panic" >&2; exit 1; }
echo "server alive, no panic; results in $out/"
