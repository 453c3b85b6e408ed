#!/usr/bin/env bash
# What TLS costs, measured in one run: a central and one edge as separate processes on
# loopback, in plain text and then secured as across the internet (mutual TLS on gRPC, HTTPS
# on the REST API, sealed gossip; material from `driftkv certs`), taking turns for the given
# number of rounds. Each round runs driftkv-bench (write acknowledgement latency at the edge
# over HTTP(S) and at central over gRPC, durable write throughput) on fresh data; then the cost
# of a full TLS handshake with the edge (curl: TCP connect to TLS established, a new connection
# each time) is printed next to a plain TCP connect.
# Needs: curl, python3. Usage: bench/tls.sh [rounds, default 3] [samples per latency, default 500]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
samples="${2:-500}"
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing"; exit 2; }
done
cargo build --release --quiet -p driftkv -p driftkv-bench
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

s="$work/secrets"
$bin/driftkv certs init --dir "$s/ca" >/dev/null
$bin/driftkv certs issue --dir "$s/ca" --node central --role central --out "$s/central" >/dev/null
$bin/driftkv certs issue --dir "$s/ca" --node edge --role edge --out "$s/edge" >/dev/null
$bin/driftkv certs issue --dir "$s/ca" --node bench --role client >/dev/null
token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_udp() { python3 -c 'import socket; s=socket.socket(type=socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts central and an edge for `mode` (plain or tls) under $work/$1; sets edge_url.
start() {
  local mode=$1 dir="$work/$1-$2"
  local grpc http gossip edge_port
  grpc=$(free_port); http=$(free_port); gossip=$(free_udp); edge_port=$(free_port)
  local common=(DRIFTKV_API_TOKENS="$token" DRIFTKV_RATE_LIMIT__WRITES_PER_KEY_PER_SECOND=0
    DRIFTKV_WORKERD__LISTEN= RUST_LOG=warn)
  local central_env=() edge_env=() scheme=http
  if [ "$mode" = tls ]; then
    scheme=https
    for node in central edge; do
      local e=(DRIFTKV_TLS__CA="$s/$node/ca.pem" DRIFTKV_TLS__CERT="$s/$node/node.pem"
        DRIFTKV_TLS__KEY="$s/$node/node.key" DRIFTKV_HTTPS__CERT="$s/$node/node.pem"
        DRIFTKV_HTTPS__KEY="$s/$node/node.key" DRIFTKV_GOSSIP__KEYS_FILE="$s/$node/gossip.key")
      if [ "$node" = central ]; then central_env=("${e[@]}"); else edge_env=("${e[@]}"); fi
    done
  fi
  env "${common[@]}" "${central_env[@]}" DRIFTKV_GRPC__LISTEN=127.0.0.1:$grpc \
    DRIFTKV_LISTEN=127.0.0.1:$http DRIFTKV_GOSSIP__LISTEN=127.0.0.1:$gossip \
    $bin/driftkv central --data-dir "$dir/central" >"$dir.central.out" 2>"$dir.central.err" &
  pids+=($!)
  env "${common[@]}" "${edge_env[@]}" DRIFTKV_NODE_ID=2 DRIFTKV_LISTEN=127.0.0.1:$edge_port \
    DRIFTKV_GOSSIP__LISTEN=127.0.0.1:0 DRIFTKV_GOSSIP__SEEDS="[\"127.0.0.1:$gossip\"]" \
    DRIFTKV_CENTRAL__ADDRESS="$scheme://127.0.0.1:$grpc" \
    $bin/driftkv edge --data-dir "$dir/edge" >"$dir.edge.out" 2>"$dir.edge.err" &
  pids+=($!)
  for _ in $(seq 300); do grep -q "listening on" "$dir.edge.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "listening on" "$dir.edge.out" || { echo "bench: the $mode cluster did not start"; cat "$dir".*.err; exit 1; }
  edge_url="$scheme://127.0.0.1:$edge_port"
}

stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for round in $(seq "$rounds"); do
  for mode in plain tls; do
    start "$mode" "$round"
    tls=()
    [ "$mode" = tls ] && tls=(--tls-ca "$s/ca/ca.pem" --tls-cert "$s/ca/bench.pem" --tls-key "$s/ca/bench.key")
    $bin/driftkv-bench --edge "$edge_url" --token "$token" --samples "$samples" --seconds 5 \
      "${tls[@]}" >"$work/bench-$mode-$round.txt"
    if [ "$mode" = tls ] && [ "$round" = 1 ]; then
      # A new connection per request: TCP connect, then the full TLS handshake.
      for _ in $(seq 200); do
        curl -s -o /dev/null --cacert "$s/ca/ca.pem" -w '%{time_connect} %{time_appconnect}\n' "$edge_url/healthz"
      done >"$work/handshakes.txt"
    fi
    stop
  done
done

python3 - "$work" "$rounds" <<'PY'
import statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def figures(path):
    rows, rates = {}, {}
    for line in open(path):
        for name in ("PUT at an edge (HTTP)", "Write at central (gRPC)"):
            if line.startswith(name):
                values = line[len(name):].split()
                if len(values) == 4:
                    rows[name] = float(values[0])
                elif len(values) == 1:
                    rates[name] = float(values[0])
    return rows, rates
print(f"{'':<26} {'PUT p50 ms':>11} {'Write p50 ms':>13} {'central w/s':>12} {'edge w/s':>10}")
medians = {}
for mode in ("plain", "tls"):
    put, write, central, edge = [], [], [], []
    for r in range(1, rounds + 1):
        rows, rates = figures(f"{work}/bench-{mode}-{r}.txt")
        put.append(rows["PUT at an edge (HTTP)"]); write.append(rows["Write at central (gRPC)"])
        central.append(rates["Write at central (gRPC)"]); edge.append(rates["PUT at an edge (HTTP)"])
        print(f"{mode + ' round ' + str(r):<26} {put[-1]:>11.2f} {write[-1]:>13.2f} {central[-1]:>12.0f} {edge[-1]:>10.0f}")
    medians[mode] = [statistics.median(x) for x in (put, write, central, edge)]
for mode in ("plain", "tls"):
    m = medians[mode]
    print(f"{mode + ' median':<26} {m[0]:>11.2f} {m[1]:>13.2f} {m[2]:>12.0f} {m[3]:>10.0f}")
p, t = medians["plain"], medians["tls"]
print(f"{'tls / plain':<26} {t[0]/p[0]:>11.2f} {t[1]/p[1]:>13.2f} {t[2]/p[2]:>12.2f} {t[3]/p[3]:>10.2f}")
handshakes = [tuple(map(float, l.split())) for l in open(f"{work}/handshakes.txt")]
connect = statistics.median(c for c, _ in handshakes) * 1000
tls = statistics.median(a - c for c, a in handshakes) * 1000
print(f"new connection to the edge: TCP connect p50 {connect:.2f} ms, TLS handshake after it p50 {tls:.2f} ms ({len(handshakes)} connections)")
PY
