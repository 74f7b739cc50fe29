#!/usr/bin/env bash
# IM benchmarks (issue 4): person chat and group fan-out against the release `ruyi`, with
# the protocol load tool. Each scenario gets a fresh server on a temp data directory
# (token auth off; encryption off unless the scenario says so), and the server is killed by
# PID at the end. Prints one line per run; JSON lands in target/bench/im/.
#
#   scripts/bench-im.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
out=target/bench/im
mkdir -p "$out"
cargo build --release -q -p ruyi -p ruyi-load
bin=target/release

run_one() { # name encrypt(0/1) load-args...
  local name=$1 encrypt=$2; shift 2
  # Load from one address at full speed: the abuse limits (per-address connections,
  # sends per second) would measure themselves, not the server.
  local data tcp http flags=(--no-token-auth --max-conns-per-ip 0 --max-sends-per-sec 0 --max-send-bytes-per-sec 0 --max-logins-per-sec-per-ip 0 --max-logins-per-sec-per-uid 0)
  data=$(mktemp -d)
  tcp=$((10000 + RANDOM % 20000)); http=$((tcp + 1))
  [ "$encrypt" = 0 ] && flags+=(--no-encryption)
  "$bin/ruyi" "${flags[@]}" --data-dir "$data" --tcp-addr "127.0.0.1:$tcp" --http-addr "127.0.0.1:$http" >"$data/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || { echo "$name: server exited:"; tail -3 "$data/server.log"; return 0; }
    (exec 3<>"/dev/tcp/127.0.0.1/$http") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$tcp") 2>/dev/null && break
    sleep 0.05
  done
  local enc=(); [ "$encrypt" = 1 ] && enc=(--encrypt)
  "$bin/ruyi-load" "$@" "${enc[@]}" --tcp "127.0.0.1:$tcp" --http "127.0.0.1:$http" \
    --warmup 2 --seconds "$seconds" --server-pid "$pid" --json "$out/$name.json" \
    || { echo "FAILED: $name: messages lost or duplicated, or the run failed (see above or its .txt)" >&2; kill "$pid" 2>/dev/null; exit 1; }
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}

only=${ONLY:-}
run() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]] || return 0; run_one "$@"; }

run person-1000 0 person --pairs 1000 --window 8
run person-1000-enc 1 person --pairs 1000 --window 8
run group-1x1000 0 group --groups 1 --members 1000 --senders 1 --window 32
run group-1x1000-enc 1 group --groups 1 --members 1000 --senders 1 --window 32
run group-100x10 0 group --groups 100 --members 10 --senders 1 --window 8
run group-100x10-enc 1 group --groups 100 --members 10 --senders 1 --window 8
