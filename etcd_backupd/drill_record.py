"""The last drill of each destination, kept in state_dir so that `status` can say how it went
without the daemon's metrics: one small JSON file per destination, replaced atomically."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .drill import DrillResult

log = logging.getLogger(__name__)

_PREFIX = "last-drill-"
_SUFFIX = ".json"
# a record is a few hundred bytes; anything much larger is not ours
_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class DrillRecord:
    destination: str
    snapshot: str
    ok: bool
    finished: datetime
    seconds: float
    error: str | None = None


def _path(state_dir: Path, destination: str) -> Path:
    # destination names are restricted to [A-Za-z0-9_.-] by the config, so this stays in the dir
    return state_dir / f"{_PREFIX}{destination}{_SUFFIX}"


def record_drill(state_dir: Path, record: DrillRecord) -> None:
    """Replace the destination's record; a failure is logged, never raised: a drill's verdict
    does not depend on whether it could be written down."""
    data = {
        "destination": record.destination,
        "snapshot": record.snapshot,
        "ok": record.ok,
        "finished": record.finished.isoformat(),
        "seconds": record.seconds,
        "error": record.error,
    }
    target = _path(state_dir, record.destination)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    created = False
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        created = True
        try:
            os.write(fd, json.dumps(data).encode())
        finally:
            os.close(fd)
        os.replace(partial, target)
    except OSError as exc:
        if created:
            partial.unlink(missing_ok=True)
        log.warning("cannot record the drill of %s in %s: %s", record.destination, state_dir, exc)


def record_result(state_dir: Path, result: DrillResult, finished: datetime) -> None:
    record_drill(
        state_dir,
        DrillRecord(
            result.destination, result.snapshot, result.ok, finished, result.seconds, result.error
        ),
    )


def last_drill(state_dir: Path, destination: str) -> DrillRecord | None:
    """The destination's last recorded drill, or None when none is recorded or the record is
    unreadable (said in a warning)."""
    path = _path(state_dir, destination)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc.strerror)
        return None
    try:
        with os.fdopen(fd, "rb") as handle:
            text = handle.read(_MAX_BYTES + 1)
        data = json.loads(text)
        if len(text) > _MAX_BYTES or data.get("destination") != destination:
            raise ValueError("not a drill record of this destination")
        finished = datetime.fromisoformat(data["finished"])
        if finished.tzinfo is None:
            raise ValueError("'finished' has no time zone")
        error = data.get("error")
        return DrillRecord(
            destination=destination,
            snapshot=str(data["snapshot"]),
            ok=data["ok"] is True,
            finished=finished,
            seconds=float(data["seconds"]),
            error=str(error) if error is not None else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
