#!/usr/bin/env bash
# User-space instructions per cached GET at an edge, counted by callgrind: a figure that,
# unlike requests per second on a shared machine, comes out the same run after run, so the
# cost of a change to the read path can be told from noise. Kernel work (the loopback TCP
# send and receive, about half of the server's CPU time per request) is not counted.
#
# Starts `driftkv dev` (central and one edge, default configuration) under valgrind, writes a 100-byte
# value, warms the cache, then counts what the process executes while wrk sends cached GETs
# on 10 connections for a fixed time.
# Needs: valgrind, wrk, curl, python3 (Debian: apt-get install valgrind wrk).
# Usage: bench/get-instructions.sh [seconds, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
for tool in valgrind callgrind_control callgrind_annotate wrk python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing (apt-get install valgrind wrk)"; exit 2; }
done

cargo build --release --quiet -p driftkv
work=$(mktemp -d)
port=18797
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
  target/release/driftkv dev --listen "127.0.0.1:$port" --data-dir "$work/data" \
  >"$work/out" 2>"$work/err" &
pid=$!
# Everything runs some 50 times slower under valgrind; give the start a few minutes.
for _ in $(seq 600); do grep -q "listening on" "$work/out" && break; sleep 0.5; done
grep -q "listening on" "$work/out" || { echo "bench: driftkv dev did not start"; cat "$work/err"; exit 1; }
api="http://127.0.0.1:$port/client/v4/accounts/bench/storage/kv/namespaces"
ns=$(curl -sf -X POST "$api" -d '{"title":"instructions"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["id"])')
url="$api/$ns/values/hot"
head -c 100 /dev/zero | tr '\0' 'v' | curl -sf -X PUT "$url" --data-binary @- >/dev/null
wrk -t1 -c10 -d3s "$url" >/dev/null

callgrind_control --zero "$pid" >/dev/null 2>&1
wrk -t1 -c10 -d"${secs}s" "$url" >"$work/wrk.txt"
callgrind_control --dump "$pid" >/dev/null 2>&1
requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
grep -q "Non-2xx" "$work/wrk.txt" && { echo "bench: some GETs failed"; cat "$work/wrk.txt"; exit 1; }
instructions=$(callgrind_annotate "$work"/callgrind.out.* 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "cached GET at an edge: $requests requests, $((instructions / requests)) user-space instructions per request"
