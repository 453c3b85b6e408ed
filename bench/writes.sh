#!/usr/bin/env bash
# Durable write throughput through one edge of `driftkv dev`, next to Redis with
# `appendonly yes, appendfsync always` (every acknowledged SET fsync'd), in the same run.
#
# For each storage engine and each cluster size (`dev --edges N`), a fresh cluster in its
# DEFAULT configuration (INFO logging, the per-key rate limit of 1 write/s: every PUT goes to
# a key of its own, so nothing is refused) takes 100-byte PUTs from `wrk` at each connection
# count, taking turns with `redis-benchmark -t set -d 100` at the same connection count, for
# the given number of rounds. Each side's median round and their ratio are printed, with:
#   - writes/s and the write latency p50 / p99 (wrk's, redis-benchmark's);
#   - CPU per write: the server process's utime+stime (/proc/PID/stat) over the round, divided
#     by the writes acknowledged (the whole driftkv process: central, every edge, gossip);
#   - context switches per write: voluntary + involuntary switches of every thread of the
#     server process (/proc/PID/task/*/status) over the round, divided likewise.
# Needs wrk, redis-server, redis-benchmark (Debian: apt-get install wrk redis-server).
#
# Usage: bench/writes.sh [seconds per round, 10] [rounds, 3]
# Environment: ENGINES ("sled fjall"; "default" leaves the choice to the binary), EDGES ("1 3"), CONNECTIONS ("1 8 50"),
#   DRIFTKV (a driftkv binary to measure instead of building this checkout's; e.g. an older
#   build, to compare two builds in one sitting).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
rounds="${2:-3}"
engines="${ENGINES:-sled fjall}"
edge_counts="${EDGES:-1 3}"
connections="${CONNECTIONS:-1 8 50}"
for tool in wrk redis-server redis-benchmark redis-cli python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install wrk redis-server)"; exit 2; }
done
if [ -z "${DRIFTKV:-}" ]; then
  cargo build --release --quiet -p driftkv
  DRIFTKV=target/release/driftkv
fi
work=$(mktemp -d)
port=18787
redis_port=16379
kv_pid=
redis_pid=
cleanup() {
  [ -n "$kv_pid" ] && kill "$kv_pid" 2>/dev/null || true
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# CPU ticks (utime + stime) and context switches of every thread of process $1, as "ticks switches".
usage() {
  local pid=$1 ticks switches=0 n
  ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  for status in /proc/"$pid"/task/*/status; do
    n=$(awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {s += $2} END {print s + 0}' "$status" 2>/dev/null || echo 0)
    switches=$((switches + n))
  done
  echo "$ticks $switches"
}

# Prints "writes/s p50_ms p99_ms cpu_us_per_write switches_per_write" of one round, from the
# writes counted, the seconds taken and the usage before and after.
figures() {
  python3 - "$@" <<'PY'
import os, sys
writes, seconds, p50, p99, t0, s0, t1, s1 = sys.argv[1:]
writes, seconds = float(writes), float(seconds)
hz = os.sysconf("SC_CLK_TCK")
cpu_us = (float(t1) - float(t0)) / hz * 1e6 / max(writes, 1)
cs = (float(s1) - float(s0)) / max(writes, 1)
print(f"{writes / seconds:.0f} {p50} {p99} {cpu_us:.1f} {cs:.2f}")
PY
}

# wrk's latency figure ("1.23ms", "950.00us", "1.01s") in milliseconds.
ms() {
  python3 -c 'import sys; v = sys.argv[1]
for unit, f in (("us", 1e-3), ("ms", 1), ("s", 1e3)):
    if v.endswith(unit) and (unit != "s" or not v.endswith(("us", "ms"))):
        print(f"{float(v[:-len(unit)]) * f:.2f}"); break' "$1"
}

start_redis() {
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --dir "$work" \
    --appendonly yes --appendfsync always --daemonize no >"$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
}

start_driftkv() {
  local engine=$1 edges=$2
  rm -rf "$work/data"
  local env=()
  # "default": leave the engine to the binary (for builds from before [storage] existed).
  [ "$engine" = default ] || env=(DRIFTKV_STORAGE__ENGINE="$engine")
  # The workerd binding listener takes a free port rather than 8786, which a driftkv started
  # elsewhere on the machine may hold; it is idle either way.
  env "${env[@]}" DRIFTKV_WORKERD__LISTEN=127.0.0.1:0 "$DRIFTKV" dev --edges "$edges" --listen "127.0.0.1:$port" \
    --data-dir "$work/data" >"$work/kv.out" 2>"$work/kv.err" &
  kv_pid=$!
  # Ready once the last edge has announced itself (every edge caught up, all in gossip).
  local last="driftkv dev listening"
  [ "$edges" -gt 1 ] && last="edge $((edges - 1)) listening"
  for _ in $(seq 300); do grep -q "$last" "$work/kv.out" && break; sleep 0.1; done
  grep -q "$last" "$work/kv.out" || { echo "bench: driftkv dev did not start"; cat "$work/kv.err"; exit 1; }
  api="http://127.0.0.1:$port/client/v4/accounts/bench/storage/kv/namespaces"
  ns=$(curl -sf -X POST "$api" -d '{"title":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["id"])')
}

stop_driftkv() {
  kill "$kv_pid"
  wait "$kv_pid" 2>/dev/null || true
  kv_pid=
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load generators on the same machine"
echo "driftkv: $DRIFTKV; redis: $(redis-server --version | awk '{print $3}') appendonly yes, appendfsync always"
start_redis
summary="$work/summary.txt"
for engine in $engines; do
  for edges in $edge_counts; do
    start_driftkv "$engine" "$edges"
    echo
    echo "== storage.engine = $engine, dev --edges $edges: PUTs of 100 bytes through edge 0, $rounds alternating rounds of ${secs}s =="
    printf '%-5s %-6s %10s %8s %8s %9s %8s   %10s %8s %8s %9s %8s\n' conns round \
      "driftkv/s" "p50 ms" "p99 ms" "cpu us/w" "cs/w" "redis/s" "p50 ms" "p99 ms" "cpu us/w" "cs/w"
    for conns in $connections; do
      redis_n=$((secs * (conns == 1 ? 4000 : 40000)))
      for round in $(seq "$rounds"); do
        before=$(usage "$kv_pid")
        started=$(date +%s.%N)
        wrk -t1 -c"$conns" -d"${secs}s" --latency -s bench/put-distinct.lua "$api/$ns/values" -- "r$round-c$conns" >"$work/wrk.txt"
        ended=$(date +%s.%N)
        after=$(usage "$kv_pid")
        if grep -q "Non-2xx" "$work/wrk.txt"; then echo "bench: driftkv refused writes"; cat "$work/wrk.txt"; exit 1; fi
        writes=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
        p50=$(ms "$(awk '$1=="50%" {print $2}' "$work/wrk.txt")")
        p99=$(ms "$(awk '$1=="99%" {print $2}' "$work/wrk.txt")")
        kv=$(figures "$writes" "$(python3 -c "print($ended - $started)")" "$p50" "$p99" $before $after)

        redis-cli -p "$redis_port" flushall >/dev/null
        before=$(usage "$redis_pid")
        started=$(date +%s.%N)
        redis-benchmark -h 127.0.0.1 -p "$redis_port" -c "$conns" -n "$redis_n" -d 100 -r 100000000 -t set --csv >"$work/redis.csv"
        ended=$(date +%s.%N)
        after=$(usage "$redis_pid")
        elapsed=$(python3 -c "print($ended - $started)")
        line=$(tail -1 "$work/redis.csv" | tr -d '"')
        rp50=$(echo "$line" | cut -d, -f5)
        rp99=$(echo "$line" | cut -d, -f7)
        redis=$(figures "$redis_n" "$elapsed" "$rp50" "$rp99" $before $after)
        # Size the next Redis round to last about as long as a driftkv round.
        redis_n=$(python3 -c "print(max(1000, int($redis_n / $elapsed * $secs)))")
        # shellcheck disable=SC2086
        printf '%-5s %-6s %10s %8s %8s %9s %8s   %10s %8s %8s %9s %8s\n' "$conns" "$round" $kv $redis
        echo "$engine $edges $conns $kv $redis" >>"$summary"
      done
    done
    stop_driftkv
  done
done

echo
echo "== medians of the rounds (driftkv / redis: ratio of the median rates) =="
python3 - "$summary" <<'PY'
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    runs[(f[0], int(f[1]), int(f[2]))].append([float(x) for x in f[3:]])
print(f"{'engine':<6} {'edges':>5} {'conns':>5} {'driftkv/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'us/w':>6} {'cs/w':>5}"
      f" {'redis/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'us/w':>6} {'cs/w':>5} {'ratio':>6}")
for (engine, edges, conns), rounds in runs.items():
    med = [statistics.median(r[i] for r in rounds) for i in range(10)]
    print(f"{engine:<6} {edges:>5} {conns:>5} {med[0]:>10.0f} {med[1]:>7.2f} {med[2]:>7.2f} {med[3]:>6.1f} {med[4]:>5.2f}"
          f" {med[5]:>9.0f} {med[6]:>7.2f} {med[7]:>7.2f} {med[8]:>6.1f} {med[9]:>5.2f} {med[0] / med[5]:>6.2f}")
PY
