#!/usr/bin/env bash
# Ruyi beside redis pub/sub and NATS core, in one run on the same cores (issue 21): the
# same ruyi-load workloads (group fan-out 1x1000 and 100x10, person chat 1000 pairs; 100-
# byte payloads; every client reads every message; same windows) against
#   ruyi      the release server on its embedded defaults (SQLite, every message stored
#             before its SENDACK, every RECV acknowledged), plain and encrypted (--encrypt:
#             key exchange, AES per SEND and per RECV, as the official SDKs do);
#   redis     redis-server, pub/sub over RESP3 (nothing stored, nothing acknowledged);
#   nats      nats-server, core pub/sub with verbose acks (nothing stored either).
# Each row is run REPEAT times (default 3), alternating the servers, and the median kept.
# Writes target/bench/peers/{summary.md,peers.svg} and each run's JSON.
#
#   scripts/bench-peers.sh [seconds]        (default 5 measured seconds per run)
#   REPEAT=1 ONLY=group-1x1000 scripts/bench-peers.sh 3
#
# redis-server and nats-server come from Debian's packages; installed when missing and
# running as root, else the script says which package to install.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
repeat=${REPEAT:-3}
out=target/bench/peers
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.txt "$out"/*.log
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
for tool in redis-server nats-server; do
  if ! command -v "$tool" >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get install -y -q "$tool" >/dev/null
    else
      echo "needs $tool (Debian package $tool)" >&2
      exit 1
    fi
  fi
done
cargo build --release -q -p ruyi -p ruyi-load
bin=target/release
ruyi_flags=(--max-conns-per-ip 0 --max-sends-per-sec 0 --max-send-bytes-per-sec 0
  --max-logins-per-sec-per-ip 0 --max-logins-per-sec-per-uid 0)

source scripts/lib.sh
pid= data=

# start SERVER: starts one server on fresh ports (and a fresh data directory); sets $pid,
# $tcp, $http and $load (the ruyi-load flags that select it).
start() {
  case $1 in
    ruyi) start_ruyi "${ruyi_flags[@]}" --no-encryption; load=() ;;
    ruyi-enc) start_ruyi "${ruyi_flags[@]}"; load=(--encrypt) ;;
    redis)
      data=$(mktemp -d); tcp=$((10000 + RANDOM % 20000)); http=$((tcp + 1))
      # No persistence; no pub/sub output buffer limit, so a subscriber of a 1,000-member
      # fan-out is not dropped mid-run (redis' default closes it at 32 MB behind).
      redis-server --port "$tcp" --bind 127.0.0.1 --save "" --appendonly no \
        --client-output-buffer-limit "pubsub 0 0 0" --maxclients 19000 --dir "$data" \
        >"$out/redis.log" 2>&1 &
      pid=$!
      load=(--peer redis)
      wait_port "$tcp" || { echo "redis-server did not start; see $out/redis.log" >&2; exit 1; }
      ;;
    nats)
      data=$(mktemp -d); tcp=$((10000 + RANDOM % 20000)); http=$((tcp + 1))
      nats-server -a 127.0.0.1 -p "$tcp" >"$out/nats.log" 2>&1 &
      pid=$!
      load=(--peer nats)
      wait_port "$tcp" || { echo "nats-server did not start; see $out/nats.log" >&2; exit 1; }
      ;;
  esac
}

stop() {
  [ -n "$pid" ] || return 0
  stop_ruyi
  pid=
}
trap stop EXIT

# row NAME LOAD-ARGS...: every server once per repeat, alternating.
row() {
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [ "$ONLY" != "$name" ]; then return; fi
  for i in $(seq "$repeat"); do
    for server in ruyi ruyi-enc redis nats; do
      start "$server"
      "$bin/ruyi-load" "$@" "${load[@]}" --tcp "127.0.0.1:$tcp" --http "127.0.0.1:$http" \
        --prefix "$name" --warmup 2 --seconds "$seconds" --server-pid "$pid" \
        --json "$out/$name.$server.$i.json" >"$out/$name.$server.$i.txt" 2>&1 \
        || { echo "FAILED: $name on $server (see $out/$name.$server.$i.txt)" >&2
             cp "$data/server.log" "$out/$name.$server.$i.server.log" 2>/dev/null || true
             stop; exit 1; }
      stop
    done
  done
}

case ${ONLY:-} in
  ""|group-1x1000|group-100x10|person-1000) ;;
  *) echo "ONLY must be group-1x1000, group-100x10 or person-1000" >&2; exit 1 ;;
esac
row group-1x1000 group --groups 1 --members 1000 --senders 1 --window 32
row group-100x10 group --groups 100 --members 10 --senders 1 --window 8
row person-1000 person --pairs 1000 --window 8

# The table: medians per (row, server), and the ratios the issue sets targets for.
python3 - "$out" "$repeat" "$seconds" <<'EOF'
import glob, json, os, statistics, sys
out, repeat, seconds = sys.argv[1], sys.argv[2], sys.argv[3]
servers = ["ruyi", "ruyi-enc", "redis", "nats"]
rows = {}
for path in glob.glob(f"{out}/*.json"):
    name, server, _ = os.path.basename(path)[:-5].split(".")
    r = json.load(open(path))
    rows.setdefault(name, {}).setdefault(server, []).append(r)
def med(rs, key):
    return statistics.median(r[key] or 0 for r in rs)
lines = [f"Same run, {repeat} runs per cell (median), {seconds} s measured each. Every RECV is read "
         "by a client; Ruyi's are also acknowledged, and stored before their SENDACK."]
chart = []
for key, what in [("deliveries_per_sec", "deliveries/s"),
                  ("deliveries_per_server_cpu_sec", "deliveries per server CPU-second (user + system)")]:
    lines += ["", f"**{what}**", "",
              "| workload | ruyi | ruyi encrypted | redis pub/sub | NATS core | ruyi / redis | encrypted / plain | ruyi / NATS |",
              "|---|---|---|---|---|---|---|---|"]
    for name in sorted(rows):
        cells = rows[name]
        d = {s: med(cells[s], key) for s in servers if s in cells}
        lost = sum(r["lost"] + r["duplicated"] for s in cells for r in cells[s])
        ratio = lambda a, b: f"{d[a] / d[b]:.2f}x" if a in d and b in d and d[b] else "—"
        lines.append(f"| {name} | " + " | ".join(f"{d[s]:,.0f}" if s in d else "—" for s in servers)
                     + f" | {ratio('ruyi', 'redis')} | {ratio('ruyi-enc', 'ruyi')} | {ratio('ruyi', 'nats')} |"
                     + ("" if lost == 0 else f" **{lost} lost or duplicated**"))
        if key == "deliveries_per_sec":
            chart.append((name, d))
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
# A grouped bar chart, plain SVG: one group per workload, one bar per server.
colors = {"ruyi": "#2b6cb0", "ruyi-enc": "#63b3ed", "redis": "#c53030", "nats": "#2f855a"}
top = max((v for _, d in chart for v in d.values()), default=1) or 1
w, h, pad, bw = 220 * max(len(chart), 1) + 80, 360, 60, 40
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
       f'<text x="{pad}" y="20" font-size="14">deliveries/s, same run (median of {repeat})</text>']
for g, (name, d) in enumerate(chart):
    x0 = pad + g * 220
    for b, s in enumerate(servers):
        v = d.get(s, 0)
        bh = (h - 100) * v / top
        x = x0 + b * bw
        svg.append(f'<rect x="{x}" y="{h - 50 - bh:.1f}" width="{bw - 6}" height="{bh:.1f}" fill="{colors[s]}"/>')
        svg.append(f'<text x="{x}" y="{h - 54 - bh:.1f}" font-size="9">{v / 1e6:.2f}M</text>')
    svg.append(f'<text x="{x0}" y="{h - 32}">{name}</text>')
for b, s in enumerate(servers):
    svg.append(f'<rect x="{pad + b * 110}" y="{h - 18}" width="10" height="10" fill="{colors[s]}"/>'
               f'<text x="{pad + b * 110 + 14}" y="{h - 9}">{s}</text>')
svg.append("</svg>")
open(f"{out}/peers.svg", "w").write("\n".join(svg))
EOF
echo "wrote $out/summary.md and $out/peers.svg"
