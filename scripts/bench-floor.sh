#!/usr/bin/env bash
# The IM layer's overhead as a ratio: the same person-chat and fan-out workloads against
# `ruyi-load floor` (a relay on the same engine: no storage, auth, crypto or ack tracking)
# and against the release `ruyi` (unencrypted, token auth off, abuse limits off), one
# after the other on fresh ports. Prints deliveries/s of both and ruyi/floor.
#
#   scripts/bench-floor.sh [seconds]          (default 5 measured seconds per run)
#   scripts/bench-floor.sh [seconds] paced    paced person chat instead: 1,000 pairs,
#       window 64, at 10, 20, 30 and 41 SENDs/s per sender (10,000 to 41,000 sends/s);
#       prints SENDACK p50/p99, the load client's own lag p50/p99 and server CPU-s
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
mode=${2:-throughput}
out=target/bench/floor
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.txt
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p ruyi -p ruyi-load
bin=target/release

serve() { # kind tcp http data -> starts a server, prints its pid
  local kind=$1 tcp=$2 http=$3 data=$4
  if [ "$kind" = floor ]; then
    "$bin/ruyi-load" floor --tcp "127.0.0.1:$tcp" --http "127.0.0.1:$http" >"$data/server.log" 2>&1 &
  else
    "$bin/ruyi" --no-token-auth --no-encryption --max-conns-per-ip 0 --max-sends-per-sec 0 --max-send-bytes-per-sec 0 --max-logins-per-sec-per-ip 0 --max-logins-per-sec-per-uid 0 \
      --data-dir "$data" --tcp-addr "127.0.0.1:$tcp" --http-addr "127.0.0.1:$http" \
      --ws-addr "127.0.0.1:$((tcp + 2))" >"$data/server.log" 2>&1 &
  fi
  echo $!
}

measure() { # kind name load-args... -> deliveries/s
  local kind=$1 name=$2; shift 2
  local data tcp http pid
  data=$(mktemp -d)
  tcp=$((10000 + RANDOM % 20000)); http=$((tcp + 1))
  pid=$(serve "$kind" "$tcp" "$http" "$data")
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$http") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$tcp") 2>/dev/null && break
    sleep 0.05
  done
  "$bin/ruyi-load" "$@" --tcp "127.0.0.1:$tcp" --http "127.0.0.1:$http" --warmup 2 \
    --seconds "$seconds" --server-pid "$pid" --json "$out/$name-$kind.json" >"$out/$name-$kind.txt" 2>&1 \
    || { echo "FAILED: $name: messages lost or duplicated, or the run failed (see above or its .txt)" >&2; kill "$pid" 2>/dev/null; exit 1; }
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print("%.0f %d %d %d" % (r["deliveries_per_sec"], r["delivery_latency"]["p99_us"], r["lost"], r["duplicated"]))' \
    "$out/$name-$kind.json" 2>/dev/null || echo "0 0 ? ?"
}

if [ "$mode" = paced ]; then
  paced() { # kind rate -> "p50 p99 lag50 lag99 cpu lost dup"
    measure "$1" "paced-$2" person --pairs 1000 --window 64 --rate "$2" >/dev/null || return 1
    python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
s, l = r["sendack_latency"], r["client_send_lag"]
print(s["p50_us"], s["p99_us"], l["p50_us"], l["p99_us"], "%.2f" % r["server_cpu_seconds"], r["lost"], r["duplicated"])' \
      "$out/paced-$2-$1.json"
  }
  printf "%-8s %-6s %22s %18s %8s %s\n" sends/s server "SENDACK p50/p99 (us)" "client lag (us)" cpu-s lost/dup | tee "$out/summary.txt"
  for rate in 10 20 30 41; do
    for kind in floor ruyi; do
      row=$(paced "$kind" "$rate") || { echo "FAILED: $kind at $rate/s per sender" >&2; exit 1; }
      read -r p50 p99 l50 l99 cpu lost dup <<<"$row"
      printf "%-8s %-6s %22s %18s %8s %s/%s\n" "$((rate * 1000))" "$kind" "$p50 / $p99" "$l50 / $l99" "$cpu" "$lost" "$dup" | tee -a "$out/summary.txt"
    done
  done
  exit 0
fi

printf "%-14s %14s %14s %8s   %s\n" workload floor/s ruyi/s ruyi/floor "p99 floor/ruyi (us), lost/dup"
for spec in "person-1000|person --pairs 1000 --window 8" \
            "group-1x1000|group --groups 1 --members 1000 --senders 1 --window 32" \
            "group-100x10|group --groups 100 --members 10 --senders 1 --window 8"; do
  name=${spec%%|*}; args=${spec#*|}
  # shellcheck disable=SC2086
  read -r f fp fl fd <<<"$(measure floor "$name" $args)"
  # shellcheck disable=SC2086
  read -r r rp rl rd <<<"$(measure ruyi "$name" $args)"
  ratio=$(python3 -c "print(f'{$r / max($f, 1):.2f}')")
  printf "%-14s %14s %14s %8s   %s/%s, %s/%s %s/%s\n" "$name" "$f" "$r" "${ratio}x" "$fp" "$rp" "$fl" "$fd" "$rl" "$rd" | tee -a "$out/summary.txt"
done
