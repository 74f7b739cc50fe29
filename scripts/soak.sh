#!/usr/bin/env bash
# Soak: the release server on its defaults (token auth off) under a steady mixed load for
# N minutes (default 10): encrypted person pairs, small groups and one large group at a
# fixed rate, plus reconnect churn through the offline path (sync + syncack). Samples the
# server's RSS and open descriptors every 10 s and fails unless, after max(20% of the run,
# 2 minutes) of warm-up, both stay flat (RSS within +20% and descriptors within +5% of
# their level at that point), and no message was lost or duplicated. Results in
# target/soak/.
#
#   scripts/soak.sh [minutes]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
secs=$((minutes * 60))
out=target/soak
mkdir -p "$out"
rm -f "$out"/*
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p ruyi -p ruyi-load
bin=target/release
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
start_ruyi --max-logins-per-sec-per-ip 0 --max-logins-per-sec-per-uid 0 # defaults except token auth and the login rates (all load comes from this machine)
trap stop_ruyi EXIT

# 1,000 connections over four source addresses (the default per-address limit is 1,000),
# 221 senders at 20 messages/s each (under the default 200/s limit).
"$bin/ruyi-load" mixed --tcp "127.0.0.1:$tcp" --http "127.0.0.1:$http" --encrypt \
  --pairs 200 --groups 20 --members 20 --large 200 --senders 1 --rate 20 --window 64 --sources 4 \
  --warmup 5 --seconds "$secs" --server-pid "$pid" --json "$out/mixed.json" \
  --svg "$out/mixed.svg" >"$out/mixed.txt" 2>&1 &
mixed=$!
"$bin/ruyi-load" churn --tcp "127.0.0.1:$tcp" --http "127.0.0.1:$http" --encrypt \
  --pairs 10 --seconds "$secs" --json "$out/churn.json" >"$out/churn.txt" 2>&1 &
churn=$!

echo "second,rss_kib,fds" >"$out/samples.csv"
start=$(date +%s)
while kill -0 "$mixed" 2>/dev/null || kill -0 "$churn" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { echo "the server died:" >&2; tail -5 "$data/server.log" >&2; exit 1; }
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  fds=$(ls "/proc/$pid/fd" | wc -l)
  echo "$(( $(date +%s) - start )),$rss,$fds" >>"$out/samples.csv"
  sleep 10
done
status=0
wait "$mixed" || status=1
wait "$churn" || status=1
cat "$out/mixed.txt" "$out/churn.txt"
python3 - "$out/samples.csv" <<'PY' || status=1
import csv, sys
rows = [(int(r["second"]), int(r["rss_kib"]), int(r["fds"])) for r in csv.DictReader(open(sys.argv[1]))]
# RSS climbs while SQLite's page cache and the allocator fill (about two minutes here):
# judge flatness after max(20% of the run, 120 s).
start = max(rows[-1][0] * 0.2, 120)
warm = [r for r in rows if r[0] >= start]
if len(warm) < 6:
    print(f"run too short to judge flatness (samples after {start:.0f} s: {len(warm)}; run 4+ minutes)")
    sys.exit(0)
rss0, fd0 = warm[0][1], warm[0][2]
rss_max, fd_max = max(r[1] for r in warm), max(r[2] for r in warm)
print(f"samples={len(rows)} after warm-up: rss {rss0} -> max {rss_max} KiB ({rss_max / rss0:.2f}x), fds {fd0} -> max {fd_max}")
ok = rss_max <= rss0 * 1.2 and fd_max <= fd0 * 1.05 + 5
print("flat" if ok else "NOT FLAT")
sys.exit(0 if ok else 1)
PY
grep -q '"lost": 0' "$out/mixed.json" && grep -q '"duplicated": 0' "$out/mixed.json" || status=1
grep -q '"lost": 0' "$out/churn.json" && grep -q '"duplicated": 0' "$out/churn.json" || status=1
[ "$status" = 0 ] && echo "soak passed: results in $out/" || echo "soak FAILED: see $out/" >&2
exit "$status"
