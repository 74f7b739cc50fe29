#!/usr/bin/env bash
# One node on PostgreSQL against a three-node cluster (issue 17), same run, same two cores:
# person chat and the two fan-out shapes, clients spread over the nodes (connection i to
# node i mod 3, so a pair's two ends and a group's members sit on different nodes), then
# SENDACK and cross-node delivery latency at a fixed moderate rate, then the same paced
# load while one node is killed with -9 (a follower, then the leader): its connections log
# in on the others (ruyi-load --failover) and the run accounts for every acknowledged
# message, reading back from history what they missed. PostgreSQL and
# nats-server are private instances (scripts/pg-test-server.sh; nats-server on a free
# port). Every server is the release binary.
#
#   scripts/bench-cluster.sh [seconds]      (default 5 measured seconds per run)
#   ONLY=person-1000 PERF=1 scripts/bench-cluster.sh   (one workload; perf-record and a
#                                           per-thread top of the three nodes under it)
#   RUYI_BIN=/path/to/ruyi scripts/bench-cluster.sh     (another build of the server, for
#                                           a before/after in the same session)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
out=target/bench/cluster
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.txt
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
command -v nats-server >/dev/null || { echo "needs nats-server (Debian package nats-server)" >&2; exit 1; }
cargo build --release -q -p ruyi -p ruyi-load
eval "$(bash scripts/pg-test-server.sh start)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${nats_pid:-}" ]; then kill "$nats_pid" 2>/dev/null || true; fi
  if [ -n "${KEEP_PG:-}" ]; then echo "PostgreSQL kept: $RUYI_TEST_PG ($RUYI_TEST_PG_DIR)" >&2; else bash scripts/pg-test-server.sh stop "$RUYI_TEST_PG_DIR"; fi
}
trap cleanup EXIT
# A free port is a guess: try a few, each until the server answers.
nats_pid=
for _ in 1 2 3 4 5; do
  nats_port=$((30000 + RANDOM % 20000))
  nats-server -a 127.0.0.1 -p "$nats_port" >"$out/nats.log" 2>&1 &
  nats_pid=$!
  for _ in $(seq 40); do
    (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break 2
    sleep 0.05
  done
  kill "$nats_pid" 2>/dev/null || true
done
(exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null || { echo "nats-server did not start; see $out/nats.log" >&2; exit 1; }
# Encryption is off unless a row's load encrypts (`--encrypt`: the SDKs' own path).
base_flags="--no-token-auth --max-conns-per-ip 0 --max-sends-per-sec 0 --max-send-bytes-per-sec 0 --max-logins-per-sec-per-ip 0 --max-logins-per-sec-per-uid 0"
flags="--no-encryption $base_flags"

# start_nodes NAME N: N nodes on a fresh database (N = 1: no NATS, a plain single node);
# sets $servers (their TCP addresses), $http (the first node's API) and $pids.
start_nodes() {
  local name=$1 n=$2 db=bench_${1//-/_}
  psql -q "$RUYI_TEST_PG" -c "CREATE DATABASE $db" >/dev/null
  local url=${RUYI_TEST_PG/\/postgres\?//$db?}
  servers=""; pids=(); http=""; apis=""; api_base=
  local base=$((10000 + RANDOM % 20000))
  for i in $(seq 1 "$n"); do
    local tcp=$((base + i * 4)) api=$((base + i * 4 + 1)) ws=$((base + i * 4 + 2))
    local data; data=$(mktemp -d)
    local cluster=()
    if [ "$n" -gt 1 ]; then cluster=(--nats "nats://127.0.0.1:$nats_port" --node-id "$i"); fi
    # shellcheck disable=SC2086
    "${RUYI_BIN:-target/release/ruyi}" $flags --data-dir "$data" --store "$url" --tcp-addr "127.0.0.1:$tcp" \
      --http-addr "127.0.0.1:$api" --ws-addr "127.0.0.1:$ws" "${cluster[@]}" \
      >"$out/$name-node$i.log" 2>&1 &
    pids+=($!)
    servers="${servers:+$servers,}127.0.0.1:$tcp"
    [ -z "$http" ] && http=127.0.0.1:$api
    apis="${apis:+$apis,}127.0.0.1:$api"
    api_base=$base
    for _ in $(seq 200); do
      (exec 3<>"/dev/tcp/127.0.0.1/$api") 2>/dev/null && break
      sleep 0.05
    done
  done
  if [ "$n" -gt 1 ]; then
    # Live together and one leader named by all: their /cluster/nodes agree.
    for _ in $(seq 100); do
      local ok=1
      for i in $(seq 1 "$n"); do
        curl -s "http://127.0.0.1:$((base + i * 4 + 1))/cluster/nodes" |
          python3 -c "import json,sys; v=json.load(sys.stdin); sys.exit(0 if len(v['nodes'])==$n and v['leader'] else 1)" ||
          ok=0
      done
      [ $ok = 1 ] && return 0
      sleep 0.1
    done
    echo "the cluster did not form" >&2; return 1
  fi
}

stop_nodes() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}

# kill_one follower|leader AFTER: kill -9 of that node AFTER seconds from now.
kill_one() {
  local which=$1 after=$2
  sleep "$after"
  local leader
  leader=$(curl -s "http://127.0.0.1:$((api_base + 1 * 4 + 1))/cluster/nodes" |
    python3 -c "import json,sys; print(json.load(sys.stdin)['leader'])")
  local victim=$leader
  if [ "$which" = follower ]; then victim=$(( leader % 3 + 1 )); fi
  echo "kill -9 of node $victim ($which; node $leader leads)" >"$out/$name-kill.txt"
  kill -9 "${pids[$((victim - 1))]}"
}

run() { # nodes name load-args...
  local n=$1 name=$2; shift 2
  if [ -n "${ONLY:-}" ] && [ "$ONLY" != "$name" ]; then return 0; fi
  case " $* " in
    *" --encrypt "*) flags=$base_flags ;;
    *) flags="--no-encryption $base_flags" ;;
  esac
  start_nodes "$name-$n" "$n" || exit 1
  # @apis stands for the nodes' HTTP addresses, known once they run.
  local args=() a
  for a in "$@"; do args+=("${a/@apis/$apis}"); done
  set -- "${args[@]}"
  local killer=
  if [ -n "${KILL:-}" ]; then
    # Two seconds into the measured window.
    kill_one "$KILL" 4 &
    killer=$!
  fi
  local profiler=
  if [ -n "${PERF:-}" ]; then
    (sleep 3; top -b -H -n 1 | head -40 >"$out/$name-$n.top"
     perf record -q -F 499 -g -o "$out/$name-$n.perf" \
       -p "$(IFS=,; echo "${pids[*]}")" -- sleep 3 >/dev/null 2>&1) &
    profiler=$!
  fi
  "target/release/ruyi-load" "$@" --servers "$servers" --http "$http" --warmup 2 \
    --seconds "$seconds" --prefix "$name" --json "$out/$name-$n.json" \
    >"$out/$name-$n.txt" 2>&1 || { echo "FAILED: $name on $n nodes (see $out/$name-$n.txt)" >&2; stop_nodes; exit 1; }
  if [ -n "$profiler" ]; then wait "$profiler" || true; fi
  if [ -n "$killer" ]; then wait "$killer" || true; fi
  stop_nodes
  python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
print("%-14s %5s %12.0f %10.0f %10d %10d %6d %9d %7d %8d" % (sys.argv[2], sys.argv[3], r["deliveries_per_sec"], r["sends_per_sec"], r["sendack_latency"]["p99_us"], r["delivery_latency"]["p99_us"], r["lost"], r.get("failovers", 0), r.get("recovered_from_queue", 0), r.get("history_only", 0)))' \
    "$out/$name-$n.json" "$name" "$n" | tee -a "$out/summary.txt"
}

printf "%-14s %5s %12s %10s %10s %10s %6s %9s %7s %8s\n" workload nodes deliveries/s sends/s \
  "ack p99us" "dlv p99us" lost failovers queued history | tee "$out/summary.txt"
for spec in "person-1000|person --pairs 1000 --window 8" \
            "person-1000-enc|person --pairs 1000 --window 8 --encrypt" \
            "group-1x1000|group --groups 1 --members 1000 --senders 1 --window 32" \
            "group-100x10|group --groups 100 --members 10 --senders 1 --window 8"; do
  name=${spec%%|*}; args=${spec#*|}
  for n in 1 3; do
    # shellcheck disable=SC2086
    run "$n" "$name" $args
  done
done
# Latency at a fixed moderate rate: 5,000 SENDs/s (1,000 pairs at 5/s each).
for n in 1 3; do
  run "$n" "paced-5000" person --pairs 1000 --window 64 --rate 5
done
# kill -9 of one node two seconds into the window, at the same paced load: its
# connections fail over to the others, and nothing acknowledged may be lost.
for victim in follower leader; do
  KILL=$victim run 3 "kill-$victim" person --pairs 1000 --window 64 --rate 5 --failover \
    --http-servers @apis
done
