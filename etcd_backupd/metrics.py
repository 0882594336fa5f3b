"""The Prometheus metric contract: names that dashboards and alerts rely on, updated from plain
`CycleResult`s and from the destinations' newest manifests, and exported for one-shot jobs
(pushgateway, node_exporter textfile).

Every metric lives in the registry this object is given: a fresh one per test and per run.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.exposition import (
    ThreadingWSGIServer,
    delete_from_gateway,
    push_to_gateway,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from . import __version__
from .config import MetricsConfig
from .cycle import CycleResult
from .errors import BackupError
from .manifest import Manifest
from .retention import is_future

STAGES = ("snapshot", "verify", "ship", "prune")
RESULTS = ("success", "failure", "skipped")
# A 1 GiB cycle takes seconds to minutes; larger clusters and slow links tens of minutes.
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
JOB = "etcd-backupd"
# the cluster_id of a host that has reached neither etcd nor a backup of its cluster yet
UNKNOWN_CLUSTER = "unknown"

# the *_created series double every counter and histogram without telling an alert anything
disable_created_metrics()  # type: ignore[no-untyped-call]


class _WithCluster(Collector):
    """A registry's series, each labelled with the cluster this host backs up when exported.

    Every exported series carries its cluster, so alerts aggregate by cluster_id without joining
    on an info series: a join on (instance, job) breaks as soon as two push groups share an
    instance, which is every pushgateway that receives more than one cluster."""

    def __init__(self, registry: CollectorRegistry, cluster_id: Callable[[], str]) -> None:
        self._registry = registry
        self._cluster_id = cluster_id

    def collect(self) -> Iterator[Metric]:
        cluster_id = self._cluster_id()
        for family in self._registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                sample._replace(labels={"cluster_id": cluster_id, **sample.labels})
                for sample in family.samples
            ]
            yield labelled


class BackupMetrics:
    """The metrics live in `registry`; `exposition` is what leaves the process (/metrics, the
    pushgateway, the textfile): the same series, each labelled with the cluster_id."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self._clock = clock
        self._last_success: float | None = None
        self.cluster_id = UNKNOWN_CLUSTER
        self.exposition = CollectorRegistry()
        self.exposition.register(_WithCluster(registry, lambda: self.cluster_id))
        self.last_success = Gauge(
            "etcd_backup_last_success_timestamp_seconds",
            "When the newest verified backup was taken (Unix time).",
            registry=registry,
        )
        age = Gauge(
            "etcd_backup_last_success_age_seconds",
            "Seconds since the newest verified backup was taken, computed at scrape time (frozen "
            "once pushed or written to a file: alerts use the timestamp).",
            registry=registry,
        )
        age.set_function(self._age)
        self.last_size = Gauge(
            "etcd_backup_last_size_bytes", "Size of the newest verified backup.", registry=registry
        )
        self.last_revision = Gauge(
            "etcd_backup_last_revision", "etcd revision of the newest backup.", registry=registry
        )
        self.last_keys = Gauge(
            "etcd_backup_last_keys",
            "TOTAL KEYS of the newest backup as the etcdutl of its etcd line prints it: entries "
            "of every bucket before 3.6, live keys from 3.6.",
            registry=registry,
        )
        self.last_live_keys = Gauge(
            "etcd_backup_last_live_keys",
            "Keys a restore of the newest backup would hold; unlike its size, a defragmentation "
            "leaves it unchanged.",
            registry=registry,
        )
        self.schedule_interval = Gauge(
            "etcd_backup_schedule_interval_seconds",
            "The longest wait between two fire times of the schedule (any destination).",
            registry=registry,
        )
        self.destination_schedule_interval = Gauge(
            "etcd_backup_destination_schedule_interval_seconds",
            "The longest wait between two fire times of a destination's schedule.",
            ["destination"],
            registry=registry,
        )
        self.duration = Histogram(
            "etcd_backup_duration_seconds",
            "Time spent per stage of a backup cycle.",
            ["stage"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.runs = Counter(
            "etcd_backup_runs", "Backup cycles by result.", ["result"], registry=registry
        )
        self.failures = Counter(
            "etcd_backup_failures", "Failed backup cycles by stage.", ["stage"], registry=registry
        )
        self.destination_last_success = Gauge(
            "etcd_backup_destination_last_success_timestamp_seconds",
            "When the newest backup stored in a destination was taken (Unix time).",
            ["destination"],
            registry=registry,
        )
        self.destination_snapshots = Gauge(
            "etcd_backup_destination_snapshots",
            "Backups a destination holds after pruning.",
            ["destination"],
            registry=registry,
        )
        self.destination_bytes = Gauge(
            "etcd_backup_destination_bytes",
            "Bytes of this cluster's backups a destination holds (current objects as stored; "
            "old versions a versioned bucket keeps are not counted).",
            ["destination"],
            registry=registry,
        )
        self.future_snapshots = Gauge(
            "etcd_backup_future_snapshots",
            "This cluster's backups in a destination dated more than 5 min in the future (a "
            "skewed clock or a planted file); they never count as the newest.",
            ["destination"],
            registry=registry,
        )
        self.pruned = Counter(
            "etcd_backup_pruned",
            "Backups deleted by the retention policy.",
            ["destination"],
            registry=registry,
        )
        self.next_run = Gauge(
            "etcd_backup_next_run_timestamp_seconds",
            "When the next backup is scheduled (Unix time).",
            registry=registry,
        )
        self.drill_last_success = Gauge(
            "etcd_backup_drill_last_success_timestamp_seconds",
            "When a restore drill of a destination's newest backup last passed (Unix time).",
            ["destination"],
            registry=registry,
        )
        self.drill_duration = Gauge(
            "etcd_backup_drill_duration_seconds",
            "Duration of the last restore drill of a destination.",
            ["destination"],
            registry=registry,
        )
        self.drill_failures = Counter(
            "etcd_backup_drill_failures",
            "Restore drills that failed.",
            ["destination"],
            registry=registry,
        )
        self.role = Gauge(
            "etcd_backup_role",
            "1 for this host's role at the last fire time: active took the snapshot, standby "
            "left it to another host.",
            ["role"],
            registry=registry,
        )
        self.info = Gauge(
            "etcd_backup_info",
            "Tool version; present as long as this host reports.",
            ["version"],
            registry=registry,
        )
        self.info.labels(__version__).set(1)
        for stage in STAGES:
            self.failures.labels(stage)
        for result in RESULTS:
            self.runs.labels(result)

    def _age(self) -> float:
        # no backup known: report the age as infinite so a stale alert fires rather than hides
        if self._last_success is None:
            return float("inf")
        return max(0.0, self._clock() - self._last_success)

    def _newest(self, manifest: Manifest) -> None:
        created = manifest.created.timestamp()
        if self._last_success is not None and created < self._last_success:
            return
        self._last_success = created
        self.last_success.set(created)
        self.last_size.set(manifest.size)
        self.last_revision.set(manifest.revision)
        self.last_keys.set(manifest.total_keys)
        self.last_live_keys.set(manifest.live_keys)
        self.set_cluster(manifest.cluster_id)

    def set_cluster(self, cluster_id: str) -> None:
        """The cluster this host backs up; alerts aggregate hosts by it."""
        self.cluster_id = cluster_id

    def set_schedule(self, interval: float, destinations: Mapping[str, float]) -> None:
        """The longest waits between fire times, which stale alerts scale with."""
        self.schedule_interval.set(interval)
        self.destination_schedule_interval.clear()
        for destination, seconds in destinations.items():
            self.destination_schedule_interval.labels(destination).set(seconds)

    def load(self, held: Mapping[str, Sequence[Manifest]]) -> None:
        """Take `last_*` and per-destination figures from this cluster's backups in the
        destinations, so a restart never reads as "no backup ever" and never hides a stale one.
        A backup dated in the future is counted apart and never taken as the newest: it would
        pin the age at zero."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        for destination, manifests in held.items():
            self.destination_snapshots.labels(destination).set(len(manifests))
            self.destination_bytes.labels(destination).set(sum(m.stored_size for m in manifests))
            believable = [m for m in manifests if not is_future(m.created, now)]
            self.future_snapshots.labels(destination).set(len(manifests) - len(believable))
            if believable:
                newest = max(believable, key=lambda m: m.created)
                self.destination_last_success.labels(destination).set(newest.created.timestamp())
                self._newest(newest)
            else:
                # like the overall timestamp without a backup: an alert sees "never", not nothing
                self.destination_last_success.labels(destination).set(0)

    def observe(self, result: CycleResult) -> None:
        for stage, seconds in result.stage_seconds.items():
            self.duration.labels(stage).observe(seconds)
        if result.ok:
            self.runs.labels("success").inc()
        else:
            self.runs.labels("failure").inc()
            self.failures.labels(result.failed_stage or "snapshot").inc()
        for destination in result.destinations:
            if destination.manifest is not None:
                self.destination_last_success.labels(destination.name).set(
                    destination.manifest.created.timestamp()
                )
            if destination.pruned is not None:
                self.pruned.labels(destination.name).inc(len(destination.pruned.deleted))
            if destination.prune_error is not None:
                self.failures.labels("prune").inc()
        if result.manifest is not None:
            # a snapshot was taken even when no destination stored it: the cluster is known
            self.set_cluster(result.manifest.cluster_id)
        if result.ok and result.manifest is not None:
            self._newest(result.manifest)

    def skipped(self) -> None:
        self.runs.labels("skipped").inc()

    def observe_drill(self, destination: str, ok: bool, seconds: float) -> None:
        self.drill_duration.labels(destination).set(seconds)
        if ok:
            self.drill_last_success.labels(destination).set(self._clock())
        else:
            self.drill_failures.labels(destination).inc()

    def set_role(self, role: str) -> None:
        for known in ("active", "standby"):
            self.role.labels(known).set(1 if known == role else 0)


def push(metrics: BackupMetrics, gateway: str, host: str) -> None:
    """Push to a Prometheus pushgateway into a group of its own per cluster and host: hosts of one
    cluster never overwrite each other (a standby's zeros never replace the active host's
    counters), and clusters never share a group."""
    try:
        push_to_gateway(
            gateway,
            job=JOB,
            registry=metrics.exposition,
            grouping_key={"cluster_id": metrics.cluster_id, "instance": host},
        )
        if metrics.cluster_id != UNKNOWN_CLUSTER:
            # what this host pushed before it knew its cluster (a day-one mistake, now fixed)
            # would page as a host without backups for ever
            delete_from_gateway(
                gateway, job=JOB, grouping_key={"cluster_id": UNKNOWN_CLUSTER, "instance": host}
            )
    except OSError as exc:
        raise BackupError(f"cannot push metrics to {gateway}: {exc}") from exc


# node_exporter runs as its own user; the metrics hold no secret
TEXTFILE_MODE = 0o644


def write_textfile(metrics: BackupMetrics, path: Path) -> None:
    """Write for node_exporter's textfile collector: whole (written beside it, then renamed into
    place) and readable by node_exporter whatever the umask (the systemd units set 0077)."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, TEXTFILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), TEXTFILE_MODE)
            handle.write(generate_latest(metrics.exposition))
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise BackupError(f"cannot write metrics to {path}: {exc.strerror}") from exc


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the backup log."""


def _server_for(host: str, port: int) -> tuple[type[ThreadingWSGIServer], str]:
    """A server of the address family `host` resolves to: the standard one is IPv4 only, so
    "[::]:9479" would not bind at all. IPv4 stays first for a name that has both, and an empty
    host keeps meaning every IPv4 address."""
    if not host:
        return ThreadingWSGIServer, host
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = next((a for a in found if a[0] == socket.AF_INET), found[0])

    class Server(ThreadingWSGIServer):
        address_family = family

    return Server, str(sockaddr[0])


class MetricsServer:
    """/metrics, /healthz (process and scheduler alive) and /readyz (config loaded, scheduled)."""

    def __init__(
        self,
        metrics: BackupMetrics,
        config: MetricsConfig,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        metrics_app = make_wsgi_app(metrics.exposition)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/metrics":
                body: Iterable[bytes] = metrics_app(environ, start_response)
                return body
            checks = {"/healthz": healthy, "/readyz": ready}
            if path in checks:
                ok = checks[path]()
                start_response(
                    "200 OK" if ok else "503 Service Unavailable",
                    [("Content-Type", "text/plain")],
                )
                return [b"ok\n" if ok else b"not ok\n"]
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"try /metrics, /healthz or /readyz\n"]

        host, _, port = config.listen.rpartition(":")
        try:
            server_class, address = _server_for(host.strip("[]"), int(port))
            self._server = make_server(
                address, int(port), app, server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise BackupError(
                f"metrics.listen: cannot listen on {config.listen}: {exc.strerror}"
            ) from exc
        if config.cert is not None and config.key is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context.load_cert_chain(str(config.cert), str(config.key))
                if config.client_ca is not None:
                    context.verify_mode = ssl.CERT_REQUIRED
                    context.load_verify_locations(str(config.client_ca))
            except (OSError, ssl.SSLError) as exc:
                self._server.server_close()
                raise BackupError(f"metrics: cannot load TLS files: {exc}") from exc
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
