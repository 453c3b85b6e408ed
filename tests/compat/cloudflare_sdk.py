"""Drives a driftkv server with the official, unchanged Cloudflare Python SDK.

Usage: DRIFTKV_BASE_URL=http://127.0.0.1:8787/client/v4 python3 cloudflare_sdk.py

Exits non-zero (with the failing assertion) if any SDK call does not behave as it does
against Cloudflare. Run by tests/sdk_compat.rs.
"""

import json
import os
import sys
import time
import uuid

import cloudflare
from cloudflare import Cloudflare

base_url = os.environ["DRIFTKV_BASE_URL"]
token = os.environ.get("DRIFTKV_API_TOKEN", "dev-token-unused")
account = "0123456789abcdef0123456789abcdef"
client = Cloudflare(api_token=token, base_url=base_url, max_retries=0)
kv = client.kv.namespaces

title = f"sdk-{uuid.uuid4().hex[:8]}"
ns = kv.create(account_id=account, title=title)
assert len(ns.id) == 32 and ns.title == title, ns
assert ns.supports_url_encoding is True

# Duplicate titles are refused with Cloudflare's error.
try:
    kv.create(account_id=account, title=title)
    raise AssertionError("duplicate title accepted")
except cloudflare.APIStatusError as e:
    assert e.status_code == 409, e
    assert "10014" in str(e.body) or "10014" in str(e), e.body

# Auto-pagination over namespaces with page/per_page.
extra = [kv.create(account_id=account, title=f"{title}-{i}").id for i in range(3)]
listed = [n.id for n in kv.list(account_id=account, per_page=2)]
assert ns.id in listed and all(i in listed for i in extra), listed
assert kv.get(ns.id, account_id=account).title == title
renamed = kv.update(ns.id, account_id=account, title=title + "-renamed")
assert renamed.title == title + "-renamed", renamed

# Values: multipart write with metadata and expiration, keys needing percent-encoding.
key = "a b/c?d%e:f!"
binary = bytes(range(256)) * 4
kv.values.update(key, account_id=account, namespace_id=ns.id, value=binary, metadata={"owner": "sdk", "n": 1},
                 expiration_ttl=3600)
got = kv.values.get(key, account_id=account, namespace_id=ns.id)
assert got.read() == binary, "binary value did not round-trip"
meta = kv.metadata.get(key, account_id=account, namespace_id=ns.id)
assert meta == {"owner": "sdk", "n": 1}, meta
# Calls that return nothing answer "result": null, which the SDK turns into None ({} would
# come back as an empty model instead).
assert kv.values.update("plain", account_id=account, namespace_id=ns.id, value=b"hello") is None
assert kv.values.get("plain", account_id=account, namespace_id=ns.id).text() == "hello"

# A missing key is a 404 with code 10009.
try:
    kv.values.get("missing", account_id=account, namespace_id=ns.id).read()
    raise AssertionError("missing key returned a value")
except cloudflare.NotFoundError as e:
    assert "10009" in json.dumps(e.body), e.body

# Bulk write, then list every key through the SDK's cursor pagination.
items = [{"key": f"bulk/{i:04}", "value": f"v{i}", "metadata": {"i": i}} for i in range(2500)]
items.append({"key": "b64", "value": "aGVsbG8=", "base64": True, "expiration_ttl": 600})
result = kv.bulk_update(ns.id, account_id=account, body=items)
assert result.successful_key_count == len(items), result
names = [k.name for k in kv.keys.list(ns.id, account_id=account, prefix="bulk/", limit=1000)]
assert names == [f"bulk/{i:04}" for i in range(2500)], (len(names), names[:3])
first = next(iter(kv.keys.list(ns.id, account_id=account, prefix="bulk/0001", limit=10)))
assert first.metadata == {"i": 1}, first
assert kv.values.get("b64", account_id=account, namespace_id=ns.id).read() == b"hello"

# Bulk get, text and with metadata.
bulk = kv.bulk_get(ns.id, account_id=account, keys=["bulk/0001", "nope"])
values = bulk.values if hasattr(bulk, "values") else bulk["values"]
assert values == {"bulk/0001": "v1", "nope": None}, values
bulk = kv.bulk_get(ns.id, account_id=account, keys=["bulk/0002"], with_metadata=True)
entry = bulk.values["bulk/0002"]
entry = entry if isinstance(entry, dict) else entry.model_dump()
assert entry["value"] == "v2" and entry["metadata"] == {"i": 2}, entry

# Bulk delete and single delete.
deleted = kv.bulk_delete(ns.id, account_id=account, body=[f"bulk/{i:04}" for i in range(2000)])
assert deleted.successful_key_count == 2000, deleted
assert kv.values.delete(key, account_id=account, namespace_id=ns.id) is None
assert kv.values.delete(key, account_id=account, namespace_id=ns.id) is None
left = [k.name for k in kv.keys.list(ns.id, account_id=account)]
assert left == ["b64"] + [f"bulk/{i:04}" for i in range(2000, 2500)] + ["plain"], left[:5]

# Deleting the namespaces.
for namespace_id in [ns.id, *extra]:
    assert kv.delete(namespace_id, account_id=account) is None
try:
    kv.get(ns.id, account_id=account)
    raise AssertionError("deleted namespace still readable")
except cloudflare.NotFoundError as e:
    assert "10013" in json.dumps(e.body), e.body

print("cloudflare SDK compatibility: all checks passed")
