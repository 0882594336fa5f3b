"""The table of stored formats: every format's name, suffix and layers, and what a stored name or
a stream's first bytes say about it."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

import pytest
import zstandard

from etcd_backupd.formats import (
    AGE,
    FORMATS,
    GZIP,
    ZSTD,
    StoredFormat,
    base_name,
    format_of_name,
    outer_layer,
    stored_name,
)
from etcd_backupd.restore import find_snapshot, restore_token
from tests.harness.backups import make_manifest

SNAPSHOT = "etcd-snapshot-prod-20260101T000000Z.db"


@pytest.mark.parametrize(
    ("stored", "suffix", "name", "layers"),
    [
        (StoredFormat("none"), "", "none", ()),
        (StoredFormat("zstd"), ".zst", "zstd", (ZSTD,)),
        (StoredFormat("gzip"), ".gz", "gzip", (GZIP,)),
        (StoredFormat("none", True), ".age", "age", (AGE,)),
        (StoredFormat("zstd", True), ".zst.age", "zstd+age", (ZSTD, AGE)),
        (StoredFormat("gzip", True), ".gz.age", "gzip+age", (GZIP, AGE)),
    ],
)
def test_each_format_compresses_then_encrypts(
    stored: StoredFormat, suffix: str, name: str, layers: tuple[object, ...]
) -> None:
    assert stored in FORMATS
    assert (stored.suffix, stored.name, stored.layers) == (suffix, name, layers)
    assert stored_name(SNAPSHOT, stored) == SNAPSHOT + suffix
    assert format_of_name(SNAPSHOT + suffix) == stored
    assert base_name(SNAPSHOT + suffix) == SNAPSHOT


def test_the_table_holds_six_formats_and_names_no_other() -> None:
    assert len(set(FORMATS)) == 6
    for name in ("s.db.age.zst", "s.db.zst.gz", "s.db.bz2", "s.zst", "s"):
        assert format_of_name(name) is None
        assert base_name(name) == name


def test_magic_bytes_name_the_outer_layer() -> None:
    assert outer_layer(zstandard.ZstdCompressor().compress(b"x")) is ZSTD
    assert outer_layer(gzip.compress(b"x")) is GZIP
    assert outer_layer(b"age-encryption.org/v1\n-> X25519 ...") is AGE
    assert outer_layer(b"age-encryption.org/v1\n", (ZSTD, GZIP)) is None
    assert outer_layer(bytes(4096)) is None
    assert outer_layer(b"") is None


@pytest.mark.parametrize("stored", FORMATS, ids=lambda f: f.name)
def test_restore_finds_a_backup_by_its_base_name_and_tokens_ignore_the_format(
    stored: StoredFormat,
) -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    manifest = make_manifest("prod", created, snapshot=stored_name(SNAPSHOT, stored))
    found = find_snapshot([manifest], SNAPSHOT, "local", cluster=None, now=created)
    assert found is manifest
    assert restore_token(stored_name(SNAPSHOT, stored)) == restore_token(SNAPSHOT)
