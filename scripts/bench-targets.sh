#!/usr/bin/env bash
# Issue 6's targets, measured in one go on a fresh release server per run:
#   person chat: closed-loop maximum (3 runs, median), then SENDACK p99 at half that rate
#   (3 runs, median); group fan-out 1x1000 and 100x10 with deliveries per server CPU-second,
#   unencrypted and encrypted. Prints a table; JSON per run under target/bench/targets/.
#
#   scripts/bench-targets.sh [seconds]     (default 5 measured seconds per run)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
out=target/bench/targets
mkdir -p "$out"
rm -f "$out"/*.json
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p ruyi -p ruyi-load
bin=target/release

run() { # name encrypt(0/1) load-args... ; prints nothing, writes $out/name.json
  local name=$1 encrypt=$2; shift 2
  local data tcp http flags=(--no-token-auth --max-conns-per-ip 0 --max-sends-per-sec 0 --max-send-bytes-per-sec 0 --max-logins-per-sec-per-ip 0 --max-logins-per-sec-per-uid 0) enc=()
  data=$(mktemp -d)
  tcp=$((10000 + RANDOM % 20000)); http=$((tcp + 1))
  [ "$encrypt" = 0 ] && flags+=(--no-encryption)
  [ "$encrypt" = 1 ] && enc=(--encrypt)
  "$bin/ruyi" "${flags[@]}" --data-dir "$data" --tcp-addr "127.0.0.1:$tcp" \
    --http-addr "127.0.0.1:$http" --ws-addr "127.0.0.1:$((tcp + 2))" >"$data/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$http") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$tcp") 2>/dev/null && break
    sleep 0.05
  done
  "$bin/ruyi-load" "$@" "${enc[@]}" --tcp "127.0.0.1:$tcp" --http "127.0.0.1:$http" \
    --warmup 2 --seconds "$seconds" --server-pid "$pid" --json "$out/$name.json" >"$out/$name.txt" 2>&1 \
    || { echo "FAILED: $name: messages lost or duplicated, or the run failed (see above or its .txt)" >&2; kill "$pid" 2>/dev/null; exit 1; }
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}
field() { python3 -c 'import json,sys
r = json.load(open(sys.argv[1]))
v = r
for k in sys.argv[2].split("."): v = v[k]
print(v)' "$1" "$2"; }
median() { printf "%s\n" "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

maxes=()
for i in 1 2 3; do
  run "person-max-$i" 0 person --pairs 1000 --window 8
  maxes+=("$(field "$out/person-max-$i.json" sends_per_sec)")
done
max=$(median "${maxes[@]}")
per_sender=$(python3 -c "print(f'{$max / 2 / 1000:.1f}')")
p99s=()
for i in 1 2 3; do
  run "person-half-$i" 0 person --pairs 1000 --window 64 --rate "$per_sender"
  p99s+=("$(field "$out/person-half-$i.json" sendack_latency.p99_us)")
done
echo "person 1000 pairs: max durable sends/s ${maxes[*]} (median $max); at half ($per_sender/s per sender) SENDACK p99 us ${p99s[*]} (median $(median "${p99s[@]}"))" | tee "$out/summary.txt"
for enc in 0 1; do
  run "group-1x1000-$enc" "$enc" group --groups 1 --members 1000 --senders 1 --window 32
  run "group-100x10-$enc" "$enc" group --groups 100 --members 10 --senders 1 --window 8
  run "person-$enc" "$enc" person --pairs 1000 --window 8
  for name in "group-1x1000-$enc" "group-100x10-$enc" "person-$enc"; do
    f=$out/$name.json
    printf "%-16s encrypted=%s deliveries/s=%.0f per server CPU-s=%.0f p99=%sus lost=%s dup=%s\n" "$name" "$enc" \
      "$(field "$f" deliveries_per_sec)" "$(field "$f" deliveries_per_server_cpu_sec)" \
      "$(field "$f" delivery_latency.p99_us)" "$(field "$f" lost)" "$(field "$f" duplicated)" | tee -a "$out/summary.txt"
  done
done
