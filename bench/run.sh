#!/usr/bin/env bash
# driftkv benchmarks, printed as figures (not pass/fail):
#   1. hot-key GET throughput and p99 latency against `driftkv dev`, 50 connections, 100-byte
#      value, next to Redis GET measured the same way in the same run;
#   2. latency of one list page of 1000 keys in a namespace of 1,000,000 keys.
# Needs: wrk, redis-server, redis-benchmark (Debian: apt-get install wrk redis-server).
# Usage: bench/run.sh [seconds per run, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
for tool in wrk redis-server redis-benchmark python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install wrk redis-server)"; exit 2; }
done

cargo build --release --quiet
work=$(mktemp -d)
port=18787
redis_port=16379
cleanup() {
  [ -n "${kv_pid:-}" ] && kill "$kv_pid" 2>/dev/null || true
  [ -n "${redis_pid:-}" ] && kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

RUST_LOG=warn target/release/driftkv dev --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/kv.out" 2>"$work/kv.err" &
kv_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
api="http://127.0.0.1:$port/client/v4/accounts/bench/storage/kv/namespaces"
ns=$(curl -sf -X POST "$api" -d '{"title":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["id"])')
head -c 100 /dev/zero | tr '\0' 'v' | curl -sf -X PUT "$api/$ns/values/hot" --data-binary @- >/dev/null

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load generator on the same machine"
echo
echo "== hot-key GET, 50 connections, 100-byte value, ${secs}s =="
wrk -t2 -c50 -d"${secs}s" --latency "$api/$ns/values/hot" >"$work/wrk-get.txt"
kv_rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-get.txt")
kv_p99=$(awk '$1=="99%" {print $2}' "$work/wrk-get.txt")

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$redis_port" set key:000000000000 "$(head -c 100 /dev/zero | tr '\0' 'v')" >/dev/null
# Sized so the run lasts about as long as the driftkv one.
redis-benchmark -h 127.0.0.1 -p "$redis_port" -c 50 -n $((secs * 60000)) -d 100 -t get --csv >"$work/redis.csv"
redis_rps=$(tail -1 "$work/redis.csv" | tr -d '"' | cut -d, -f2)
redis_p99=$(tail -1 "$work/redis.csv" | tr -d '"' | cut -d, -f7)
kill "$redis_pid"; redis_pid=

printf '%-28s %14s %12s\n' "" "requests/s" "p99"
printf '%-28s %14s %12s\n' "driftkv dev GET (HTTP)" "$kv_rps" "$kv_p99"
printf '%-28s %14s %12s\n' "redis GET (RESP)" "$redis_rps" "${redis_p99}ms"
echo

echo "== list page of 1000 keys in a namespace of 1,000,000 keys =="
python3 - "$api/$ns" <<'PY'
import json, sys, time, urllib.request
url = sys.argv[1] + "/bulk"
start = time.time()
for batch in range(100):
    items = [{"key": f"k{i:07d}", "value": "v"} for i in range(batch * 10000, (batch + 1) * 10000)]
    req = urllib.request.Request(url, data=json.dumps(items).encode(), method="PUT",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        assert json.load(r)["result"]["successful_key_count"] == 10000
print(f"loaded 1,000,000 keys with 100 bulk writes in {time.time() - start:.1f}s")
PY
wrk -t1 -c1 -d"${secs}s" --latency -s bench/list-page.lua "$api/$ns/keys" >"$work/wrk-list.txt"
awk '/Latency Distribution/ {d=1} d && /%/ {print "  " $1 " " $2} /Requests\/sec/ {print "  pages/s " $2}' "$work/wrk-list.txt"
errors=$(grep -c "Non-2xx" "$work/wrk-list.txt" "$work/wrk-get.txt" | awk -F: '{s+=$2} END {print s}')
[ "$errors" = 0 ] || { echo "bench: some requests failed"; cat "$work/wrk-get.txt" "$work/wrk-list.txt"; exit 1; }
