# Shared by the scripts that start the release server: `source scripts/lib.sh`, then
# `start_ruyi [ruyi flags...]` sets $pid, $tcp, $http, $ws and $data (a temporary data
# directory, removed by `stop_ruyi`) and returns once the HTTP port answers.

# wait_port PORT: returns once something accepts on 127.0.0.1:PORT (10 s at most).
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

start_ruyi() {
  data=$(mktemp -d)
  tcp=$((10000 + RANDOM % 20000)); http=$((tcp + 1)); ws=$((tcp + 2))
  target/release/ruyi --no-token-auth --data-dir "$data" --tcp-addr "127.0.0.1:$tcp" \
    --http-addr "127.0.0.1:$http" --ws-addr "127.0.0.1:$ws" "$@" >"$data/server.log" 2>&1 &
  pid=$!
  wait_port "$http" && return 0
  echo "ruyi did not start; see $data/server.log" >&2
  return 1
}

stop_ruyi() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}
