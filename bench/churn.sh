#!/usr/bin/env bash
# Disk use under churn with garbage collection on: `driftkv dev --edges 2` holds a fixed set of
# live keys while many other keys are written and deleted through the bulk API, and every few
# seconds the run prints, per node (central is node 1, the edges 2 and 3), the records with a
# value, the tombstones, the log entries and the bytes on disk, from /metrics.
#
# What to look for: tombstones fall back towards zero once each grace period has passed (GC
# purges them on central and on both edges), and disk bytes level off instead of growing with
# the number of keys ever written.
#
# The cluster runs its default configuration except: tombstone grace lowered (GRACE seconds),
# garbage collection every GC_MS, the per-key write rate limit off (the churn rewrites nothing,
# but bulk writes of fresh keys in quick succession are what it measures), and the log kept
# to LOG_ENTRIES entries (the default million would hold the whole churn in the log).
# Bounded: the churn stops after BOUND_SECS seconds if it has not finished, and the tail after it
# lasts until no node holds a tombstone, at most GRACE + TAIL_SECS.
#
# Usage: bench/churn.sh
# Environment: LIVE (10000), CHURN (500000 keys written then deleted), BATCH (10000 keys per
#   bulk request), GRACE (10), GC_MS (1000), LOG_ENTRIES (100000), SAMPLE_SECS (5),
#   BOUND_SECS (900), TAIL_SECS (120), DRIFTKV (a driftkv binary instead of building this checkout's).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in python3 curl; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is missing"; exit 2; }
done
if [ -z "${DRIFTKV:-}" ]; then
  cargo build --release --quiet -p driftkv
  DRIFTKV=target/release/driftkv
fi
work=$(mktemp -d)
port=${PORT:-18797}
kv_pid=
cleanup() {
  [ -n "$kv_pid" ] && kill "$kv_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

grace=${GRACE:-10}
gc_ms=${GC_MS:-1000}
DRIFTKV_STORAGE__TOMBSTONE_GRACE_SECS=$grace \
DRIFTKV_STORAGE__GC_INTERVAL_MS=$gc_ms \
DRIFTKV_RATE_LIMIT__WRITES_PER_KEY_PER_SECOND=0 \
DRIFTKV_REPLICATION__LOG_RETENTION_ENTRIES=${LOG_ENTRIES:-100000} \
DRIFTKV_REPLICATION__TRIM_INTERVAL_MS=1000 \
  "$DRIFTKV" dev --edges 2 --listen "127.0.0.1:$port" --data-dir "$work/data" \
  >"$work/out" 2>"$work/log" &
kv_pid=$!
for _ in $(seq 1 200); do
  grep -q "driftkv dev edge 1 listening on" "$work/out" 2>/dev/null && break
  kill -0 "$kv_pid" 2>/dev/null || { echo "bench: driftkv dev exited:"; tail -20 "$work/log"; exit 1; }
  sleep 0.1
done
grep -q "driftkv dev edge 1 listening on" "$work/out" || { echo "bench: driftkv dev did not start"; exit 1; }

python3 - "http://127.0.0.1:$port" "${LIVE:-10000}" "${CHURN:-500000}" "${BATCH:-10000}" \
  "$grace" "$gc_ms" "${SAMPLE_SECS:-5}" "${BOUND_SECS:-900}" "${TAIL_SECS:-120}" <<'PY'
import json, sys, time, urllib.error, urllib.request

base, live, churn, batch, grace, gc_ms, sample, bound, tail = sys.argv[1:]
live, churn, batch, grace, gc_ms, sample, bound, tail = (
    int(live), int(churn), int(batch), int(grace), int(gc_ms), float(sample), float(bound),
    float(tail))
api = f"{base}/client/v4/accounts/bench/storage/kv/namespaces"

retries = 0

def call(method, url, body=None):
    """One API call; a 503 or 429 (central busy, a write timed out) is retried after its
    Retry-After (1 s when absent), up to 10 times, as a client of the API would."""
    global retries
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(11):
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.load(response)
            break
        except urllib.error.HTTPError as e:
            if e.code not in (429, 503) or attempt == 10:
                raise SystemExit(f"bench: {method} {url}: HTTP {e.code}: {e.read()[:300]!r}")
            retries += 1
            time.sleep(float(e.headers.get("retry-after") or 1))
    if not answer.get("success"):
        raise SystemExit(f"bench: {method} {url} failed: {answer}")
    return answer["result"]

families = ("driftkv_store_records", "driftkv_store_tombstones", "driftkv_log_entries",
            "driftkv_store_disk_bytes")

def gauges():
    text = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
    nodes = {}
    for line in text.splitlines():
        for family in families:
            if line.startswith(family + "{"):
                labels, value = line.rsplit(" ", 1)
                node = labels.split('node="', 1)[1].split('"', 1)[0]
                nodes.setdefault(node, {})[family] = float(value)
    return nodes

start = time.monotonic()
def report(churned):
    parts = []
    for node, g in sorted(gauges().items()):
        parts.append("node {}: {:>7.0f} records {:>7.0f} tombstones {:>7.0f} log {:>7.1f} MB".format(
            node, *(g.get(f, 0) for f in families[:3]), g.get(families[3], 0) / 1e6))
    print(f"{time.monotonic() - start:6.0f} s {churned:>8} churned | " + " | ".join(parts), flush=True)

ns = call("POST", api, {"title": f"churn-{int(time.time())}"})["id"]
bulk = f"{api}/{ns}/bulk"
for first in range(0, live, batch):
    call("PUT", bulk, [{"key": f"live-{i:07}", "value": "x" * 100}
                       for i in range(first, min(first + batch, live))])
print(f"{live} live keys written; churning {churn} keys, {batch} per bulk write then delete; "
      f"grace {grace} s, GC every {gc_ms} ms", flush=True)
churned, next_report = 0, 0.0
while churned < churn and time.monotonic() - start < bound:
    keys = [f"churn-{i:08}" for i in range(churned, min(churned + batch, churn))]
    call("PUT", bulk, [{"key": k, "value": "y" * 100} for k in keys])
    call("POST", f"{bulk}/delete", keys)
    churned += len(keys)
    if time.monotonic() >= next_report:
        report(churned)
        next_report = time.monotonic() + sample
# Then until garbage collection has caught up on every node (no tombstone left), within
# TAIL_SECS after the grace period.
tail_until = time.monotonic() + grace + tail
while time.monotonic() < tail_until:
    time.sleep(sample)
    report(churned)
    if all(g.get("driftkv_store_tombstones", 1) == 0 for g in gauges().values()):
        print(f"every node is free of tombstones {time.monotonic() - start:.0f} s after the start",
              flush=True)
        break
else:
    print(f"tombstones left {grace + tail:.0f} s after the churn ended", flush=True)
print(f"{retries} calls retried after a 503 or 429", flush=True)
PY
