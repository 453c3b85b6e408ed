#!/usr/bin/env bash
# driftkv benchmarks, printed as figures (not pass/fail), against `driftkv dev --edges 3`
# (central plus three edges in one process, real gRPC and gossip over loopback):
#   1. hot-key GET throughput and p99 latency at an edge, 50 connections, 100-byte value, next
#      to Redis GET measured the same way in the same run, the two taking turns;
#   2. replication (driftkv-bench): write acknowledgement latency, propagation delay from
#      acknowledgement to applied on every edge, durable write throughput over distinct keys;
#   3. latency of one list page of 1000 keys in a namespace of 1,000,000 keys.
# driftkv runs in its default configuration (INFO logging, no access log), as a user gets it.
# Needs: wrk, redis-server, redis-benchmark (Debian: apt-get install wrk redis-server).
# Usage: bench/run.sh [seconds per run, default 20] [hot-GET rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
rounds="${2:-3}"
for tool in wrk redis-server redis-benchmark python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install wrk redis-server)"; exit 2; }
done

cargo build --release --quiet -p driftkv -p driftkv-bench
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

target/release/driftkv dev --edges 3 --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/kv.out" 2>"$work/kv.err" &
kv_pid=$!
# Ready once the last edge has announced itself (every edge caught up, all in gossip).
for _ in $(seq 300); do grep -q "edge 2 listening" "$work/kv.out" && break; sleep 0.1; done
grep -q "edge 2 listening" "$work/kv.out" || { echo "bench: driftkv dev did not start"; cat "$work/kv.err"; exit 1; }
api="http://127.0.0.1:$port/client/v4/accounts/bench/storage/kv/namespaces"
ns=$(curl -sf -X POST "$api" -d '{"title":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["id"])')
head -c 100 /dev/zero | tr '\0' 'v' | curl -sf -X PUT "$api/$ns/values/hot" --data-binary @- >/dev/null

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load generator on the same machine"
echo
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$work/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$redis_port" set key:000000000000 "$(head -c 100 /dev/zero | tr '\0' 'v')" >/dev/null

# Rates on a shared machine drift by 10-20% from minute to minute, so driftkv and Redis take
# turns, and each side's median round is what is compared.
echo "== hot-key GET, 50 connections, 100-byte value, $rounds alternating rounds of ${secs}s each =="
printf '%-8s %18s %10s %18s %10s\n' "" "driftkv requests/s" "p99" "redis requests/s" "p99"
for round in $(seq "$rounds"); do
  wrk -t2 -c50 -d"${secs}s" --latency "$api/$ns/values/hot" >"$work/wrk-get-$round.txt"
  # Sized so the run lasts about as long as the driftkv one.
  redis-benchmark -h 127.0.0.1 -p "$redis_port" -c 50 -n $((secs * 60000)) -d 100 -t get --csv >"$work/redis-$round.csv"
  kv_rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-get-$round.txt")
  kv_p99=$(awk '$1=="99%" {print $2}' "$work/wrk-get-$round.txt")
  redis_rps=$(tail -1 "$work/redis-$round.csv" | tr -d '"' | cut -d, -f2)
  redis_p99=$(tail -1 "$work/redis-$round.csv" | tr -d '"' | cut -d, -f7)
  printf '%-8s %18s %10s %18s %10s\n' "round $round" "$kv_rps" "$kv_p99" "$redis_rps" "${redis_p99}ms"
  echo "$kv_rps $redis_rps" >>"$work/get-rates.txt"
done
kill "$redis_pid"; redis_pid=
python3 - "$work/get-rates.txt" <<'PY'
import statistics, sys
rounds = [tuple(map(float, line.split())) for line in open(sys.argv[1])]
kv = statistics.median(r[0] for r in rounds)
redis = statistics.median(r[1] for r in rounds)
print(f"{'median':<8} {kv:>18.0f} {'':>10} {redis:>18.0f}")
print(f"driftkv / redis, medians: {kv / redis:.2f}")
PY
echo

target/release/driftkv-bench --edge "http://127.0.0.1:$port" --seconds "$secs" --expect-edges 3
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
# Measure listings once replication is over, not while the other edges still apply the load.
cluster = sys.argv[1].split("/client/v4/")[0] + "/cluster"
deadline = time.time() + 600
while True:
    with urllib.request.urlopen(cluster) as r:
        view = json.load(r)
    edges = [m for m in view["members"] if m["role"] == "edge"]
    if view["central_durable_sequence"] and all(m.get("lag_entries") == 0 for m in edges):
        break
    assert time.time() < deadline, "the edges did not catch up within 10 minutes"
    time.sleep(0.5)
print(f"every edge caught up {time.time() - start:.1f}s after the load began")
PY
wrk -t1 -c1 -d"${secs}s" --latency -s bench/list-page.lua "$api/$ns/keys" >"$work/wrk-list.txt"
awk '/Latency Distribution/ {d=1} d && /%/ {print "  " $1 " " $2} /Requests\/sec/ {print "  pages/s " $2}' "$work/wrk-list.txt"
errors=$(cat "$work/wrk-list.txt" "$work/"wrk-get-*.txt | grep -c "Non-2xx" || true)
[ "$errors" = 0 ] || { echo "bench: some requests failed"; cat "$work/"wrk-get-*.txt "$work/wrk-list.txt"; exit 1; }
