#!/usr/bin/env bash
# One-command load test of the release `ruyi` on this machine:
#
#   scripts/loadtest.sh [quick|full]
#
# Builds release, starts `ruyi` on a temporary data directory with token auth off, runs the
# scenarios with `ruyi-load`, stops the server by its PID, and writes one JSON file and one
# SVG chart per scenario plus summary.txt under target/loadtest/<mode>/. Each of the six
# message scenarios takes its logins, a 2 s warm-up, the measured window (quick: 5 s,
# full: 20 s) and a drain of 1 s or more; the connect storm runs on a server of its own,
# started fresh so its memory per connection is not blurred by earlier scenarios.
# Everything is bounded in connections and time and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-quick}
case $mode in
  quick) secs=5; pairs=500; idle=5000; big=500; procs=1 ;;
  # 19,000 logged-in connections: the server's share of this machine's 20,000 open files;
  # the client side needs two worker processes for as many descriptors.
  full)  secs=20; pairs=1000; idle=19000; big=1000; procs=2 ;;
  *) echo "usage: $0 [quick|full]" >&2; exit 2 ;;
esac
out=target/loadtest/$mode
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.svg "$out"/summary.txt
{
  echo "# scripts/loadtest.sh $mode"
  echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo +modified)"
  echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "# each line: one scenario; units and settings are in its JSON file under \"run\""
} >"$out/summary.txt"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release -q -p ruyi -p ruyi-load
bin=target/release
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
start_server() { # extra ruyi flags...
  # The abuse limits (per-address connections, sends per second) are off: the load comes
  # from one machine at full speed on purpose.
  start_ruyi --max-conns-per-ip 0 --max-sends-per-sec 0 --max-send-bytes-per-sec 0 --max-logins-per-sec-per-ip 0 --max-logins-per-sec-per-uid 0 "$@" || exit 1
}
pid=
trap '[ -n "$pid" ] && stop_ruyi' EXIT

load() { # name args...; a run that lost or duplicated anything stops the whole script
  local name=$1; shift
  if ! "$bin/ruyi-load" "$@" --tcp "127.0.0.1:$tcp" --http "127.0.0.1:$http" --warmup 2 \
    --seconds "$secs" --server-pid "$pid" --prefix "$name" --json "$out/$name.json" \
    --svg "$out/$name.svg" | tee -a "$out/summary.txt"; then
    echo "FAILED: $name: messages lost or duplicated, or the run failed" | tee -a "$out/summary.txt" >&2
    exit 1
  fi
}

# Encryption off for the plaintext scenarios (a server with encryption on refuses logins
# without a key, reason 21), then on for the encrypted one, as the official SDKs use it.
start_server --no-encryption
load person person --pairs "$pairs" --window 8
load group-large group --groups 1 --members "$big" --senders 1 --window 32
load group-100x10 group --groups 100 --members 10 --senders 1 --window 8
load mixed mixed --pairs "$((pairs / 2))" --groups 100 --members 20 --large "$big" --window 8
load person-ws person --pairs "$pairs" --window 8 --ws "127.0.0.1:$ws"
stop_ruyi
start_server
load person-encrypted person --pairs "$pairs" --window 8 --encrypt

# Connect storm with the key exchange, then the logged-in connections held with PINGs:
# authenticated connects per second and the server's RSS per held connection, on a
# server started for it alone.
stop_ruyi
start_server
if ! "$bin/ruyi-load" connect --tcp "127.0.0.1:$tcp" --conns "$idle" --encrypt --hold 5 --ping-every 2 \
  --sources 4 --processes "$procs" --server-pid "$pid" --prefix storm --json "$out/connect.json" |
  tee -a "$out/summary.txt"; then
  echo "FAILED: connect: nothing logged in, or the run failed" | tee -a "$out/summary.txt" >&2
  exit 1
fi
echo "results in $out/"
