"""Progress of long store operations (create, pull, push) and the bridge that runs them off the event loop.

The operations are plain blocking generators: they hash files, write the store and talk to registries with a
synchronous client, one short step per `yield`. `iterate_in_thread` runs each step in a worker thread so the server's
event loop (and every chat stream on it) never waits for a disk or a network read.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One `{"status": ...}` line of /api/create, /api/pull or /api/push (spec 5.8, 5.12)."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class Cancelled(Exception):
    """Raised inside an operation when its client went away; the async side has already stopped listening."""


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()


_DONE = object()


async def iterate_in_thread(steps: Iterator[T], cancel: threading.Event) -> AsyncIterator[T]:
    """Each `next()` runs in a worker thread. Closing this iterator (the client disconnected, or stream:false got its
    answer) sets `cancel`, which the operation checks between chunks: a pull then stops and keeps its partial file."""
    in_flight = False
    try:
        while True:
            in_flight = True
            item = await asyncio.to_thread(next, steps, _DONE)
            in_flight = False
            if item is _DONE:
                return
            yield item  # type: ignore[misc]
    finally:
        cancel.set()
        # A step still running in its thread cannot be closed; it sees `cancel` and stops by itself. A generator
        # paused at a yield is closed now, so its files are closed at once rather than at garbage collection.
        if not in_flight:
            close = getattr(steps, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):  # cleanup of an abandoned operation must not mask the cause
                    close()
