"""Compressed snapshots: every kind reads back byte for byte, the kind is told by its magic bytes,
and a damaged stream, a decompression bomb or a full scratch file system is a one-line error with
a defined exit code, after writing no more than the snapshot can be."""

from __future__ import annotations

import gzip
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from etcd_backupd.compression import compressor, decompress_file, plain_snapshot, writing
from etcd_backupd.errors import BackupError, SnapshotInvalid
from etcd_backupd.formats import MAGIC_SPAN, Compression, StoredFormat, outer_layer, stored_name
from etcd_backupd.snapshot.status import verify_snapshot
from etcd_backupd.stages import Pipeline
from tests.unit.test_bbolt import etcd_database, sealed, write

# the scratch copy may not grow past this in the bomb tests: the bombs expand to 1 GiB
FILE_SIZE_LIMIT = 48 * 1024 * 1024


def zstd_bomb(head: bytes, total: int = 1 << 30) -> bytes:
    """`head`, then zeros up to `total` bytes, compressed to a few tens of KB."""
    packer = zstandard.ZstdCompressor(level=3).compressobj()
    out = [packer.compress(head)]
    zeros = bytes(16 << 20)
    for _ in range((total - len(head)) // len(zeros)):
        out.append(packer.compress(zeros))
    out.append(packer.flush())
    return b"".join(out)


def detect(path: Path) -> str:
    """The outermost layer a file's first bytes name, as reading it back decides."""
    with path.open("rb") as handle:
        layer = outer_layer(handle.read(MAGIC_SPAN))
    return layer.name if layer else "none"


def good_snapshot(free_pages: int = 0) -> bytes:
    db, root, _ = etcd_database(4096)
    db.skip(free_pages)
    return sealed(db.build(root))


def limited_verify(path: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """`verify` with its scratch directory in `tmp` and no file allowed past FILE_SIZE_LIMIT,
    as on a small TMPDIR."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))

    return subprocess.run(
        [sys.executable, "-m", "etcd_backupd.cli", "verify", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "TMPDIR": str(tmp)},
        preexec_fn=limit,
    )


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"", "no valid bbolt meta page in the first"),
        (
            good_snapshot()[:8192],
            f"more than the {len(good_snapshot())} bytes its bbolt meta page claims",
        ),
    ],
    ids=["zeros", "valid-meta-then-zeros"],
)
def test_a_zstd_bomb_stops_at_what_the_snapshot_can_be(
    tmp_path: Path, head: bytes, reason: str
) -> None:
    bomb = tmp_path / "bomb.db.zst"
    bomb.write_bytes(zstd_bomb(head))
    assert bomb.stat().st_size < 64 * 1024
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = limited_verify(bomb, scratch)
    assert result.returncode == SnapshotInvalid.exit_code, result.stderr
    assert reason in result.stderr and result.stderr.count("\n") == 1
    assert not any(scratch.iterdir())


def test_a_full_scratch_file_system_is_a_clear_error(tmp_path: Path) -> None:
    snapshot = tmp_path / "s.db.gz"
    data = good_snapshot(free_pages=FILE_SIZE_LIMIT // 4096)
    assert verify_snapshot(write(tmp_path, data)).file_size > FILE_SIZE_LIMIT
    snapshot.write_bytes(gzip.compress(data))
    result = limited_verify(snapshot, tmp_path)
    assert result.returncode == BackupError.exit_code, result.stderr
    assert result.stderr.count("\n") == 1
    assert f"cannot decompress {snapshot} into {tmp_path}/" in result.stderr
    assert "File too large; point TMPDIR at a larger file system" in result.stderr


def test_the_manifest_size_bounds_the_copy(tmp_path: Path) -> None:
    data = good_snapshot()
    path = tmp_path / "s.db.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(data))
    with plain_snapshot(path, size=len(data)) as plain:
        assert verify_snapshot(plain).file_size == len(data)
    with pytest.raises(SnapshotInvalid) as caught, plain_snapshot(path, size=len(data) - 1):
        pass
    assert str(caught.value) == (
        f"{path}: decompresses to more than the {len(data) - 1} bytes its manifest states"
    )


def test_a_manifest_size_beyond_the_free_space_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "s.db.gz"
    path.write_bytes(gzip.compress(good_snapshot()))
    with pytest.raises(BackupError) as caught, plain_snapshot(path, size=1 << 60):
        pass
    assert "point TMPDIR at a larger file system" in str(caught.value)
    assert f"it holds {1 << 60} bytes" in str(caught.value)


@pytest.mark.parametrize("kind", ["none", "zstd", "gzip"])
def test_a_snapshot_compressed_as_it_streams_reads_back_byte_for_byte(
    tmp_path: Path, kind: Compression
) -> None:
    snapshot = good_snapshot(free_pages=40)
    packer = compressor(kind)
    stored = b"".join(
        packer.compress(snapshot[at : at + 1000]) for at in range(0, len(snapshot), 1000)
    )
    path = write(tmp_path, stored + packer.flush(), stored_name("snapshot.db", StoredFormat(kind)))
    assert detect(path) == kind
    with plain_snapshot(path, size=len(snapshot)) as plain:
        assert plain.read_bytes() == snapshot
        assert verify_snapshot(plain).file_size == len(snapshot)
    if kind == "none":
        assert stored == snapshot  # kept exactly as `etcdutl snapshot restore` takes it
    else:
        assert len(stored) < len(snapshot)


@pytest.mark.parametrize("kind", ["none", "zstd", "gzip"])
def test_a_spooled_file_compressed_into_place_reads_back_byte_for_byte(
    tmp_path: Path, kind: Compression
) -> None:
    snapshot = good_snapshot(free_pages=3)
    source = write(tmp_path, snapshot, "spool.db")
    target = tmp_path / stored_name("stored.db", StoredFormat(kind))
    with target.open("wb") as out:
        pipeline = Pipeline(writing(StoredFormat(kind)), out)
        with source.open("rb") as src:
            while block := src.read(4096):
                pipeline.write(block)
        pipeline.close()
    assert pipeline.stored_size == target.stat().st_size
    assert detect(target) == kind
    decompress_file(target, tmp_path / "plain.db")
    assert (tmp_path / "plain.db").read_bytes() == snapshot


def test_the_kind_is_told_by_the_magic_bytes_never_the_name(tmp_path: Path) -> None:
    assert detect(write(tmp_path, gzip.compress(b"etcd"), "a.db")) == "gzip"
    assert detect(write(tmp_path, zstandard.compress(b"etcd"), "b.db.gz")) == "zstd"
    assert detect(write(tmp_path, good_snapshot(), "c.db.zst")) == "none"
    assert detect(write(tmp_path, b"", "empty")) == "none"
    assert detect(write(tmp_path, b"\x1f", "one-byte")) == "none"


@pytest.mark.parametrize("kind", ["zstd", "gzip"])
def test_a_truncated_stream_is_a_clear_error(tmp_path: Path, kind: Compression) -> None:
    packer = compressor(kind)
    stored = packer.compress(good_snapshot(free_pages=40)) + packer.flush()
    path = write(
        tmp_path, stored[: len(stored) // 2], stored_name("snapshot.db", StoredFormat(kind))
    )
    with pytest.raises(SnapshotInvalid, match=f"{kind} stream is truncated"):
        decompress_file(path, tmp_path / "plain.db")


@pytest.mark.parametrize("kind", ["zstd", "gzip"])
def test_a_damaged_stream_is_a_clear_error(tmp_path: Path, kind: Compression) -> None:
    packer = compressor(kind)
    stored = bytearray(packer.compress(good_snapshot(free_pages=40)) + packer.flush())
    for at in range(20, len(stored) - 20, 7):
        stored[at] ^= 0x5A
    path = write(tmp_path, bytes(stored), stored_name("snapshot.db", StoredFormat(kind)))
    with pytest.raises(SnapshotInvalid, match=f"damaged {kind} stream"):
        decompress_file(path, tmp_path / "plain.db")


def test_a_file_that_cannot_be_read_is_a_clear_error(tmp_path: Path) -> None:
    with (
        pytest.raises(SnapshotInvalid, match=r"cannot read .*missing\.db"),
        plain_snapshot(tmp_path / "missing.db"),
    ):
        pass
