"""Talking to etcd: connections (TLS, auth, several endpoints), member choice, the snapshot stream.

Only python-etcd3's client and stubs are used. The snapshot RPC is called on the client's
maintenance stub directly because the client's own `snapshot()` applies its request timeout to the
whole stream, which cuts large snapshots off; here the stream has no deadline and a watchdog aborts
it when it stops making progress instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import etcd3
import grpc
from etcd3 import etcdrpc

from .config import EtcdConfig
from .errors import ConfigError, EtcdError
from .manifest import Cluster
from .snapshot.status import SHA256_SIZE

log = logging.getLogger(__name__)

DEFAULT_CLIENT_PORT = 2379
# etcd sends 32 KiB chunks; the default 4 MiB cap is ample, but members configured with a larger
# --max-request-bytes may send more, and a refused message would fail the whole stream.
# The snapshot is a unary-stream call: read on the consuming thread, its ~35,000 messages per GiB
# skip gRPC's hand-off between threads, which cost about a third of the receiving CPU time.
# A fixed flow-control window bounds what the member may send ahead of the reader: gRPC's
# bandwidth probing grew it to buffer 4-5 MiB more on loopback. 512 KiB still carries 500 MB/s
# at a 1 ms round trip, twice what a member sends a snapshot at.
_SNAPSHOT_WINDOW_BYTES = 512 * 1024
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", _SNAPSHOT_WINDOW_BYTES),
]
# seconds between progress lines of a snapshot stream (read when a stream starts)
PROGRESS_INTERVAL = 10.0
_MIB = 1024 * 1024


def describe_progress(received: int, seconds: float, total: int) -> str:
    """How far a stream of `total` expected bytes has come after `seconds`: bytes, rate, ETA."""
    rate = received / seconds if seconds > 0 else 0.0
    line = f"{received / _MIB:.1f} MiB"
    if total > 0:
        line += f" of {total / _MIB:.1f} MiB ({min(100 * received // total, 100)}%)"
    line += f" at {rate / _MIB:.1f} MiB/s"
    if total > received and rate > 0:
        line += f", about {max(1, round((total - received) / rate))} s left"
    elif 0 < total < received:
        line += ", past the size the member reported"
    return line


@dataclass(frozen=True)
class MemberStatus:
    """A member that answered, as seen through one of the configured endpoints."""

    endpoint: str
    member_id: int
    name: str
    leader_id: int
    cluster_id: int
    version: str
    db_size: int

    @property
    def is_leader(self) -> bool:
        return self.member_id == self.leader_id

    def describe(self) -> str:
        role = "leader" if self.is_leader else "follower"
        return f"{self.name or format(self.member_id, 'x')} ({self.endpoint}, {role})"


def _read(path: Path, field: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"etcd.{field}: cannot read {path}: {exc.strerror}") from exc


def _grpc_detail(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "ERROR"
    return f"{name}: {details}"


def _advice(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if code == grpc.StatusCode.UNAVAILABLE and ("SSL" in details or "handshake" in details):
        return "check etcd.cacert, etcd.cert and etcd.key against the member's TLS setup"
    if code == grpc.StatusCode.UNAVAILABLE:
        return "check that the member runs and the endpoint URL (scheme, host, port) is right"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "the member did not answer within etcd.dial_timeout"
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED) or (
        "authentication" in details
    ):
        return "check etcd.username and the password (etcd.password_file or the environment)"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return "snapshots need a user with etcd's root role"
    return "see the member's log"


class EtcdSource:
    """The etcd cluster named by the config: finds healthy members and streams snapshots."""

    def __init__(self, config: EtcdConfig) -> None:
        self._config = config
        self._credentials = self._channel_credentials()

    def _channel_credentials(self) -> grpc.ChannelCredentials | None:
        config = self._config
        if not config.uses_tls:
            return None
        root = _read(config.cacert, "cacert") if config.cacert else None
        key = _read(config.key, "key") if config.key else None
        chain = _read(config.cert, "cert") if config.cert else None
        return grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key, certificate_chain=chain
        )

    def _client(self, endpoint: str) -> Any:
        has_scheme = "://" in endpoint
        parts = urlsplit(endpoint if has_scheme else f"//{endpoint}")
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        secure = parts.scheme == "https" if has_scheme else self._config.cacert is not None
        ep = etcd3.Endpoint(
            host,
            parts.port or DEFAULT_CLIENT_PORT,
            secure=secure,
            creds=self._credentials if secure else None,
            opts=_GRPC_OPTIONS,
        )
        user, password = self._config.credentials()
        client = etcd3.MultiEndpointEtcd3Client(
            endpoints=[ep], timeout=self._config.dial_timeout, user=user, password=password
        )
        if not secure:
            # gRPC refuses call credentials on a plaintext channel; the auth token also
            # travels in the metadata, which is all etcd reads
            client.call_credentials = None
        return client

    def _status(self, endpoint: str) -> tuple[Any, MemberStatus]:
        client = self._client(endpoint)
        try:
            response = client.maintenancestub.Status(
                etcdrpc.StatusRequest(),
                self._config.dial_timeout,
                credentials=client.call_credentials,
                metadata=client.metadata,
            )
            members = client.clusterstub.MemberList(
                etcdrpc.MemberListRequest(),
                self._config.dial_timeout,
                credentials=client.call_credentials,
                metadata=client.metadata,
            )
        except BaseException:
            client.close()
            raise
        member_id = response.header.member_id
        name = next((m.name for m in members.members if member_id == m.ID), "")
        status = MemberStatus(
            endpoint=endpoint,
            member_id=member_id,
            name=name,
            leader_id=response.leader,
            cluster_id=response.header.cluster_id,
            version=response.version,
            db_size=response.dbSize,
        )
        return client, status

    def healthy_members(self) -> list[MemberStatus]:
        """Members that answered, followers first so the leader is not loaded when avoidable."""
        found: list[MemberStatus] = []
        problems: list[str] = []
        for endpoint in self._config.endpoints:
            try:
                client, status = self._status(endpoint)
            except grpc.RpcError as exc:
                problems.append(f"{endpoint}: {_grpc_detail(exc)} ({_advice(exc)})")
                log.warning("etcd member %s is not usable: %s", endpoint, _grpc_detail(exc))
                continue
            client.close()
            if any(s.member_id == status.member_id for s in found):
                continue
            found.append(status)
        if not found:
            raise EtcdError("no etcd member answered: " + "; ".join(problems))
        if len({s.cluster_id for s in found}) > 1:
            ids = ", ".join(f"{s.endpoint}={s.cluster_id:x}" for s in found)
            raise EtcdError(
                f"etcd.endpoints belong to different clusters ({ids}); list one cluster"
            )
        found.sort(key=lambda s: s.is_leader)
        return found

    def open_snapshot(
        self, member: MemberStatus, cancel: threading.Event | None = None
    ) -> SnapshotStream:
        """The snapshot stream of `member`; setting `cancel` ends it within a second, even
        while the member sends nothing."""
        try:
            client = self._client(member.endpoint)
            call = client.maintenancestub.Snapshot(
                etcdrpc.SnapshotRequest(),
                credentials=client.call_credentials,
                metadata=client.metadata,
            )
        except grpc.RpcError as exc:
            raise EtcdError(
                f"snapshot from {member.describe()} failed: {_grpc_detail(exc)} ({_advice(exc)})"
            ) from exc
        return SnapshotStream(member, client, call, self._config.stall_timeout, cancel)


class SnapshotStream:
    """The database bytes of one snapshot as they arrive, then the SHA-256 etcd appended.

    Iterating yields the data chunks. Afterwards `digest` holds the 32-byte SHA-256 etcd sent after
    the data (the trailer of a saved snapshot file).
    """

    def __init__(
        self,
        member: MemberStatus,
        client: Any,
        call: Any,
        stall_timeout: float,
        cancel: threading.Event | None = None,
    ) -> None:
        self.member = member
        self._cancel = cancel
        self.digest: bytes | None = None
        self.received = 0
        # etcd's own count once the stream starts; the Status call's dbSize can lag the database
        # by a backend commit, so it is only a first guess
        self.expected_total = member.db_size
        self._client = client
        self._call = call
        self._stall_timeout = stall_timeout
        self._last_progress = time.monotonic()
        self._stalled = False
        self._cancelled = False
        self._done = threading.Event()

    def _watch(self) -> None:
        started = time.monotonic()
        interval = PROGRESS_INTERVAL
        report_at = started + interval
        while not self._done.wait(min(1.0, self._stall_timeout / 4, interval)):
            if self._cancel is not None and self._cancel.is_set():
                self.cancel()
                return
            now = time.monotonic()
            if now - self._last_progress > self._stall_timeout:
                self._stalled = True
                self._call.cancel()
                return
            if now >= report_at:
                report_at = now + interval
                progress = describe_progress(self.received, now - started, self.expected_total)
                log.info("snapshot from %s: %s", self.member.describe(), progress)

    def cancel(self) -> None:
        """Abort the stream from another thread (shutdown)."""
        self._cancelled = True
        self._call.cancel()

    def __iter__(self) -> Iterator[bytes]:
        watchdog = threading.Thread(target=self._watch, name="snapshot-watchdog", daemon=True)
        watchdog.start()
        data_done = False
        try:
            for response in self._call:
                self._last_progress = time.monotonic()
                blob = response.blob
                if data_done:
                    # etcd follows the data with one message holding the SHA-256 of it
                    self.digest = blob
                    continue
                if response.remaining_bytes == 0:
                    data_done = True
                if blob:
                    self.received += len(blob)
                    self.expected_total = self.received + response.remaining_bytes
                    yield blob
        except grpc.RpcError as exc:
            raise self._failure(exc) from exc
        finally:
            self._done.set()
            self._call.cancel()
            self._client.close()
        if self.digest is None or len(self.digest) != SHA256_SIZE:
            raise EtcdError(
                f"snapshot stream from {self.member.describe()} ended after {self.received} bytes "
                "without etcd's SHA-256 trailer; the transfer was cut short"
            )

    def _failure(self, exc: grpc.RpcError) -> EtcdError:
        where = f"snapshot stream from {self.member.describe()}"
        if self._stalled:
            return EtcdError(
                f"{where} stalled: no data for {self._stall_timeout:g} s after "
                f"{self.received} bytes (raise etcd.stall_timeout if the member is just slow)"
            )
        if self._cancelled:
            return EtcdError(f"{where} was cancelled after {self.received} bytes")
        return EtcdError(
            f"{where} failed after {self.received} bytes: {_grpc_detail(exc)} ({_advice(exc)})"
        )


def identify_cluster(config: EtcdConfig) -> Cluster:
    """This cluster as its backups are named: `cluster_name` (else the cluster ID), with the
    cluster ID etcd reports. Without an answer from etcd, `cluster_name` alone."""
    try:
        member = EtcdSource(config).healthy_members()[0]
    except EtcdError as exc:
        if config.cluster_name:
            log.warning(
                "etcd does not answer; taking backups named %s as this cluster's: %s",
                config.cluster_name,
                exc,
            )
            return Cluster(config.cluster_name)
        raise EtcdError(
            f"cannot tell which backups are this cluster's: {exc}; set etcd.cluster_name"
        ) from exc
    cluster_id = f"{member.cluster_id:016x}"
    return Cluster(config.cluster_name or cluster_id, cluster_id)
