"""age encryption of stored snapshots, with pyrage (bindings to rage, the Rust age), as push stages;
and age's keys: recipients to encrypt to, identities (from files) to decrypt with.

pyrage streams only from a reader to a writer (encrypt_io, decrypt_io: rage pulls 8 KiB reads and
writes 64 KiB chunks), so a stage runs it in a thread of its own: `write` hands bytes over through
a mailbox that holds at most IN_FLIGHT of them, and passes on whatever ciphertext (or plaintext)
is ready. Memory stays bounded by IN_FLIGHT and one chunk, whatever the snapshot's size, and every
exception reaches the caller's thread on its next `write` or `close`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import BackupError, IdentityError, SnapshotInvalid
from .formats import AGE
from .stages import Sink, StageFactory

# what the caller may be ahead of rage by; a chunk larger than this is handed over alone
IN_FLIGHT = 1024 * 1024
_X25519_PREFIX = "age1"
_SSH_PREFIXES = ("ssh-ed25519 ", "ssh-rsa ")
_SECRET_PREFIX = "AGE-SECRET-KEY-1"
_SSH_PRIVATE = b"-----BEGIN OPENSSH PRIVATE KEY-----"
# identity files for the commands that read backups back, when --identity is not given
ENV_IDENTITY_FILE = "ETCD_BACKUPD_AGE_IDENTITY_FILE"
# rage's message when no identity opens any of the header's stanzas
_NO_MATCHING_KEYS = "No matching keys found"

Recipient = Any  # pyrage.x25519.Recipient | pyrage.ssh.Recipient (pyrage ships no types)
Identity = Any  # pyrage.x25519.Identity | pyrage.ssh.Identity


def parse_recipient(text: str) -> Recipient:
    """An X25519 (age1...) or SSH (ssh-ed25519, ssh-rsa) public key; ValueError otherwise."""
    import pyrage

    text = text.strip()
    shown = text if len(text) <= 40 else text[:37] + "..."
    try:
        if text.startswith(_X25519_PREFIX):
            return pyrage.x25519.Recipient.from_str(text)
        if text.startswith(_SSH_PREFIXES):
            return pyrage.ssh.Recipient.from_str(text)
    except pyrage.RecipientError as exc:
        raise ValueError(f"invalid age recipient {shown!r}: {exc}") from None
    raise ValueError(f"{shown!r} is not an age recipient: age1... (X25519), ssh-ed25519 or ssh-rsa")


def parse_recipients_file(text: str) -> list[Recipient]:
    """The recipients of an age recipients file: one a line, blank lines and #-comments allowed."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                found.append(parse_recipient(line))
            except ValueError as exc:
                raise ValueError(f"line {number}: {exc}") from None
    return found


def load_identities(paths: Sequence[Path]) -> list[Identity]:
    """Every identity the files hold: age identity files (AGE-SECRET-KEY-1... lines, blank lines
    and #-comments allowed, as age-keygen writes them) or unencrypted OpenSSH private keys."""
    identities = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise IdentityError(f"cannot read age identity file {path}: {exc.strerror}") from None
        found = (
            _ssh_identity(path, data) if _SSH_PRIVATE in data[:100] else _age_identities(path, data)
        )
        if not found:
            raise IdentityError(f"age identity file {path} holds no identity")
        identities.extend(found)
    return identities


def identity_files(given: Sequence[Path] | None, environ: Mapping[str, str]) -> list[Path]:
    """The identity files a command reads backups back with: those given on the command line,
    else those ETCD_BACKUPD_AGE_IDENTITY_FILE names (several separated by ':'), else none."""
    if given:
        return list(given)
    named = environ.get(ENV_IDENTITY_FILE, "")
    return [Path(part) for part in named.split(os.pathsep) if part]


def _ssh_identity(path: Path, data: bytes) -> list[Identity]:
    import pyrage

    try:
        return [pyrage.ssh.Identity.from_buffer(data)]
    except pyrage.IdentityError as exc:
        raise IdentityError(
            f"{path} is not an SSH private key age can use ({exc}); a passphrase-protected key "
            "is not supported"
        ) from None


def _age_identities(path: Path, data: bytes) -> list[Identity]:
    import pyrage

    if data.startswith(AGE.magic):
        raise IdentityError(
            f"{path} is a passphrase-protected identity file, which is not supported: decrypt "
            "it with `age -d` into a file only this user can read"
        )
    found = []
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.decode("utf-8", "replace").strip()
        if not line or line.startswith("#"):
            continue
        # the line is a secret: the message names where it is, never what it holds
        if not line.startswith(_SECRET_PREFIX):
            raise IdentityError(f"{path}, line {number}: not an age identity (AGE-SECRET-KEY-1...)")
        try:
            found.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise IdentityError(f"{path}, line {number}: a damaged age identity") from None
    return found


def new_identity(created: datetime) -> tuple[str, str]:
    """A new X25519 identity as age-keygen writes it, and its recipient."""
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    text = (
        f"# created: {created.strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
        f"# public key: {recipient}\n"
        f"{identity}\n"
    )
    return text, recipient


def encrypting(recipients: Sequence[Recipient]) -> StageFactory:
    """A stage writing the age format (binary, not armored) to every one of `recipients`."""
    if not recipients:
        raise ValueError("encryption needs at least one recipient")

    def run(source: _Mailbox, target: _Outbox) -> None:
        import pyrage

        pyrage.encrypt_io(source, target, list(recipients))

    return lambda downstream: _AgeStage(run, downstream, "encrypt", _encryption_failure)


def decrypting(identities: Sequence[Identity], label: str) -> StageFactory:
    """A stage reading the age format back with `identities`; `label` names the stream in errors."""
    if not identities:
        raise IdentityError(
            f"{label} is encrypted with age: decrypting it takes an identity file (--identity "
            "FILE, or ETCD_BACKUPD_AGE_IDENTITY_FILE)"
        )

    def run(source: _Mailbox, target: _Outbox) -> None:
        import pyrage

        pyrage.decrypt_io(source, target, list(identities))

    return lambda downstream: _AgeStage(
        run, downstream, "decrypt", lambda exc: _decryption_failure(exc, label)
    )


def _encryption_failure(exc: Exception) -> BaseException:
    return BackupError(f"age encryption failed: {exc}")


def _decryption_failure(exc: Exception, label: str) -> BaseException:
    import pyrage

    if isinstance(exc, pyrage.DecryptError) and str(exc) == _NO_MATCHING_KEYS:
        return IdentityError(
            f"{label}: no identity given can decrypt it; it was encrypted to other recipients"
        )
    if isinstance(exc, pyrage.DecryptError):
        return SnapshotInvalid(f"{label}: damaged age header: {exc}")
    # rage reports a chunk that fails authentication, or a stream cut short, as an I/O error
    return SnapshotInvalid(f"{label}: damaged or truncated age stream: {exc}")


class _Aborted(Exception):
    """Raised into rage's read when the stage is aborted, so that its thread ends."""


class _Mailbox:
    """Bytes the caller hands to rage's thread, read by rage as a file (`read(n)`)."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._chunks: list[memoryview] = []
        self._waiting = 0
        self._eof = False
        self._aborted = False
        self._stopped = False

    def put(self, data: bytes) -> bool:
        """Hand over `data` once there is room; False when the reader has stopped."""
        if not data:
            # rage would read an empty chunk as the end of the stream
            return True
        with self._ready:
            self._ready.wait_for(
                lambda: (
                    self._stopped or self._waiting == 0 or self._waiting + len(data) <= IN_FLIGHT
                )
            )
            if self._stopped:
                return False
            self._chunks.append(memoryview(data))
            self._waiting += len(data)
            self._ready.notify_all()
            return True

    def end(self) -> None:
        with self._ready:
            self._eof = True
            self._ready.notify_all()

    def abort(self) -> None:
        with self._ready:
            self._aborted = self._stopped = True
            self._chunks.clear()
            self._ready.notify_all()

    def stop(self) -> None:
        """The reader is gone: a caller waiting for room must not wait forever."""
        with self._ready:
            self._stopped = True
            self._ready.notify_all()

    def read(self, size: int = -1) -> bytes:
        with self._ready:
            self._ready.wait_for(lambda: self._chunks or self._eof or self._aborted)
            if self._aborted:
                raise _Aborted
            if not self._chunks:
                return b""
            head = self._chunks[0]
            taken = head if size < 0 or size >= len(head) else head[:size]
            if len(taken) == len(head):
                self._chunks.pop(0)
            else:
                self._chunks[0] = head[len(taken) :]
            self._waiting -= len(taken)
            self._ready.notify_all()
            return bytes(taken)


class _Outbox:
    """What rage writes, kept until the caller's thread passes it on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        with self._lock:
            self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> list[bytes]:
        with self._lock:
            taken, self._chunks = self._chunks, []
        return taken


class _AgeStage:
    def __init__(
        self,
        run: Callable[[_Mailbox, _Outbox], None],
        downstream: Sink,
        what: str,
        failure: Callable[[Exception], BaseException],
    ) -> None:
        self._downstream = downstream
        self._mailbox = _Mailbox()
        self._outbox = _Outbox()
        self._failure = failure
        self._error: Exception | None = None
        self._thread = threading.Thread(
            target=self._work, args=(run,), name=f"age-{what}", daemon=True
        )
        self._thread.start()

    def _work(self, run: Callable[[_Mailbox, _Outbox], None]) -> None:
        try:
            run(self._mailbox, self._outbox)
        except Exception as exc:
            self._error = exc
        finally:
            self._mailbox.stop()

    def write(self, data: bytes) -> None:
        if not self._mailbox.put(data):
            self._thread.join()
            raise self._failed()
        self._pass_on()

    def close(self) -> None:
        self._mailbox.end()
        self._thread.join()
        if self._error is not None:
            raise self._failed()
        self._pass_on()

    def abort(self) -> None:
        self._mailbox.abort()
        self._thread.join()
        self._outbox.take()

    def _failed(self) -> BaseException:
        if self._error is None:
            return BackupError(f"{self._thread.name} stopped before the stream ended")
        failure = self._failure(self._error)
        failure.__cause__ = self._error
        return failure

    def _pass_on(self) -> None:
        for chunk in self._outbox.take():
            self._downstream.write(chunk)
