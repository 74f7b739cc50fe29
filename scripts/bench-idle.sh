#!/usr/bin/env bash
# Memory per idle connection: server RSS delta / connections, for the ruyi-reactor echo
# engine, tokio and the mio floor. The connections come from two `ruyi-load idle`
# processes (one process may hold at most 20,000 files here) over 127.0.0.x sources.
#
#   scripts/bench-idle.sh [connections]     (default 19000)
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-19000}
half=$((total / 2))
loops=${LOOPS:-2}
cargo build --release -q -p ruyi-load -p ruyi-reactor --examples --bins
bin=target/release
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$1/status"; }

echo "| server | connections | RSS before | RSS after | bytes per connection |"
echo "|---|---:|---:|---:|---:|"
port=$((10000 + RANDOM % 20000))
for server in ruyi tokio mio; do
  port=$((port + 1))
  case $server in
    ruyi)  "$bin/examples/echo" "127.0.0.1:$port" "$loops" 60 >/dev/null 2>&1 & ;;
    tokio) "$bin/examples/tokio_echo" "127.0.0.1:$port" "$loops" 60 >/dev/null 2>&1 & ;;
    mio)   "$bin/examples/mio_echo" "127.0.0.1:$port" 60 >/dev/null 2>&1 & ;;
  esac
  pid=$!
  sleep 1
  before=$(rss "$pid")
  logs=$(mktemp -d)
  "$bin/ruyi-load" idle --addr "127.0.0.1:$port" --conns "$half" --source-first 2 --source-count 4 --hold 8 >"$logs/a" &
  a=$!
  "$bin/ruyi-load" idle --addr "127.0.0.1:$port" --conns "$((total - half))" --source-first 10 --source-count 4 --hold 8 >"$logs/b" &
  b=$!
  for _ in $(seq 300); do
    grep -q connected "$logs/a" 2>/dev/null && grep -q connected "$logs/b" 2>/dev/null && break
    sleep 0.1
  done
  sleep 1 # let the loops register the last sockets
  after=$(rss "$pid")
  echo "| $server | $total | $((before / 1024)) KiB | $((after / 1024)) KiB | $(( (after - before) / total )) |"
  wait "$a" "$b" || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$logs"
done
