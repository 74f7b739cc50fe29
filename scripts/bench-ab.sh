#!/usr/bin/env bash
# Two server binaries side by side, alternated in one run so the shared machine's noise
# falls on both: person chat (1,000 pairs, window 8, closed loop) and group fan-out (one
# group of 1,000; 100 groups of 10), unencrypted, each scenario `rounds` times per binary.
# Prints one line per run and the medians; JSON per run under target/bench/ab/.
#
#   scripts/bench-ab.sh OLD_BIN NEW_BIN [seconds] [rounds]     (defaults: 5 s, 3 rounds)
#   NEW_FLAGS="..." adds flags for the new binary only (limits the old one does not know,
#   e.g. NEW_FLAGS="--max-logins-per-sec-per-ip 0 --max-logins-per-sec-per-uid 0
#   --max-send-bytes-per-sec 0" for binaries after 8e60f44).
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 seconds=${3:-5} rounds=${4:-3}
out=target/bench/ab
mkdir -p "$out"
rm -f "$out"/*.json
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p ruyi-load
load=target/release/ruyi-load

run() { # bin name load-args... ; writes $out/name.json
  local bin=$1 name=$2; shift 2
  local data tcp http extra=()
  # shellcheck disable=SC2206
  [ "$bin" = "$new" ] && extra=(${NEW_FLAGS:-})
  data=$(mktemp -d)
  tcp=$((10000 + RANDOM % 20000)); http=$((tcp + 1))
  "$bin" --no-token-auth --max-conns-per-ip 0 --max-sends-per-sec 0 --no-encryption "${extra[@]}" \
    --data-dir "$data" --tcp-addr "127.0.0.1:$tcp" --http-addr "127.0.0.1:$http" \
    --ws-addr "127.0.0.1:$((tcp + 2))" >"$data/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$http") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$tcp") 2>/dev/null && break
    sleep 0.05
  done
  "$load" "$@" --tcp "127.0.0.1:$tcp" --http "127.0.0.1:$http" --warmup 2 \
    --seconds "$seconds" --server-pid "$pid" --json "$out/$name.json" >"$out/$name.txt" 2>&1 \
    || { echo "FAILED: $name (see $out/$name.txt)"; kill "$pid"; exit 1; }
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}
field() { python3 -c 'import json,sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = v[k]
print(v)' "$1" "$2"; }
median() { printf "%s\n" "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A results
scenarios=(person group1000 group10)
for r in $(seq "$rounds"); do
  for side in old new; do
    bin=$old; [ "$side" = new ] && bin=$new
    run "$bin" "person-$side-$r" person --pairs 1000 --window 8
    run "$bin" "group1000-$side-$r" group --groups 1 --members 1000 --senders 1 --window 32
    run "$bin" "group10-$side-$r" group --groups 100 --members 10 --senders 1 --window 8
    p=$(field "$out/person-$side-$r.json" sends_per_sec)
    g=$(field "$out/group1000-$side-$r.json" deliveries_per_sec)
    h=$(field "$out/group10-$side-$r.json" deliveries_per_sec)
    echo "round $r $side: person sends/s $p; 1x1000 deliveries/s $g; 100x10 deliveries/s $h"
    results[person-$side]+="$p "
    results[group1000-$side]+="$g "
    results[group10-$side]+="$h "
  done
done
for s in "${scenarios[@]}"; do
  # shellcheck disable=SC2086
  o=$(median ${results[$s-old]}) n=$(median ${results[$s-new]})
  echo "$s: old median $o, new median $n, new/old $(python3 -c "print(f'{$n / $o:.2f}')")"
done
