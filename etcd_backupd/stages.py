"""Push stages: the stream between a snapshot and its stored bytes, as a chain of transforms.

A stage takes bytes with `write`, hands what it makes of them to the next stage or to the sink
at the end (a file, an upload's part buffer), and on `close` hands over its tail. Writing a
snapshot is one order of stages, compress then encrypt (formats.StoredFormat.layers); reading one
back is the reverse. A destination holds a Pipeline and never knows which stages are in it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Protocol


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class Stage(Protocol):
    def write(self, data: bytes, /) -> None:
        """Transform `data`, handing any output downstream before returning."""

    def close(self) -> None:
        """Hand the rest of the output downstream; the stage takes no more writes."""

    def abort(self) -> None:
        """Drop everything, stop any worker; never raises. For a failed or cancelled stream."""


StageFactory = Callable[[Sink], Stage]


class _Tally:
    """The end of every pipeline: counts and hashes what reaches the sink."""

    def __init__(self, sink: Sink, hashed: bool) -> None:
        self._sink = sink
        self._digest = hashlib.sha256() if hashed else None
        self.size = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._digest is not None:
            self._digest.update(data)
        self.size += len(data)
        self._sink.write(data)

    def hexdigest(self) -> str:
        if self._digest is None:
            raise ValueError("a pipeline made with hashed=False keeps no digest")
        return self._digest.hexdigest()


class Pipeline:
    """Stages made by `factories`, in the order given, in front of `sink`. `stored_size` and
    `stored_sha256` (unless made with hashed=False) describe what reached the sink (the stored
    object), once closed."""

    def __init__(
        self, factories: Sequence[StageFactory], sink: Sink, *, hashed: bool = True
    ) -> None:
        self._tally = _Tally(sink, hashed)
        self._stages: list[Stage] = []
        downstream: Sink = self._tally
        for factory in reversed(factories):
            stage = factory(downstream)
            self._stages.insert(0, stage)
            downstream = stage
        self._head = downstream
        self._done = False

    def write(self, data: bytes) -> None:
        """Push `data` through; a stage that fails aborts them all, so no worker is left."""
        if self._done:
            raise ValueError("write to a closed pipeline")
        try:
            self._head.write(data)
        except BaseException:
            self.abort()
            raise

    def close(self) -> None:
        """Flush every stage in order, each tail passing through the stages after it. A stage
        that fails aborts the rest."""
        self._done = True
        try:
            for stage in self._stages:
                stage.close()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self._done = True
        for stage in self._stages:
            stage.abort()

    @property
    def stored_size(self) -> int:
        return self._tally.size

    @property
    def stored_sha256(self) -> str:
        return self._tally.hexdigest()
