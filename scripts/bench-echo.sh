#!/usr/bin/env bash
# Echo benchmark: the ruyi-reactor engine against tokio (multi-thread) and a single-thread
# mio floor, same load client, same run. Prints a markdown table of medians and writes the
# raw JSON under target/bench/echo/.
#
#   scripts/bench-echo.sh [rounds] [seconds]
#
# Bounded: each server runs with a time limit and is killed by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-5}
conns=${CONNS:-1000}
size=${SIZE:-64}
loops=${LOOPS:-2}
out=target/bench/echo
mkdir -p "$out"
rm -f "$out"/*.json

cargo build --release -q -p ruyi-load -p ruyi-reactor --examples --bins
bin=target/release

start_server() { # name port; sets $pid. Each server also stops itself after 120 s.
  case $1 in
    ruyi)  "$bin/examples/echo" "127.0.0.1:$2" "$loops" 120 >/dev/null 2>&1 & ;;
    tokio) "$bin/examples/tokio_echo" "127.0.0.1:$2" "$loops" 120 >/dev/null 2>&1 & ;;
    mio)   "$bin/examples/mio_echo" "127.0.0.1:$2" 120 >/dev/null 2>&1 & ;;
  esac
  pid=$!
}

wait_port() { # port pid: the port answers and it is our server that answers
  for _ in $(seq 100); do
    kill -0 "$2" 2>/dev/null || break
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not come up" >&2
  return 1
}

port=$((10000 + RANDOM % 20000))
for round in $(seq "$rounds"); do
  for mode in rr pipelined; do
    depth=1; [ "$mode" = pipelined ] && depth=16
    for server in ruyi tokio mio; do
      port=$((port + 1))
      start_server "$server" "$port"
      wait_port "$port" "$pid"
      "$bin/ruyi-load" echo --addr "127.0.0.1:$port" --conns "$conns" --size "$size" \
        --depth "$depth" --warmup 1 --seconds "$seconds" --label "$server" \
        --server-pid "$pid" --json "$out/$mode-$server-$round.json"
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    done
  done
done

python3 - "$out" <<'PY'
import json, glob, statistics, sys, os
out = sys.argv[1]
rows = {}
for f in glob.glob(os.path.join(out, "*.json")):
    mode, server, _ = os.path.basename(f)[:-5].split("-")
    rows.setdefault((mode, server), []).append(json.load(open(f)))
def med(rs, key):
    return statistics.median(key(r) for r in rs)
print("| mode | server | msgs/s | vs tokio | msgs per server CPU-s | vs tokio | p50 µs | p99 µs |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for mode in ("rr", "pipelined"):
    t = rows[(mode, "tokio")]
    t_rate = med(t, lambda r: r["msgs_per_sec"])
    t_eff = med(t, lambda r: r["msgs_per_server_cpu_sec"])
    for server in ("ruyi", "tokio", "mio"):
        rs = rows[(mode, server)]
        rate = med(rs, lambda r: r["msgs_per_sec"])
        eff = med(rs, lambda r: r["msgs_per_server_cpu_sec"])
        print(f"| {mode} | {server} | {rate:,.0f} | {rate/t_rate:.2f}x | {eff:,.0f} | {eff/t_eff:.2f}x "
              f"| {med(rs, lambda r: r['latency']['p50_us']):,.0f} | {med(rs, lambda r: r['latency']['p99_us']):,.0f} |")
PY
