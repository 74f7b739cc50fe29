#!/usr/bin/env bash
# TLS against plain, same run, same load tool (issue 19): login storms (handshakes and
# logins per second, server memory per held connection) and encrypted person chat, on
# the binary protocol (TCP vs --tls-addr) and on WebSocket (ws vs wss). The certificate
# is a fresh ECDSA P-256 one signed by a throwaway CA (openssl). Every run gets a fresh
# release server; plain and TLS alternate within each repetition, so a noisy machine
# shows as spread, not as a bias.
#
#   scripts/bench-tls.sh [conns] [seconds] [repetitions]      (default 5000, 5 and 2)
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-5000}
seconds=${2:-5}
reps=${3:-2}
out=target/bench/tls
mkdir -p "$out"
rm -f "$out"/*.json
cargo build --release -q -p ruyi -p ruyi-load
source scripts/lib.sh

pki=$(mktemp -d)
trap 'rm -rf "$pki"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$pki/ca.key" -out "$pki/ca.pem" -subj "/CN=ruyi bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$pki/key.pem" -out "$pki/srv.csr" -subj "/CN=127.0.0.1" 2>/dev/null
echo "subjectAltName=IP:127.0.0.1" >"$pki/ext"
openssl x509 -req -in "$pki/srv.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
  -CAcreateserial -out "$pki/cert.pem" -days 2 -extfile "$pki/ext" 2>/dev/null

limits=(--max-conns-per-ip 0 --max-sends-per-sec 0 --max-send-bytes-per-sec 0
  --max-logins-per-sec-per-ip 0 --max-logins-per-sec-per-uid 0)
for rep in $(seq "$reps"); do
  for transport in tcp tls ws wss; do
    tls_port=$((20000 + RANDOM % 10000)); wss_port=$((tls_port + 1))
    start_ruyi "${limits[@]}" --tls-cert "$pki/cert.pem" --tls-key "$pki/key.pem" \
      --tls-addr "127.0.0.1:$tls_port" --wss-addr "127.0.0.1:$wss_port"
    case $transport in
      tcp) how=(--tcp "127.0.0.1:$tcp") ;;
      tls) how=(--tcp "127.0.0.1:$tls_port" --tls-ca "$pki/ca.pem") ;;
      ws) how=(--ws "127.0.0.1:$ws") ;;
      wss) how=(--ws "127.0.0.1:$wss_port" --tls-ca "$pki/ca.pem") ;;
    esac
    target/release/ruyi-load connect "${how[@]}" --encrypt --conns "$conns" --hold 3 \
      --server-pid "$pid" --json "$out/connect-$transport-$rep.json" >/dev/null ||
      { stop_ruyi; exit 1; }
    target/release/ruyi-load person --pairs 1000 --window 8 --encrypt "${how[@]}" \
      --http "127.0.0.1:$http" --warmup 2 --seconds "$seconds" --server-pid "$pid" \
      --json "$out/person-$transport-$rep.json" >/dev/null || { stop_ruyi; exit 1; }
    stop_ruyi
  done
done

# One row per transport: the median over repetitions, and its ratio to the plain one.
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
figure() { for f in "$out"/"$1"-"$2"-*.json; do jq -r "$3" "$f"; done | median; }
echo "| transport | logins/s (encrypted) | ratio | server bytes per held connection | deliveries/s, person 1000 pairs encrypted | ratio | lost |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for pair in "tcp tls" "ws wss"; do
  read -r plain secure <<<"$pair"
  base_logins=$(figure connect "$plain" .connects_per_sec)
  base_deliveries=$(figure person "$plain" .deliveries_per_sec)
  for t in $plain $secure; do
    logins=$(figure connect "$t" .connects_per_sec)
    rss=$(figure connect "$t" .server_rss_per_conn_bytes)
    deliveries=$(figure person "$t" .deliveries_per_sec)
    lost=$(for f in "$out"/person-"$t"-*.json; do jq -r .lost "$f"; done | paste -sd+ | bc)
    printf "| %s | %.0f | %.2f | %.0f | %.0f | %.2f | %s |\n" "$t" "$logins" \
      "$(echo "$logins / $base_logins" | bc -l)" "$rss" "$deliveries" \
      "$(echo "$deliveries / $base_deliveries" | bc -l)" "$lost"
  done
done
