#!/usr/bin/env bash
# The client dialects side by side (issue 19): the binary protocol on TCP, the binary
# protocol in WebSocket messages (as the JS SDK sends it), and JSON-RPC in WebSocket text
# messages (as the EasySDK clients send it), with the same load tool, accounting and
# workloads, encryption off for all three (JSON-RPC has none). Each run gets a fresh
# release server; the dialects alternate within each repetition, so a noisy machine
# shows as spread, not as a bias.
#
#   scripts/bench-dialects.sh [seconds] [repetitions]      (default 5 and 2)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
reps=${2:-2}
out=target/bench/dialects
mkdir -p "$out"
rm -f "$out"/*.json
cargo build --release -q -p ruyi -p ruyi-load
source scripts/lib.sh
limits=(--no-encryption --max-conns-per-ip 0 --max-sends-per-sec 0 --max-send-bytes-per-sec 0
  --max-logins-per-sec-per-ip 0 --max-logins-per-sec-per-uid 0)
for rep in $(seq "$reps"); do
  for workload in "person --pairs 1000 --window 8" "group --groups 1 --members 1000 --senders 1 --window 32" "group --groups 100 --members 10 --senders 1 --window 8"; do
    for dialect in tcp ws ws-jsonrpc; do
      start_ruyi "${limits[@]}"
      case $dialect in
        tcp) how=() ;;
        ws) how=(--ws "127.0.0.1:$ws") ;;
        ws-jsonrpc) how=(--ws "127.0.0.1:$ws" --jsonrpc) ;;
      esac
      name="$(echo "$workload" | cut -d' ' -f1-3 | tr ' ' '_')-$dialect-$rep"
      # shellcheck disable=SC2086
      target/release/ruyi-load $workload "${how[@]}" --tcp "127.0.0.1:$tcp" \
        --http "127.0.0.1:$http" --warmup 2 --seconds "$seconds" --server-pid "$pid" \
        --json "$out/$name.json" || { stop_ruyi; exit 1; }
      stop_ruyi
    done
  done
done
