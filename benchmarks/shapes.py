"""The three database shapes the benchmarks fill an etcd with, and the fill itself.

- `1mb`: values of 1 MB, one revision each: a bbolt file of overflow pages, little per-page work.
- `k8s`: Kubernetes-shaped: objects of 0.8-2.8 KB under /registry/<resource>/<namespace>/<name>,
  one to three revisions each (about two on average), 5 % deleted at the end; bucket `key` holds
  every revision, so the file is mostly leaf pages of two or three records.
- `lease`: lease-like: 200,000 keys of 300 B (scaled with --size-mib), each written five times.

Puts travel in transactions of up to 100 operations (etcd allows 128), sent by several processes
at once, so that a 1.5 GB fill takes minutes, not an hour. Each object's revisions are written
in passes, every pass complete before the next, so a key's last write is always its last
revision and a delete always follows it.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

import etcd3

SHAPES = ("1mb", "k8s", "lease")
# MiB each shape fills to when --size-mib is not given; the lease shape is a key count instead
DEFAULT_SIZE_MIB = {"1mb": 1024, "k8s": 1536, "lease": 460}
ONE_MB = 1_000_000
TXN_OPS = 100
WORKERS = 3
K8S_RESOURCES = (
    "pods",
    "configmaps",
    "secrets",
    "services",
    "deployments",
    "replicasets",
    "endpointslices",
    "events",
    "serviceaccounts",
    "leases",
)
K8S_NAMESPACES = 60
K8S_MIN, K8S_MAX = 800, 2800
# bytes of database per object, measured: two revisions of ~1.8 KB plus bbolt's page slack
K8S_BYTES_PER_OBJECT = 5600
LEASE_KEYS = 200_000
LEASE_VALUE = 300
LEASE_WRITES = 5
_POOL_BYTES = 4 * 1024 * 1024

_client: Any = None
_pool: bytes = b""


def _start_worker(host: str, port: int) -> None:
    global _client, _pool
    _client = etcd3.client(host, port, timeout=120)
    _client.call_credentials = None
    # random bytes so that nothing compresses and no two pages are alike
    _pool = os.urandom(_POOL_BYTES)


def _value(index: int, size: int) -> bytes:
    start = (index * 7919) % (_POOL_BYTES - size)
    return _pool[start : start + size]


def _apply(batch: tuple[str, int, list[tuple[str, int, int]]]) -> int:
    kind, _, operations = batch
    if kind == "delete":
        requests = [_client.transactions.delete(key) for key, _, _ in operations]
    else:
        requests = [
            _client.transactions.put(key, _value(seed, size)) for key, seed, size in operations
        ]
    _client.transaction(compare=[], success=requests, failure=[])
    return len(requests)


def _k8s_key(index: int) -> str:
    resource = K8S_RESOURCES[index % len(K8S_RESOURCES)]
    namespace = (index // len(K8S_RESOURCES)) % K8S_NAMESPACES
    return f"/registry/{resource}/ns-{namespace:03d}/{resource[:-1]}-{index:08d}"


def _k8s_revisions(index: int) -> int:
    return (1, 2, 2, 3)[(index * 2654435761 >> 7) % 4]


def _k8s_size(index: int, revision: int) -> int:
    return K8S_MIN + (index * 40503 + revision * 977) % (K8S_MAX - K8S_MIN + 1)


def _batches(shape: str, size_mib: int) -> Iterator[list[tuple[str, int, list[Any]]]]:
    """The fill as passes; each pass a list of (put|delete, pass, operations) batches."""
    if shape == "1mb":
        count = size_mib * 1024 * 1024 // ONE_MB
        yield [("put", 0, [(f"/registry/bench/{i:07d}", i, ONE_MB)]) for i in range(count)]
        return
    if shape == "lease":
        keys = LEASE_KEYS * size_mib // DEFAULT_SIZE_MIB["lease"]
        names = [f"/registry/leases/kube-node-lease/holder-{i:07d}" for i in range(keys)]
        for write in range(LEASE_WRITES):
            operations = [
                (name, i * LEASE_WRITES + write, LEASE_VALUE) for i, name in enumerate(names)
            ]
            yield _chunked("put", write, operations)
        return
    objects = size_mib * 1024 * 1024 // K8S_BYTES_PER_OBJECT
    for revision in range(3):
        operations = [
            (_k8s_key(i), i * 3 + revision, _k8s_size(i, revision))
            for i in range(objects)
            if _k8s_revisions(i) > revision
        ]
        yield _chunked("put", revision, operations)
    deleted = [(_k8s_key(i), 0, 0) for i in range(objects) if i % 20 == 7]
    yield _chunked("delete", 3, deleted)


def _chunked(kind: str, number: int, operations: list[Any]) -> list[tuple[str, int, list[Any]]]:
    return [(kind, number, operations[i : i + TXN_OPS]) for i in range(0, len(operations), TXN_OPS)]


def fill(endpoint: str, shape: str, size_mib: int) -> int:
    """Fill the etcd at `endpoint` (http://host:port) with `shape`; the number of operations."""
    host, port = endpoint.split("://", 1)[1].rsplit(":", 1)
    done = 0
    context = multiprocessing.get_context("fork")
    with context.Pool(WORKERS, initializer=_start_worker, initargs=(host, int(port))) as pool:
        for batches in _batches(shape, size_mib):
            done += sum(pool.imap_unordered(_apply, batches, chunksize=4))
    return done
