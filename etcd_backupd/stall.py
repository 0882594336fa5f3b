"""How long one call into a destination may take. A network store that does not answer within
its stall_timeout is given up for the cycle; the call itself ends (or hangs) on a daemon thread of
its own, bounded by the store's request timeouts, never holding up the cycle."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from .config import Config
from .config_destinations import DestinationConfig, S3Destination
from .errors import DestinationError

_T = TypeVar("_T")


class Unanswered(DestinationError):
    """A destination did not answer within its bound; the call goes on in the background."""


def stall_bound(config: Config, name: str) -> float | None:
    """How long a single call into a destination may take: stall_timeout for a network store."""
    settings = next((d for d in config.destination if d.name == name), None)
    return settings.stall_timeout if isinstance(settings, S3Destination) else None


def within_stall_timeout(settings: DestinationConfig, action: str, call: Callable[[], _T]) -> _T:
    """Run `call` on a destination, giving it up (DestinationError) after its stall_timeout
    when it is a network store, whatever its requests' own timeouts and retries add up to."""
    seconds = settings.stall_timeout if isinstance(settings, S3Destination) else None
    return within(seconds, settings.name, action, call)


def within(seconds: float | None, name: str, action: str, call: Callable[[], _T]) -> _T:
    """Run `call`, giving up after `seconds`: a hung store then holds a daemon thread until its
    own timeouts end the request, never the cycle."""
    if seconds is None:
        return call()
    outcome: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the waiting side
            failure.append(exc)

    worker = threading.Thread(target=run, name=f"{name}-{action}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise Unanswered(
            f"destination {name!r}: {action} got no answer within {seconds:g} s "
            "(stall_timeout); giving this destination up for this cycle"
        )
    if failure:
        raise failure[0]
    return outcome[0]
