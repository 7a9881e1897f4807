"""An opt-in probe of the event loop's responsiveness (`HERD_LOOP_PROBE=1`), read at `GET /api/herd/loop`.

A task sleeps 10 ms at a time and records how late each wake-up is. Lateness is time the loop spent on something
else without yielding: a blocking call in a handler, a long synchronous parse, a large write. Every stream on the
server waits that long, so the worst lateness is the figure that matters (bench/loop_lag.py reads it). Each read
returns the worst and mean lag since the previous read and starts a new window.

Not an Ollama endpoint and off by default: it costs one wake-up per 10 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

ENV = "HERD_LOOP_PROBE"
PATH = "/api/herd/loop"
INTERVAL_S = 0.010


class LoopProbe:
    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._reset(time.monotonic())

    def _reset(self, now: float) -> None:
        self.worst_s = 0.0
        self.total_s = 0.0
        self.samples = 0
        self.since = now

    def start(self) -> None:
        """Start the probe task on the running loop (once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="herd-loop-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        # time.monotonic, not loop.time(): the figure is wall-clock lateness, whatever clock the loop uses.
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, time.monotonic() - before - self.interval_s)
            self.samples += 1
            self.total_s += lag
            if lag > self.worst_s:
                self.worst_s = lag

    def read(self) -> dict[str, object]:
        now = time.monotonic()
        doc: dict[str, object] = {
            "running": self._task is not None and not self._task.done(),
            "interval_ms": self.interval_s * 1000,
            "window_s": round(now - self.since, 3),
            "samples": self.samples,
            "worst_lag_ms": round(self.worst_s * 1000, 3),
            "mean_lag_ms": round(self.total_s / self.samples * 1000, 3) if self.samples else 0.0,
        }
        self._reset(now)
        return doc


router = APIRouter()


@router.get(PATH, include_in_schema=False)
async def loop_lag(request: Request) -> Response:
    probe: LoopProbe = request.app.state.loop_probe
    probe.start()  # in case the app was served without its lifespan (a test client)
    return JSONResponse(probe.read())


def enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def install(app: FastAPI, force: bool = False) -> None:
    """Add the probe to an app when HERD_LOOP_PROBE is set (or `force`): the route, and a start and stop around the
    app's own lifespan, so it measures the whole life of the server."""
    if not (force or enabled()):
        return
    probe = LoopProbe()
    app.state.loop_probe = probe
    app.include_router(router)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        probe.start()
        try:
            async with inner(a) as state:
                yield state
        finally:
            await probe.stop()

    app.router.lifespan_context = lifespan


__all__ = ["ENV", "PATH", "LoopProbe", "install"]
