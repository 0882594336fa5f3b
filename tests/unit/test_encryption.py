"""age encryption as a push stage, checked against Debian's age CLI in both directions: what we
write, `age -d` (piped into `zstd -d` or `gzip -d`) turns back into exactly the input; what
`age -r` or `age -R` writes, we read back. Memory stays bounded whatever the stream's length."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from etcd_backupd.compression import plain_snapshot, reading, writing
from etcd_backupd.encryption import (
    decrypting,
    identity_files,
    load_identities,
    parse_recipient,
    parse_recipients_file,
)
from etcd_backupd.errors import ExitCode, IdentityError, SnapshotInvalid
from etcd_backupd.formats import Compression, StoredFormat
from etcd_backupd.snapshot.status import verify_snapshot
from etcd_backupd.stages import Pipeline
from tests.unit.test_bbolt import etcd_database, sealed

AGE_CHUNK = 64 * 1024
# sizes that start, end and straddle age's 64 KiB chunks, and the small and odd ones between
AWKWARD = [1, AGE_CHUNK - 1, AGE_CHUNK, 0, AGE_CHUNK + 1, 7, 2 * AGE_CHUNK + 3, 16, 100_003]

pytestmark = pytest.mark.skipif(
    shutil.which("age") is None or shutil.which("age-keygen") is None,
    reason="age not installed (Debian age)",
)


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, str]:
    """An identity file made by age-keygen, and its recipient."""
    path = tmp_path / "key.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return path, recipient


def age_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("age-")]


def ssh_key(tmp_path: Path, kind: str) -> tuple[Path, str]:
    path = tmp_path / f"id_{kind}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path, path.with_suffix(".pub").read_text().strip()


def encrypt(data: bytes, stored: StoredFormat, recipients: list[str], sizes: list[int]) -> bytes:
    """`data` as we store it, written in pieces of `sizes` (cycled)."""
    out = io.BytesIO()
    pipeline = Pipeline(writing(stored, [parse_recipient(r) for r in recipients]), out)
    at = 0
    for size in itertools.cycle(sizes):
        if at >= len(data):
            break
        pipeline.write(data[at : at + size])
        at += size
    pipeline.close()
    assert pipeline.stored_size == len(out.getvalue())
    return out.getvalue()


def decrypt(stored: bytes, identities: list[Path], sizes: list[int] = AWKWARD) -> bytes:
    """What our reading stages make of `stored`, fed in pieces of `sizes` (cycled)."""
    out = io.BytesIO()
    pipeline = Pipeline([reading(load_identities(identities), "s.db.age")], out, hashed=False)
    pieces = itertools.cycle(sizes)
    view = memoryview(stored)
    while view:
        size = next(pieces)
        pipeline.write(bytes(view[:size]))
        view = view[size:]
    pipeline.close()
    return out.getvalue()


def age_decrypt(stored: bytes, identity: Path, then: str = "cat") -> bytes:
    """`age -d -i identity | then`, as an operator would run it."""
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", f'age -d -i "$1" | {then}', "bash", str(identity)],
        input=stored,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout


PLAIN_SIZES = [0, 1, AGE_CHUNK - 1, AGE_CHUNK, 3 * AGE_CHUNK, 3 * AGE_CHUNK + 1, 700_001]


@pytest.mark.parametrize("length", PLAIN_SIZES)
def test_age_decrypts_what_we_write_to_exactly_the_input(
    key: tuple[Path, str], length: int
) -> None:
    identity, recipient = key
    data = os.urandom(length)
    stored = encrypt(data, StoredFormat("none", True), [recipient], AWKWARD)
    assert stored.startswith(b"age-encryption.org/v1\n")
    assert age_decrypt(stored, identity) == data


@pytest.mark.parametrize(("compression", "undo"), [("zstd", "zstd -d"), ("gzip", "gzip -d")])
def test_age_then_the_compressor_gives_back_the_input(
    key: tuple[Path, str], compression: Compression, undo: str
) -> None:
    if shutil.which(undo.split()[0]) is None:
        pytest.skip(f"{undo.split()[0]} not installed")
    identity, recipient = key
    # half random, half repetitive: the compressed stream still spans several age chunks
    data = os.urandom(300_000) + b"etcd " * 100_000
    stored = encrypt(data, StoredFormat(compression, True), [recipient], AWKWARD)
    assert age_decrypt(stored, identity, then=undo) == data


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_ssh_recipients_and_identities_both_ways(tmp_path: Path, kind: str) -> None:
    private, public = ssh_key(tmp_path, kind)
    data = os.urandom(200_000)
    stored = encrypt(data, StoredFormat("none", True), [public], [65_000])
    assert age_decrypt(stored, private) == data
    recipients = tmp_path / "recipients"
    recipients.write_text(public + "\n")
    theirs = subprocess.run(
        ["age", "-R", str(recipients)], input=data, capture_output=True, check=True
    ).stdout
    assert decrypt(theirs, [private]) == data


@pytest.mark.parametrize("length", PLAIN_SIZES)
def test_we_decrypt_what_age_writes(key: tuple[Path, str], length: int) -> None:
    identity, recipient = key
    data = os.urandom(length)
    theirs = subprocess.run(
        ["age", "-r", recipient], input=data, capture_output=True, check=True
    ).stdout
    assert decrypt(theirs, [identity]) == data


def test_a_snapshot_age_and_zstd_wrote_is_read_back_for_verification(
    tmp_path: Path, key: tuple[Path, str]
) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("zstd not installed")
    identity, recipient = key
    db, root, _ = etcd_database(4096)
    db.skip(100)
    snapshot = sealed(db.build(root))
    packed = subprocess.run(["zstd", "-c"], input=snapshot, capture_output=True, check=True)
    stored = tmp_path / "etcd-snapshot-c-20260101T000000Z.db.zst.age"
    subprocess.run(["age", "-r", recipient, "-o", str(stored)], input=packed.stdout, check=True)
    identities = load_identities([identity])
    with plain_snapshot(stored, size=len(snapshot), identities=identities) as plain:
        assert plain.read_bytes() == snapshot
        assert verify_snapshot(plain).file_size == len(snapshot)
    with (
        pytest.raises(SnapshotInvalid, match="more than the 100 bytes its manifest states"),
        plain_snapshot(stored, size=100, identities=identities),
    ):
        pass


def test_no_identity_and_a_wrong_one_are_one_clear_error(
    tmp_path: Path, key: tuple[Path, str]
) -> None:
    _, recipient = key
    stored = tmp_path / "s.db.age"
    stored.write_bytes(encrypt(b"x" * 5000, StoredFormat("none", True), [recipient], [999]))
    other = tmp_path / "other.txt"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    with (
        pytest.raises(IdentityError, match="takes an identity file") as caught,
        plain_snapshot(stored),
    ):
        pass
    assert caught.value.exit_code == ExitCode.IDENTITY == 8
    with (
        pytest.raises(IdentityError, match="no identity given can decrypt it") as caught,
        plain_snapshot(stored, identities=load_identities([other])),
    ):
        pass
    assert str(caught.value).count("\n") == 0
    assert not age_threads()


def test_identity_files_as_age_keygen_writes_them_with_comments_and_blank_lines(
    tmp_path: Path, key: tuple[Path, str]
) -> None:
    identity, recipient = key
    second = tmp_path / "second.txt"
    subprocess.run(["age-keygen", "-o", str(second)], check=True, capture_output=True)
    both = tmp_path / "both.txt"
    both.write_text("\n# ours\n\n" + identity.read_text() + "\n   \n" + second.read_text())
    assert len(load_identities([both])) == 2
    data = os.urandom(1000)
    assert decrypt(encrypt(data, StoredFormat(encrypted=True), [recipient], [64]), [both]) == data


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "holds no identity"),
        ("# only a comment\n", "holds no identity"),
        ("AGE-SECRET-KEY-1QQQQ\n", "line 1: a damaged age identity"),
        ("# key\nage1notasecret\n", "line 2: not an age identity"),
    ],
)
def test_a_bad_identity_file_is_an_identity_error_that_never_shows_the_secret(
    tmp_path: Path, content: str, reason: str
) -> None:
    path = tmp_path / "key.txt"
    path.write_text(content)
    with pytest.raises(IdentityError, match=reason) as caught:
        load_identities([path])
    assert "QQQQ" not in str(caught.value) and "notasecret" not in str(caught.value)


def test_an_unreadable_identity_file_is_an_identity_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="cannot read age identity file"):
        load_identities([tmp_path / "missing.txt"])


def test_recipients_files_and_bad_recipients(key: tuple[Path, str], tmp_path: Path) -> None:
    _, recipient = key
    _, public = ssh_key(tmp_path, "ed25519")
    found = parse_recipients_file(f"# backups\n\n{recipient}\n  {public}\n")
    assert len(found) == 2
    with pytest.raises(ValueError, match=r"line 2: .* is not an age recipient"):
        parse_recipients_file(f"{recipient}\nssh-dss AAAA\n")
    with pytest.raises(ValueError, match="invalid age recipient"):
        parse_recipient("age1qqqq")


def test_a_damaged_header_is_an_invalid_snapshot(key: tuple[Path, str]) -> None:
    identity, recipient = key
    stored = encrypt(b"x" * 1000, StoredFormat(encrypted=True), [recipient], [1000])
    with pytest.raises(SnapshotInvalid, match="damaged age header"):
        decrypt(stored[: stored.index(b"\n--- ") + 10], [identity])


def payload_start(stored: bytes) -> int:
    """Where the first chunk starts: after the header's MAC line and the 16-byte nonce (rage
    adds a random "grease" stanza, so the header's length varies)."""
    return stored.index(b"\n", stored.index(b"\n--- ") + 1) + 1 + 16


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-10],
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),
        lambda b: b[: payload_start(b) + 100],
    ],
    ids=["truncated", "flipped-tag", "cut-in-first-chunk"],
)
def test_damaged_ciphertext_is_an_invalid_snapshot(key: tuple[Path, str], damage: object) -> None:
    identity, recipient = key
    stored = encrypt(os.urandom(3 * AGE_CHUNK), StoredFormat(encrypted=True), [recipient], [4096])
    assert callable(damage)
    with pytest.raises(SnapshotInvalid, match="damaged or truncated age stream"):
        decrypt(damage(stored), [identity])


def test_an_aborted_stream_leaves_no_thread_behind(key: tuple[Path, str]) -> None:
    _, recipient = key
    out = io.BytesIO()
    pipeline = Pipeline(writing(StoredFormat("zstd", True), [parse_recipient(recipient)]), out)
    pipeline.write(os.urandom(3 * AGE_CHUNK))
    assert len(age_threads()) == 1
    pipeline.abort()
    assert not age_threads()


def test_a_failing_sink_fails_the_write_and_stops_the_worker(key: tuple[Path, str]) -> None:
    _, recipient = key

    class Full:
        def write(self, data: bytes) -> None:
            raise OSError(28, "No space left on device")

    pipeline = Pipeline(writing(StoredFormat(encrypted=True), [parse_recipient(recipient)]), Full())
    with pytest.raises(OSError, match="No space left"):
        for _ in range(64):
            pipeline.write(os.urandom(AGE_CHUNK))
    assert not age_threads()


def test_a_decryption_stage_needs_an_identity() -> None:
    with pytest.raises(IdentityError, match=r"s\.db\.age is encrypted with age"):
        decrypting([], "s.db.age")


# peak RSS may grow by this much while 300 MB pass through: the mailbox, one age chunk in
# flight each way, and rage's buffers, not the stream
RSS_GROWTH_LIMIT = 24 * 1024 * 1024
RSS_PROBE = """
import os, resource, sys
from etcd_backupd.compression import writing
from etcd_backupd.encryption import parse_recipient
from etcd_backupd.formats import StoredFormat
from etcd_backupd.stages import Pipeline

class Discard:
    def write(self, data):
        pass

chunk = os.urandom(1 << 20)
pipeline = Pipeline(writing(StoredFormat("none", True), [parse_recipient(sys.argv[1])]), Discard())
pipeline.write(chunk)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(299):
    pipeline.write(chunk)
pipeline.close()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(pipeline.stored_size, (after - before) * 1024)
"""


def test_memory_stays_bounded_for_a_300_mb_stream(key: tuple[Path, str]) -> None:
    _, recipient = key
    done = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, recipient],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    stored, growth = map(int, done.stdout.split())
    assert stored > 300 * 1024 * 1024
    assert growth < RSS_GROWTH_LIMIT, f"peak RSS grew by {growth} bytes"


def test_gzip_and_plain_pipelines_match_the_codecs(key: tuple[Path, str]) -> None:
    data = os.urandom(10_000) * 20
    out = io.BytesIO()
    pipeline = Pipeline(writing(StoredFormat("gzip")), out)
    pipeline.write(data)
    pipeline.close()
    assert gzip.decompress(out.getvalue()) == data
    assert decrypt(out.getvalue(), []) == data
    assert decrypt(data, []) == data


def test_parts_cut_inside_age_chunks_join_into_the_file_age_reads(key: tuple[Path, str]) -> None:
    """An upload's parts (S3's smallest is 5 MiB) never end on one of age's 64 KiB + 16 chunks:
    the stage owes the sink nothing but the bytes in order."""
    if shutil.which("zstd") is None:
        pytest.skip("zstd not installed")
    identity, recipient = key
    part_size = 5 * 1024 * 1024

    class Parts:
        def __init__(self) -> None:
            self.parts: list[bytes] = []
            self.pending = b""

        def write(self, data: bytes) -> None:
            self.pending += data
            while len(self.pending) >= part_size:
                self.parts.append(self.pending[:part_size])
                self.pending = self.pending[part_size:]

    data = os.urandom(11 * 1024 * 1024 + 12_345)
    sink = Parts()
    pipeline = Pipeline(writing(StoredFormat("zstd", True), [parse_recipient(recipient)]), sink)
    for at in range(0, len(data), 999_983):
        pipeline.write(data[at : at + 999_983])
    pipeline.close()
    sink.parts.append(sink.pending)
    assert len(sink.parts) == 3
    assert part_size % (AGE_CHUNK + 16) != 0
    joined = b"".join(sink.parts)
    assert hashlib.sha256(joined).hexdigest() == pipeline.stored_sha256
    assert age_decrypt(joined, identity, then="zstd -d") == data


def test_identity_files_come_from_the_command_line_else_the_environment() -> None:
    given = [Path("/a"), Path("/b")]
    environ = {"ETCD_BACKUPD_AGE_IDENTITY_FILE": "/c:/d"}
    assert identity_files(given, environ) == given
    assert identity_files(None, environ) == [Path("/c"), Path("/d")]
    assert identity_files([], {"ETCD_BACKUPD_AGE_IDENTITY_FILE": ""}) == []
    assert identity_files(None, {}) == []
