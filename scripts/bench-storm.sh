#!/usr/bin/env bash
# Does a login storm starve message traffic? (issue 21, item 3.) Each run starts the
# release server fresh (encryption on, as the SDKs use it), starts paced encrypted person
# chat (PAIRS pairs, each sender paced at RATE sends/s, the latency clock running from each send's scheduled
# time, so a stall shows as latency and not as a lower offered load) and, in the "storm"
# runs, STORM_AFTER seconds into the measured window fires an encrypted connect storm of
# CONNS logins as fast as the client can open them (`--server-crypto-only`: the server
# does its whole key exchange per login, the client none). "calm" runs are the same chat
# without the storm. Runs alternate calm and storm, REPEAT times each (default 3).
# Writes target/bench/storm/summary.md and each run's JSON.
#
#   scripts/bench-storm.sh [extra ruyi flags...]
#   REPEAT=1 CONNS=15000 RATE=10 STORM_NICE=10 scripts/bench-storm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
repeat=${REPEAT:-3}
conns=${CONNS:-15000}
rate=${RATE:-10}
pairs=${PAIRS:-200}
# The storm client's nice value: 10 lets the server and the chat client win the shared
# cores over it, which tells the server's share of a latency rise from the storm client's.
storm_nice=${STORM_NICE:-0}
warmup=2 seconds=6 storm_after=${STORM_AFTER:-2}
out=target/bench/storm
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.txt
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p ruyi -p ruyi-load
bin=target/release
ruyi_flags=(--max-conns-per-ip 0 --max-sends-per-sec 0 --max-send-bytes-per-sec 0
  --max-logins-per-sec-per-ip 0 --max-logins-per-sec-per-uid 0 "$@")

for i in $(seq "$repeat"); do
  for kind in calm storm; do
    start_ruyi "${ruyi_flags[@]}"
    "$bin/ruyi-load" person --pairs "$pairs" --rate "$rate" --window 64 --encrypt \
      --tcp "127.0.0.1:$tcp" --http "127.0.0.1:$http" --prefix chat --warmup "$warmup" \
      --seconds "$seconds" --server-pid "$pid" --json "$out/$kind.$i.json" \
      >"$out/$kind.$i.txt" 2>&1 &
    chat=$!
    # The chat's logins and warm-up first: the storm lands inside its measured window.
    sleep $((warmup + storm_after + 1))
    if [ "$kind" = storm ]; then
      nice -n "$storm_nice" "$bin/ruyi-load" connect --conns "$conns" --encrypt --server-crypto-only --rate 0 \
        --hold 1 --sources 8 --processes 2 --tcp "127.0.0.1:$tcp" --prefix storm \
        --json "$out/storm-logins.$i.json" >"$out/storm-logins.$i.txt" 2>&1 ||
        echo "storm run $i failed; see $out/storm-logins.$i.txt" >&2
    fi
    if ! wait "$chat"; then
      echo "chat run $kind $i failed; see $out/$kind.$i.txt and $data/server.log" >&2
      cp "$data/server.log" "$out/$kind.$i.server.log" || true
    fi
    tail -1 "$out/$kind.$i.txt"
    stop_ruyi
  done
done

python3 - "$out" "$repeat" "$conns" "$rate" "$pairs" <<'EOF'
import glob, json, os, statistics, sys
out, repeat, conns, rate, pairs = sys.argv[1:6]
runs = {"calm": [], "storm": []}
for path in sorted(glob.glob(f"{out}/*.json")):
    kind = os.path.basename(path).split(".")[0]
    if kind in runs:
        runs[kind].append(json.load(open(path)))
storms = [json.load(open(p)) for p in sorted(glob.glob(f"{out}/storm-logins.*.json"))]
def cell(rs, f):
    return " · ".join(f(r) for r in rs) or "—"
us = lambda v: f"{v / 1000:,.1f}"
lines = [f"{pairs} encrypted person pairs each sender paced at {rate} sends/s; storm: {conns} encrypted logins "
         f"at once (storm client at nice {os.environ.get('STORM_NICE', '0')}), inside the chat's measured window. {repeat} runs each, alternated.", "",
         "| | calm | storm |", "|---|---|---|"]
for label, f in [
    ("sends/s", lambda r: f"{r['sends_per_sec']:,.0f}"),
    ("deliveries/s", lambda r: f"{r['deliveries_per_sec']:,.0f}"),
    ("SENDACK p50 / p99 / max ms", lambda r: f"{us(r['sendack_latency']['p50_us'])} / {us(r['sendack_latency']['p99_us'])} / {us(r['sendack_latency']['max_us'])}"),
    ("delivery p50 / p99 / max ms", lambda r: f"{us(r['delivery_latency']['p50_us'])} / {us(r['delivery_latency']['p99_us'])} / {us(r['delivery_latency']['max_us'])}"),
    ("lost / duplicated", lambda r: f"{r['lost']} / {r['duplicated']}"),
]:
    lines.append(f"| {label} | {cell(runs['calm'], f)} | {cell(runs['storm'], f)} |")
lines.append(f"| storm logins/s | | {cell(storms, lambda s: format(s['connects_per_sec'], ',.0f'))} |")
lines.append(f"| storm logins closed unanswered (shed) | | {cell(storms, lambda s: str(s['failed_connect']))} |")
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
