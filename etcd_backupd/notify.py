"""Notifications without Prometheus, an observer of cycle and drill results: ping URLs in the
healthchecks.io protocol and JSON webhooks.

Every request goes out on one background thread, in order, so a slow or dead receiver never
delays a backup; each has a timeout and a bounded number of retries, and a notification that
cannot be delivered is logged and never changes a backup's result."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import __version__
from .clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from .config import NotifyConfig
    from .cycle import CycleResult
    from .drill import DrillResult

log = logging.getLogger(__name__)

# healthchecks.io keeps the first 100 kB of a ping's body; an error line is far shorter
_MAX_BODY = 10_000
_USER_AGENT = f"etcd-backupd/{__version__}"


def _where(url: str) -> str:
    """The URL as logs may show it: a ping URL's path is its secret."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class Notifications:
    def __init__(
        self,
        targets: Sequence[NotifyConfig],
        *,
        host: str | None = None,
        cluster: str | None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.targets = list(targets)
        self._clock = clock
        self.host = host or socket.gethostname()
        self.cluster = cluster
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify")
        self._closed = threading.Event()

    def reconfigure(self, targets: Sequence[NotifyConfig], cluster: str | None) -> None:
        """A reloaded config's targets; what is already queued still goes where it was sent."""
        self.targets = list(targets)
        self.cluster = cluster

    def cycle_started(self) -> None:
        for target in self.targets:
            if target.type == "ping":
                self._send(target, target.url.rstrip("/") + "/start", b"", "text/plain")

    def cycle_finished(self, result: CycleResult) -> None:
        event = "success" if result.ok else "failure"
        if result.ok and result.manifest is not None:
            summary = (
                f"{result.manifest.snapshot}: revision {result.manifest.revision}, "
                f"{result.manifest.size} bytes, {result.duration:.1f} s"
            )
        else:
            summary = f"backup failed at {result.failed_stage}: {result.error}"
        for target in self.targets:
            if target.type == "ping":
                url = target.url.rstrip("/") + ("" if result.ok else "/fail")
                self._send(target, url, summary.encode()[:_MAX_BODY], "text/plain")
            elif event in target.on:
                self._post_json(target, self._cycle_payload(event, result, summary))

    def drill_finished(self, result: DrillResult) -> None:
        if result.ok:
            return
        payload = {
            **self._common("drill_failure"),
            "destination": result.destination,
            "snapshot": result.snapshot or None,
            "error": result.error,
            "summary": f"drill of {result.snapshot or '-'} from {result.destination} failed: "
            f"{result.error}",
        }
        for target in self.targets:
            if target.type == "webhook" and "drill_failure" in target.on:
                self._post_json(target, payload)

    def close(self) -> None:
        """Wait for what is queued: every request is bounded by its timeout and retries."""
        self._closed.set()
        self._pool.shutdown(wait=True)

    def _common(self, event: str) -> dict[str, Any]:
        return {
            "event": event,
            "time": self._clock.now().isoformat(),
            "host": self.host,
            "cluster": self.cluster,
            "tool_version": __version__,
        }

    def _cycle_payload(self, event: str, result: CycleResult, summary: str) -> dict[str, Any]:
        manifest = result.manifest
        return {
            **self._common(event),
            "cluster": manifest.cluster_name if manifest else self.cluster,
            "summary": summary,
            "snapshot": manifest.snapshot if manifest else None,
            "revision": manifest.revision if manifest else None,
            "size": manifest.size if manifest else None,
            "error": result.error,
            "failed_stage": result.failed_stage,
            "duration_seconds": round(result.duration, 3),
            "destinations": [
                {"name": d.name, "ok": d.ok, "error": d.error} for d in result.destinations
            ],
        }

    def _post_json(self, target: NotifyConfig, payload: dict[str, Any]) -> None:
        self._send(target, target.url, json.dumps(payload).encode(), "application/json")

    def _send(self, target: NotifyConfig, url: str, body: bytes, content_type: str) -> None:
        if self._closed.is_set():
            return
        self._pool.submit(self._deliver, target, url, body, content_type)

    def _deliver(self, target: NotifyConfig, url: str, body: bytes, content_type: str) -> None:
        attempts = 1 + target.retries
        for attempt in range(1, attempts + 1):
            request = urllib.request.Request(
                url,
                data=body,
                method="POST",
                headers={"Content-Type": content_type, "User-Agent": _USER_AGENT},
            )
            try:
                with urllib.request.urlopen(request, timeout=target.timeout) as response:
                    response.read(_MAX_BODY)
                log.debug("notified %s", _where(url))
                return
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
                retry = exc.code >= 500 or exc.code == 429
            except (OSError, ValueError) as exc:
                # URLError, a timeout, a refused or reset connection
                problem = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
                retry = True
            if not retry or attempt == attempts:
                log.warning(
                    "notification to %s failed after %d attempt(s): %s; the backup is not affected",
                    _where(url),
                    attempt,
                    problem,
                )
                return
            pause = target.retry_backoff * 2 ** (attempt - 1)
            log.info(
                "notification to %s failed (%s); retry %d of %d in %.1f s",
                _where(url),
                problem,
                attempt,
                attempts - 1,
                pause,
            )
            time.sleep(pause)
