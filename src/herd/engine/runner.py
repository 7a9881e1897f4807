"""Server-side handle of one runner process: start it, send it work, route its events to waiting requests.

A reader thread blocks on the pipe and hands each batch of events to the event loop. If the process dies, every
request in flight gets a RunnerFailed at once and the runner reports itself dead, so the scheduler replaces it.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import os
import threading
from collections.abc import AsyncIterator
from typing import Protocol

from herd.engine.protocol import (
    CancelCmd,
    DoneEvent,
    EmbedCmd,
    EmbedEvent,
    GenerateCmd,
    LoadSpec,
    Ready,
    SamplingParams,
    ShutdownCmd,
    StatusCmd,
    StatusEvent,
    TextEvent,
)
from herd.errors import RUNNER_STOPPED, RunnerFailed, ShuttingDown

_ids = itertools.count(1)


class Runner(Protocol):
    """What the scheduler and the chat service need from a loaded model; the tests use a fake."""

    spec: LoadSpec
    memory_bytes: int

    @property
    def alive(self) -> bool: ...

    async def start(self, timeout: float) -> None: ...

    def generate(
        self, tokens: tuple[int, ...], sampling: SamplingParams, logprobs: bool, top_logprobs: int, grammar: str | None
    ) -> AsyncIterator[TextEvent | DoneEvent]: ...

    async def embed(self, inputs: tuple[tuple[int, ...], ...]) -> EmbedEvent: ...

    async def stop(self) -> None: ...


class ProcessRunner:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.memory_bytes = 0
        self.pid: int | None = None
        self._proc: mp.process.BaseProcess | None = None
        self._conn: mp.connection.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[int, asyncio.Queue[object]] = {}
        self._status: asyncio.Future[StatusEvent] | None = None
        self._dead = False
        self._send_lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return not self._dead and self._proc is not None and self._proc.is_alive()

    async def start(self, timeout: float) -> None:
        from herd.engine.worker import runner_main

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        self._loop = asyncio.get_running_loop()
        self._proc = ctx.Process(target=runner_main, args=(child, self.spec), daemon=True, name="herd-runner")
        self._proc.start()
        child.close()
        self._conn = parent
        self.pid = self._proc.pid
        try:
            ready = await asyncio.wait_for(asyncio.to_thread(self._recv_ready), timeout if timeout > 0 else None)
        except (TimeoutError, EOFError, OSError) as exc:
            self._kill()
            detail = "timed out loading model" if isinstance(exc, TimeoutError) else "exited during load"
            raise RunnerFailed(f"{RUNNER_STOPPED}: {detail}") from None
        if not ready.ok:
            self._kill()
            raise RunnerFailed(f"{RUNNER_STOPPED}: {ready.error}")
        self.memory_bytes = ready.memory_bytes
        # The event loop reads the pipe itself: no reader thread, so no thread hand-off or GIL ping-pong per token.
        self._loop.add_reader(parent.fileno(), self._on_readable)
        # uvloop (uvicorn's loop) switches the fd to non-blocking in add_reader. Connection.recv must then read a
        # message larger than the pipe buffer (64 KiB: an embedding batch) in one go, or it fails half-way with
        # BlockingIOError, which would look like a dead runner. Readiness comes from the loop either way; a
        # blocking recv only waits for the rest of a message the worker is already writing.
        os.set_blocking(parent.fileno(), True)

    def _recv_ready(self) -> Ready:
        assert self._conn is not None
        msg = self._conn.recv()
        if not isinstance(msg, Ready):
            return Ready(False, error=f"unexpected message {msg!r}")
        return msg

    def _on_readable(self) -> None:
        conn = self._conn
        assert conn is not None
        # One message per wake-up: the fd is level-triggered, so more data wakes us again, and this avoids
        # Connection.poll(), which builds a new selector on every call (measurable at one call per token).
        try:
            self._dispatch(conn.recv())
        except (EOFError, OSError):
            self._stop_reading()
            self._on_death()

    def _stop_reading(self) -> None:
        if self._loop is not None and self._conn is not None:
            try:
                self._loop.remove_reader(self._conn.fileno())
            except (ValueError, OSError):
                pass

    def _dispatch(self, events: list[object]) -> None:
        for ev in events:
            if isinstance(ev, StatusEvent):
                if self._status is not None and not self._status.done():
                    self._status.set_result(ev)
                continue
            q = self._queues.get(ev.req_id)  # type: ignore[attr-defined]
            if q is not None:
                q.put_nowait(ev)

    def _on_death(self) -> None:
        if self._dead and not self._queues:
            return
        self._dead = True
        code = self._proc.exitcode if self._proc is not None else None
        detail = f"exit status {code}" if code is not None else "connection lost"
        err = RunnerFailed(f"{RUNNER_STOPPED}: {detail}")
        for q in self._queues.values():
            q.put_nowait(err)
        if self._status is not None and not self._status.done():
            self._status.set_exception(err)

    def _send(self, msg: object) -> None:
        if self._dead or self._conn is None:
            raise RunnerFailed(RUNNER_STOPPED)
        try:
            with self._send_lock:
                self._conn.send(msg)
        except (OSError, BrokenPipeError):
            self._dead = True
            raise RunnerFailed(RUNNER_STOPPED) from None

    async def generate(
        self, tokens: tuple[int, ...], sampling: SamplingParams, logprobs: bool, top_logprobs: int, grammar: str | None
    ) -> AsyncIterator[TextEvent | DoneEvent]:
        req_id = next(_ids)
        q: asyncio.Queue[object] = asyncio.Queue()
        self._queues[req_id] = q
        finished = False
        try:
            self._send(GenerateCmd(req_id, tokens, sampling, logprobs, top_logprobs, grammar))
            while True:
                ev = await q.get()
                if isinstance(ev, Exception):
                    finished = True
                    raise ev
                yield ev  # type: ignore[misc]
                if isinstance(ev, DoneEvent):
                    finished = True
                    return
        finally:
            self._queues.pop(req_id, None)
            if not finished and not self._dead:
                # The consumer went away (client disconnect): free the slot at the next step.
                try:
                    self._send(CancelCmd(req_id))
                except RunnerFailed:
                    pass

    async def embed(self, inputs: tuple[tuple[int, ...], ...]) -> EmbedEvent:
        req_id = next(_ids)
        q: asyncio.Queue[object] = asyncio.Queue()
        self._queues[req_id] = q
        try:
            self._send(EmbedCmd(req_id, inputs))
            ev = await q.get()
            if isinstance(ev, Exception):
                raise ev
            assert isinstance(ev, EmbedEvent)
            return ev
        finally:
            self._queues.pop(req_id, None)

    async def status(self) -> StatusEvent:
        assert self._loop is not None
        self._status = self._loop.create_future()
        self._send(StatusCmd())
        return await asyncio.wait_for(self._status, 10)

    def _kill(self) -> None:
        self._dead = True
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)

    async def stop(self) -> None:
        """Ending the process returns all of the model's memory."""
        if self._proc is None:
            return
        if self.alive:
            # The scheduler stops a live runner with requests in flight only at server shutdown (after the grace
            # period): those requests end with that reason, not with "runner has unexpectedly stopped".
            for q in self._queues.values():
                q.put_nowait(ShuttingDown("server is shutting down"))
            try:
                self._send(ShutdownCmd())
            except RunnerFailed:
                pass
            await asyncio.to_thread(self._proc.join, 2)
        self._stop_reading()
        self._kill()
        if self._queues:
            # A runner that died before its end of file was read: with the reader gone, nothing else would wake
            # the requests still waiting on it.
            self._on_death()
        if self._conn is not None:
            self._conn.close()

    def rss_bytes(self) -> int:
        if self.pid is None:
            return 0
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return 0
