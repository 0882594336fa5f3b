"""A destination is untrusted input: what another cluster, another tool or an intruder left
there never gets a file outside it written, never gets another cluster's backup deleted, and
never crashes or hangs a command. Each test runs the commands an operator runs, against a local
directory and against S3 (moto), and looks at what is left around the destination."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etcd_backupd.config import EtcdConfig
from etcd_backupd.destinations.s3 import MANIFEST_FOLDER
from etcd_backupd.etcd import EtcdSource
from etcd_backupd.manifest import manifest_name, snapshot_name
from tests.harness.backups import make_manifest
from tests.harness.cli import local_destination, run_cli, s3_destination
from tests.harness.cli import write_config as config_file
from tests.harness.etcd import EtcdBinaries, EtcdCluster, load_kubernetes_like_keys
from tests.harness.s3 import MotoServer, make_bucket, s3_environment

BUCKET = "shared-backups"
PREFIX = "etcd/"
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class Store:
    """One destination, local or S3, seen from outside the tool."""

    kind: str
    root: Path
    client: Any = None
    endpoint: str = ""

    def put(self, name: str, data: bytes) -> None:
        if self.kind == "local":
            (self.root / name).write_bytes(data)
        else:
            self.client.put_object(Bucket=BUCKET, Key=PREFIX + name, Body=data)

    def put_manifest(self, snapshot: str, data: bytes) -> None:
        if self.kind == "local":
            (self.root / manifest_name(snapshot)).write_bytes(data)
        else:
            key = PREFIX + MANIFEST_FOLDER + manifest_name(snapshot)
            self.client.put_object(Bucket=BUCKET, Key=key, Body=data)

    def plant(
        self, cluster: str, created: datetime, *, manifest: bool = True, **fields: Any
    ) -> str:
        name = snapshot_name(cluster, created)
        self.put(name, b"not a snapshot")
        if manifest:
            text = make_manifest(cluster, created, **fields).to_json()
            self.put_manifest(name, text.encode())
        return name

    def snapshots(self) -> set[str]:
        if self.kind == "local":
            return {p.name for p in self.root.iterdir() if p.name.endswith(".db")}
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX)
        return {
            obj["Key"].removeprefix(PREFIX)
            for page in pages
            for obj in page.get("Contents", [])
            if obj["Key"].endswith(".db")
        }

    def destination(self, **extra: Any) -> dict[str, Any]:
        if self.kind == "local":
            return local_destination(self.root, **extra)
        return s3_destination(self.endpoint, BUCKET, prefix=PREFIX, **extra)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    root = tmp_path / "backups"
    root.mkdir()
    if request.param == "local":
        yield Store("local", root)
        return
    s3: MotoServer = request.getfixturevalue("s3")
    client = s3.client()
    make_bucket(client, BUCKET)
    yield Store("s3", root, client, s3.endpoint_url)


def write_config(
    tmp_path: Path,
    store: Store,
    *,
    endpoints: list[str] | None = None,
    bin_dir: Path | None = None,
    retention: dict[str, Any] | None = None,
    **destination: Any,
) -> Path:
    sections: dict[str, Any] = {}
    if bin_dir:
        sections["drill"] = {"bin_dir": bin_dir}
    if retention:
        sections["retention"] = retention
    return config_file(
        tmp_path,
        endpoints or ["http://127.0.0.1:9"],
        etcd={"cluster_name": "prod"},
        destinations=[store.destination(**destination)],
        **sections,
    )


def cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A command with the test S3 server's credentials in its environment."""
    return run_cli(*args, env={**s3_environment(), **(env or {})}, timeout=timeout)


def next_second() -> None:
    """Snapshot names carry the second: two backups need two seconds."""
    time.sleep(1 - datetime.now(UTC).microsecond / 1e6)


def naive_manifest(cluster: str, created: datetime) -> bytes:
    """A manifest whose `created` has no time zone, as another tool might write it."""
    fields = json.loads(make_manifest(cluster, created).to_json())
    fields["created"] = created.replace(tzinfo=None).isoformat()
    return json.dumps(fields).encode()


def cluster_id(cluster: EtcdCluster) -> str:
    member = EtcdSource(EtcdConfig(endpoints=cluster.endpoints)).healthy_members()[0]
    return f"{member.cluster_id:016x}"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in a textfile, whatever other labels it carries."""
    (value,) = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return value


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


# --- manifests whose `snapshot` points elsewhere ---------------------------------------------


@pytest.mark.parametrize("aim", ["absolute", "dotdot"])
def test_a_manifest_cannot_aim_restore_or_drill_outside(
    store: Store, tmp_path: Path, etcd_binaries_35: EtcdBinaries, aim: str
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    scratch = tmp_path / "tmp"  # where restore and drill make their scratch directories
    scratch.mkdir()
    target = str(victim) if aim == "absolute" else "../victim"
    stored_as = snapshot_name("prod", NOW - timedelta(hours=1))
    # the object the manifest names exists too, so that only the name decides
    store.put(stored_as, b"not a snapshot")
    if store.kind == "s3":
        store.put(target, b"overwritten")
    bad = make_manifest("prod", NOW - timedelta(hours=1), snapshot=target)
    store.put_manifest(stored_as, bad.to_json().encode())
    config = write_config(tmp_path, store, bin_dir=etcd_binaries_35.etcd.parent)
    (tmp_path / "state").mkdir()  # the drill records its result there
    before = sorted(p.name for p in tmp_path.iterdir())

    restored = cli(
        "restore",
        "--config",
        str(config),
        "--destination",
        store.kind,
        "--snapshot",
        "latest",
        "--data-dir",
        str(tmp_path / "data"),
        "--etcd-bin-dir",
        str(etcd_binaries_35.etcd.parent),
        env={"TMPDIR": str(scratch)},
    )
    drilled = cli("drill", "--config", str(config), env={"TMPDIR": str(scratch)})

    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(scratch.iterdir()) == []
    assert restored.returncode == 1, restored.stderr
    assert last_line(restored) == f"etcd-backupd: destination {store.kind!r} holds no backup"
    assert f"ignoring manifest {'' if store.kind == 'local' else PREFIX + MANIFEST_FOLDER}" in (
        restored.stderr
    )
    assert "field 'snapshot'" in restored.stderr
    assert drilled.returncode == 6, drilled.stderr
    assert "holds no backup of cluster prod" in drilled.stdout


# --- manifests that are not what they claim ----------------------------------------------------


def test_manifests_that_are_not_files_or_too_big_or_naive_are_skipped_by_list(
    store: Store, tmp_path: Path
) -> None:
    good = store.plant("prod", NOW - timedelta(hours=5))
    naive = snapshot_name("prod", NOW - timedelta(hours=4))
    store.put(naive, b"s")
    store.put_manifest(naive, naive_manifest("prod", NOW - timedelta(hours=4)))
    huge = snapshot_name("prod", NOW - timedelta(hours=3))
    store.put(huge, b"s")
    store.put_manifest(huge, b" " * (2 * 1024 * 1024))
    if store.kind == "local":
        fifo = snapshot_name("prod", NOW - timedelta(hours=2))
        store.put(fifo, b"s")
        os.mkfifo(store.root / manifest_name(fifo))
        zero = snapshot_name("prod", NOW - timedelta(hours=1))
        store.put(zero, b"s")
        (store.root / manifest_name(zero)).symlink_to("/dev/zero")
    config = write_config(tmp_path, store)

    listed = cli("list", "--config", str(config), timeout=60)
    as_json = cli("list", "--config", str(config), "-o", "json", timeout=60)

    assert listed.returncode == 0, listed.stderr
    assert f"{store.kind}: 1 backup(s) of 1 cluster(s)" in listed.stdout
    assert "field 'created': Input should have timezone info" in listed.stderr
    assert "larger than 1048576 bytes" in listed.stderr
    if store.kind == "local":
        assert f"{manifest_name(fifo)}: not a regular file" in listed.stderr
        assert f"{manifest_name(zero)}: a symbolic link" in listed.stderr
    warnings = [line for line in listed.stderr.splitlines() if "ignoring manifest" in line]
    assert len(warnings) == (4 if store.kind == "local" else 2)
    entries = json.loads(as_json.stdout)[store.kind]
    assert [e["snapshot"] for e in entries if e["has_manifest"]] == [good]
    assert all(e["cluster"] == "prod" for e in entries)


def test_a_naive_manifest_does_not_keep_the_daemon_from_loading(
    store: Store, tmp_path: Path
) -> None:
    from etcd_backupd.config import load_config
    from etcd_backupd.daemon import Daemon

    good = store.plant("prod", NOW - timedelta(hours=5))
    naive = snapshot_name("prod", NOW - timedelta(hours=4))
    store.put(naive, b"s")
    store.put_manifest(naive, naive_manifest("prod", NOW - timedelta(hours=4)))
    config = write_config(tmp_path, store)
    daemon = Daemon(config, load_config(config))

    # etcd does not answer: the backups named for cluster_name count
    daemon.reporting.refresh()

    registry = daemon.metrics.registry
    created = (NOW - timedelta(hours=5)).timestamp()
    assert registry.get_sample_value("etcd_backup_last_success_timestamp_seconds") == created
    assert good in store.snapshots()


def test_a_restarted_daemon_reads_only_this_clusters_backups(store: Store, tmp_path: Path) -> None:
    from etcd_backupd.config import load_config
    from etcd_backupd.daemon import Daemon

    store.plant("prod", NOW - timedelta(hours=5))
    store.plant("other", NOW - timedelta(minutes=5))
    store.plant("other", NOW - timedelta(minutes=1))
    config = write_config(tmp_path, store)
    daemon = Daemon(config, load_config(config))

    # etcd does not answer: the backups named for cluster_name count
    daemon.reporting.refresh()

    registry = daemon.metrics.registry
    created = (NOW - timedelta(hours=5)).timestamp()
    assert registry.get_sample_value("etcd_backup_last_success_timestamp_seconds") == created
    snapshots = registry.get_sample_value(
        "etcd_backup_destination_snapshots", {"destination": store.kind}
    )
    assert snapshots == 1
    assert daemon.scheduler.newest_backup() == NOW - timedelta(hours=5)


# --- a destination shared by clusters ------------------------------------------------------------


def test_another_clusters_backups_survive_cycles_and_prune(
    store: Store, tmp_path: Path, etcd35: EtcdCluster
) -> None:
    load_kubernetes_like_keys(etcd35, count=20)
    theirs = {
        store.plant("other", NOW - timedelta(days=2)),
        store.plant("other", NOW + timedelta(minutes=1)),  # newer than ours
    }
    config = write_config(tmp_path, store, endpoints=etcd35.endpoints, retention={"keep_last": 1})
    textfile = tmp_path / "metrics.prom"

    for _ in range(2):
        next_second()
        once = cli("once", "--config", str(config), "--textfile", str(textfile))
        assert once.returncode == 0, once.stderr
    pruned = cli("prune", "--config", str(config))
    listed = cli("list", "--config", str(config))

    ours = {n for n in store.snapshots() if n.startswith("etcd-snapshot-prod-")}
    assert len(ours) == 1
    assert store.snapshots() == ours | theirs
    assert pruned.returncode == 0, pruned.stderr
    assert f"{store.kind}: cluster prod: keep 1, deleted 0" in pruned.stdout
    assert not any(name in pruned.stdout for name in theirs)
    assert listed.returncode == 0, listed.stderr
    assert f"{store.kind}: 3 backup(s) of 2 cluster(s)" in listed.stdout
    assert "  cluster other: 2 backup(s)" in listed.stdout
    assert "  cluster prod: 1 backup(s)" in listed.stdout
    snapshots = metric(
        textfile.read_text(), "etcd_backup_destination_snapshots", destination=store.kind
    )
    assert snapshots == 1

    # `latest` is this cluster's, not the other cluster's newer one
    restored = cli(
        "restore",
        "--config",
        str(config),
        "--destination",
        store.kind,
        "--data-dir",
        str(tmp_path / "data"),
        "--etcd-bin-dir",
        str(etcd35.binaries.etcd.parent),
    )
    assert restored.returncode == 0, restored.stderr
    assert "restored revision" in restored.stdout


# --- snapshots dated in the future -----------------------------------------------------------


def test_a_future_snapshot_anchors_neither_retention_nor_age(
    store: Store, tmp_path: Path, etcd35: EtcdCluster
) -> None:
    planted = store.plant("prod", NOW + timedelta(days=2), cluster_id=cluster_id(etcd35))
    config = write_config(
        tmp_path, store, endpoints=etcd35.endpoints, retention={"keep_within": "1d"}
    )
    textfile = tmp_path / "metrics.prom"

    for _ in range(2):
        next_second()
        once = cli("once", "--config", str(config), "--textfile", str(textfile))
        assert once.returncode == 0, once.stderr

    ours = store.snapshots() - {planted}
    assert len(ours) == 2  # both new backups kept
    assert planted in store.snapshots()
    assert "dated more than 5 min in the future" in once.stderr
    text = textfile.read_text()
    assert 0 < metric(text, "etcd_backup_last_success_age_seconds") < 600
    assert metric(text, "etcd_backup_future_snapshots", destination=store.kind) == 1


# --- snapshots we did not write ----------------------------------------------------------------


def test_a_snapshot_without_manifest_is_listed_and_removed_only_when_asked(
    store: Store, tmp_path: Path, etcd35: EtcdCluster
) -> None:
    copied = store.plant("prod", NOW - timedelta(days=3), manifest=False)
    config = write_config(tmp_path, store, endpoints=etcd35.endpoints, retention={"keep_last": 2})

    once = cli("once", "--config", str(config))
    dry = cli("prune", "--config", str(config), "--dry-run")
    listed = cli("list", "--config", str(config))

    assert once.returncode == 0, once.stderr
    assert copied in store.snapshots()
    assert f"  leave  {copied}  (no valid manifest" in dry.stdout
    assert f"keep   {copied}" not in dry.stdout
    assert f"{copied}  " in listed.stdout and "no valid manifest: not a backup" in listed.stdout

    asked = cli("prune", "--config", str(config), "--orphans")
    assert asked.returncode == 0, asked.stderr
    assert f"  removed {copied}  (orphan)" in asked.stdout
    assert copied not in store.snapshots()
    assert len(store.snapshots()) == 1


# --- S3 bucket versioning ---------------------------------------------------------------------


@pytest.mark.parametrize("delete_versions", [False, True])
def test_a_versioned_bucket_is_said_and_versions_go_when_asked(
    s3: MotoServer, tmp_path: Path, delete_versions: bool
) -> None:
    client = s3.client()
    make_bucket(client, BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    store = Store("s3", tmp_path, client, s3.endpoint_url)
    names = [store.plant("prod", NOW - timedelta(hours=i)) for i in range(3)]
    kept, doomed = names[0], names[1:]
    config = write_config(
        tmp_path, store, retention={"keep_last": 1}, delete_versions=delete_versions
    )

    checked = cli("check-config", "--config", str(config))
    pruned = cli("prune", "--config", str(config))

    assert checked.returncode == 0, checked.stderr
    assert "destination s3: bucket versioning is Enabled" in checked.stdout
    assert pruned.returncode == 0, pruned.stderr
    assert "bucket versioning is Enabled" in pruned.stderr
    assert store.snapshots() == {kept}
    listing = client.list_object_versions(Bucket=BUCKET, Prefix=PREFIX)
    left = {v["Key"] for v in listing.get("Versions", []) + listing.get("DeleteMarkers", [])}
    doomed_keys = {PREFIX + n for n in doomed} | {
        PREFIX + MANIFEST_FOLDER + manifest_name(n) for n in doomed
    }
    if delete_versions:
        assert left.isdisjoint(doomed_keys)
        assert "every version of a deleted snapshot is deleted too" in pruned.stderr
    else:
        assert doomed_keys <= left
        assert "NoncurrentVersionExpiration" in pruned.stderr
    assert {PREFIX + kept, PREFIX + MANIFEST_FOLDER + manifest_name(kept)} <= left
