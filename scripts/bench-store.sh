#!/usr/bin/env bash
# SQLite against PostgreSQL (issue 16), same run, same machine: person chat's durable
# sends/s (1,000 pairs, window 8) and the two fan-out shapes, one fresh release server per
# row, PostgreSQL on a private server (scripts/pg-test-server.sh) on the same cores.
#
#   scripts/bench-store.sh [seconds]      (default 5 measured seconds per run)
#   PERF=1 scripts/bench-store.sh         (also perf-records person chat on each store)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
out=target/bench/store
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.txt
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p ruyi -p ruyi-load
eval "$(bash scripts/pg-test-server.sh start)"
trap 'bash scripts/pg-test-server.sh stop "$RUYI_TEST_PG_DIR"' EXIT
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
flags="--no-encryption --max-conns-per-ip 0 --max-sends-per-sec 0 --max-send-bytes-per-sec 0 --max-logins-per-sec-per-ip 0 --max-logins-per-sec-per-uid 0"
run() { # store name load-args... -> "deliveries/s sends/s sendack-p99-us server-cpu-s"
  local store=$1 name=$2; shift 2
  local url=sqlite
  if [ "$store" = postgres ]; then
    # A fresh database per row (run() is called in a subshell: no counter survives it).
    local db=bench_${name//-/_}
    psql -q "$RUYI_TEST_PG" -c "CREATE DATABASE $db" >/dev/null
    url=${RUYI_TEST_PG/\/postgres\?//$db?}
  fi
  [ "$store" = postgres ] && lsn0=$(psql -qtA "$RUYI_TEST_PG" -c "SELECT pg_current_wal_lsn()")
  # shellcheck disable=SC2086
  start_ruyi $flags --store "$url" || exit 1
  local perf_pid=
  if [ -n "${PERF:-}" ] && [ "$name" = person-1000 ]; then
    # Where the time goes: Ruyi's threads sampled for the measured seconds.
    perf record -q -F 499 -g -o "$out/$name-$store.perf" -p "$pid" -- sleep $((seconds + 2)) \
      >/dev/null 2>&1 &
    perf_pid=$!
  fi
  "target/release/ruyi-load" "$@" --tcp "127.0.0.1:$tcp" --http "127.0.0.1:$http" --warmup 2 \
    --seconds "$seconds" --server-pid "$pid" --prefix "$name" --json "$out/$name-$store.json" \
    >"$out/$name-$store.txt" 2>&1 || { echo "FAILED: $name on $store (see $out/$name-$store.txt)" >&2; stop_ruyi; exit 1; }
  if [ -n "$perf_pid" ]; then wait "$perf_pid" || true; fi
  if [ "$store" = postgres ]; then cost "$db" "$lsn0" >"$out/$name-cost.txt"; fi
  stop_ruyi
  python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print("%.0f %.0f %d %.2f" % (r["deliveries_per_sec"], r["sends_per_sec"], r["sendack_latency"]["p99_us"], r["server_cpu_seconds"]))' \
    "$out/$name-$store.json"
}
# What one message cost PostgreSQL over the server's whole run (setup and warm-up
# included): WAL bytes, rows written, round trips and messages per batch.
cost() { # db lsn0
  local m; m=$(curl -s "http://127.0.0.1:$http/metrics")
  metric() { awk -v n="$1" '$1 == n { print $2 }' <<<"$m"; }
  local stored batches trips
  stored=$(metric ruyi_stored_total); batches=$(metric ruyi_storage_commit_seconds_count)
  trips=$(metric ruyi_storage_round_trips_total)
  psql -qtA "$RUYI_TEST_PG" -c "SELECT pg_stat_force_next_flush()" >/dev/null 2>&1 || true
  sleep 1  # the statistics collector's delay
  psql -qtA -F ' ' "$RUYI_TEST_PG" -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$2'),
      tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = '$1'" |
    python3 -c 'import sys
wal, ins, upd, dele = map(float, sys.stdin.read().split())
stored, batches, trips = map(float, sys.argv[1:4])
print("messages %d  batches %d (%.1f messages each)  round trips %.1f per batch, %.3f per message" % (stored, batches, stored / batches, trips / batches, trips / stored))
print("per message: WAL %.0f bytes  rows inserted %.2f  updated %.2f  deleted %.2f" % (wal / stored, ins / stored, upd / stored, dele / stored))' \
      "$stored" "$batches" "$trips"
}
pg_max=0
printf "%-14s %-9s %14s %10s %14s %8s\n" workload store deliveries/s sends/s "SENDACK p99 us" cpu-s | tee "$out/summary.txt"
for spec in "person-1000|person --pairs 1000 --window 8" \
            "group-1x1000|group --groups 1 --members 1000 --senders 1 --window 32" \
            "group-100x10|group --groups 100 --members 10 --senders 1 --window 8"; do
  name=${spec%%|*}; args=${spec#*|}
  for store in sqlite postgres; do
    # shellcheck disable=SC2086
    row=$(run "$store" "$name" $args) || exit 1
    read -r d s p c <<<"$row"
    printf "%-14s %-9s %14s %10s %14s %8s\n" "$name" "$store" "$d" "$s" "$p" "$c" | tee -a "$out/summary.txt"
    if [ "$name/$store" = person-1000/postgres ]; then pg_max=$s; fi
    if [ "$store" = postgres ]; then sed 's/^/    /' "$out/$name-cost.txt" | tee -a "$out/summary.txt"; fi
  done
done
# SENDACK latency at half of PostgreSQL's maximum, paced, on both stores (issue 16's goal:
# p99 <= 20 ms on PostgreSQL).
rate=$(python3 -c "print(max(1, round($pg_max / 2 / 1000)))")
echo "paced at $rate SENDs/s per sender ($((rate * 1000))/s), window 64:" | tee -a "$out/summary.txt"
for store in sqlite postgres; do
  row=$(run "$store" "half" person --pairs 1000 --window 64 --rate "$rate") || exit 1
  python3 -c 'import json, sys
r = json.load(open(sys.argv[1])); s = r["sendack_latency"]; l = r["client_send_lag"]
print("%-9s sends/s %.0f  SENDACK p50 %d us  p99 %d us  client lag p99 %d us  cpu-s %.2f" % (sys.argv[2], r["sends_per_sec"], s["p50_us"], s["p99_us"], l["p99_us"], r["server_cpu_seconds"]))' \
    "$out/half-$store.json" "$store" | tee -a "$out/summary.txt"
done
# Where the latency goal holds: a ladder of lower paced rates, both stores.
echo "SENDACK latency by paced rate (1,000 senders, window 64):" | tee -a "$out/summary.txt"
for r in 5 10 20; do
  for store in sqlite postgres; do
    row=$(run "$store" "rate-$r" person --pairs 1000 --window 64 --rate "$r") || exit 1
    python3 -c 'import json, sys
r = json.load(open(sys.argv[1])); s = r["sendack_latency"]; l = r["client_send_lag"]
print("%6d/s %-9s sends/s %.0f  SENDACK p50 %d us  p99 %d us  client lag p99 %d us  cpu-s %.2f" % (int(sys.argv[3]) * 1000, sys.argv[2], r["sends_per_sec"], s["p50_us"], s["p99_us"], l["p99_us"], r["server_cpu_seconds"]))' \
      "$out/rate-$r-$store.json" "$store" "$r" | tee -a "$out/summary.txt"
  done
done
