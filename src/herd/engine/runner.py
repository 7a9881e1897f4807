"""Server-side handle of one runner process: start it, send it work, route its events to waiting requests.

The event loop reads the pipe itself and hands each batch of events to the requests waiting on it. If the process
dies, every request in flight gets a RunnerFailed at once and the runner reports itself dead, so the scheduler
replaces it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import multiprocessing as mp
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Protocol

from herd.engine import rpc
from herd.engine.protocol import (
    FRAME_HEADER,
    TEXT_FRAME,
    TEXT_HEAD,
    CancelCmd,
    DoneEvent,
    EmbedCmd,
    EmbedEvent,
    GenerateCmd,
    ImageInput,
    LoadSpec,
    Ready,
    RunnerFatal,
    SamplingParams,
    ShutdownCmd,
    StatusCmd,
    StatusEvent,
    TextEvent,
    loads_event,
)
from herd.errors import RUNNER_STOPPED, RunnerFailed, ShuttingDown

_ids = itertools.count(1)
_new_tuple = tuple.__new__  # TextEvent from a plain tuple, without a Python-level call
_unpack_text = TEXT_HEAD.unpack_from
_TEXT_HEAD_SIZE = TEXT_HEAD.size


class _Inbox:
    """Events for one request. asyncio.Queue does the same with several layers of Python per item, and this
    runs once per token."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: collections.deque[object] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: object) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> object:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.popleft()


class Runner(Protocol):
    """What the scheduler and the chat service need from a loaded model; the tests use a fake."""

    spec: LoadSpec
    memory_bytes: int

    @property
    def alive(self) -> bool: ...

    async def start(self, timeout: float) -> None: ...

    def generate(
        self, tokens: tuple[int, ...], sampling: SamplingParams, logprobs: bool, top_logprobs: int, grammar: str | None,
        images: tuple[ImageInput, ...] = (),
    ) -> AsyncIterator[TextEvent | DoneEvent]: ...

    async def embed(self, inputs: tuple[tuple[int, ...], ...]) -> EmbedEvent: ...

    async def stop(self) -> None: ...


class ProcessRunner:
    def __init__(self, spec: LoadSpec, rpc_timeout: float = rpc.DEFAULT_TIMEOUT_S) -> None:
        self.spec = spec
        self.rpc_timeout = rpc_timeout  # HERD_RPC_TIMEOUT: the runner's watchdog on a step through RPC workers
        self.memory_bytes = 0
        self.placement: tuple[tuple[str, str, int], ...] = ()  # (device, where, layers), from the runner's Ready
        self.vram_bytes = 0  # from the runner's Ready
        self._fatal: RunnerFatal | None = None  # the runner's last words, if it ended itself
        self.pid: int | None = None
        self._proc: mp.process.BaseProcess | None = None
        self._conn: mp.connection.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[int, _Inbox] = {}
        self._status: asyncio.Future[StatusEvent] | None = None
        self.last_status: StatusEvent | None = None  # the runner's latest counters, and when they came
        self.last_status_at = 0.0
        self._dead = False
        self._fd = -1
        self._rbuf = bytearray()  # the start of a message that has not fully arrived yet
        self._need = 0  # bytes still missing from it
        self._send_lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return not self._dead and self._proc is not None and self._proc.is_alive()

    @property
    def in_flight(self) -> int:
        """Requests with a command in the runner (generating, prefilling or waiting there for a slot)."""
        return len(self._queues)

    async def start(self, timeout: float) -> None:
        from herd.scheduler.memory import check_fits

        if self.spec.rpc_servers:
            # Before any process starts: a worker that is down, busy or frozen is an error naming it (llama.cpp
            # would abort or hang on it). The runner probes again just before it connects. No local memory check:
            # the layers' memory is the workers', which llama.cpp checks as it allocates there.
            probe_timeout = min(rpc.PROBE_TIMEOUT_S, self.rpc_timeout)
            await asyncio.to_thread(rpc.check_workers, self.spec.rpc_servers, probe_timeout)
        else:
            # Before any process starts: a load that cannot fit in memory is refused with Ollama's text.
            await asyncio.to_thread(check_fits, self.spec)
        try:
            await self._start(timeout)
        except BaseException:
            # Cancelled (server shutdown) or failed: never leave a process loading that nobody holds.
            self._kill()
            raise

    async def _start(self, timeout: float) -> None:
        from herd.engine.worker import runner_main

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        self._loop = asyncio.get_running_loop()
        self._proc = ctx.Process(target=runner_main, args=(child, self.spec, self.rpc_timeout), daemon=True,
                                 name="herd-runner")
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
            kind = rpc.ERROR_KINDS.get(ready.error_kind)
            raise kind(ready.error) if kind is not None else RunnerFailed(f"{RUNNER_STOPPED}: {ready.error}")
        self.memory_bytes = ready.memory_bytes
        self.placement = ready.placement
        self.vram_bytes = ready.vram_bytes
        # The event loop reads the pipe itself: no reader thread, so no thread hand-off or GIL ping-pong per token.
        self._fd = parent.fileno()
        self._loop.add_reader(self._fd, self._on_readable)
        # uvloop (uvicorn's loop) switches the fd to non-blocking in add_reader. The same fd carries commands the
        # other way: a large one (a long prompt) must wait for room in the pipe rather than fail half-written, which
        # would look like a dead runner. Reads are safe blocking too: the loop calls us only when data is there.
        os.set_blocking(parent.fileno(), True)

    def _recv_ready(self) -> Ready:
        assert self._conn is not None
        try:
            msg = loads_event(self._conn.recv_bytes())
        except EOFError:
            raise
        except Exception as exc:  # a frame that is not one of ours: the runner is not to be trusted
            return Ready(False, error=f"bad message from runner: {exc}")
        if isinstance(msg, RunnerFatal):  # an RPC worker failed while the runner connected to it
            return Ready(False, error=msg.error, error_kind=msg.kind)
        if not isinstance(msg, Ready):
            return Ready(False, error=f"unexpected message {msg!r}")
        return msg

    def _on_readable(self) -> None:
        # One read per wake-up, frames undone here (protocol.frame). A small read suits the usual message (tens of
        # bytes); the rest of a large one is read in one go.
        try:
            data = os.read(self._fd, max(self._need, 4096))
        except InterruptedError:
            return
        except OSError:
            data = b""
        if not data:
            self._stop_reading()
            self._on_death()
            return
        if self._rbuf:
            self._rbuf += data
            buf: bytes | bytearray = self._rbuf
        else:
            buf = data
        pos, end = 0, len(buf)
        need = 0
        head = FRAME_HEADER.size
        while end - pos >= head:
            size = FRAME_HEADER.unpack_from(buf, pos)[0]
            if end - pos - head < size:
                need = head + size - (end - pos)
                break
            start = pos + head
            pos = start + size
            if size and buf[start] == TEXT_FRAME:
                # Text events only (protocol.frame): the usual frame, once per token, decoded without pickle.
                queues, p = self._queues, start + 1
                while p < pos:
                    req_id, n = _unpack_text(buf, p)
                    p += _TEXT_HEAD_SIZE
                    q = queues.get(req_id)
                    if q is not None:
                        q.put_nowait(_new_tuple(TextEvent, (req_id, str(buf[p:p + n], "utf-8", "replace"), ())))
                    p += n
                continue
            try:
                events = loads_event(buf[start:pos])
            except Exception:
                # Not one of our messages: a runner that sends it cannot be trusted any more.
                self._stop_reading()
                self._kill()
                self._on_death()
                return
            try:
                self._dispatch(events)  # type: ignore[arg-type]
            except Exception:  # allowed types in a shape we never send: the same distrust
                self._stop_reading()
                self._kill()
                self._on_death()
                return
        self._need = need
        # A message larger than one read (an embedding batch) is gathered over several wake-ups.
        if pos == end:
            self._rbuf = bytearray()
        elif pos or buf is not self._rbuf:
            self._rbuf = bytearray(buf[pos:])

    def _stop_reading(self) -> None:
        if self._loop is not None and self._conn is not None:
            try:
                self._loop.remove_reader(self._conn.fileno())
            except (ValueError, OSError):
                pass

    def _dispatch(self, events: list[object]) -> None:
        for ev in events:
            if type(ev) is tuple:  # a TextEvent, sent as a plain tuple (see protocol.TextEvent)
                q = self._queues.get(ev[0])
                if q is not None:
                    q.put_nowait(_new_tuple(TextEvent, ev))
                continue
            if isinstance(ev, StatusEvent):
                self.last_status, self.last_status_at = ev, time.monotonic()
                if self._status is not None and not self._status.done():
                    self._status.set_result(ev)
                continue
            if isinstance(ev, RunnerFatal):  # the end of file follows: _on_death gives every request this reason
                self._fatal = ev
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
        if self._fatal is not None:
            err: RunnerFailed = rpc.ERROR_KINDS.get(self._fatal.kind, RunnerFailed)(self._fatal.error)
        elif self.spec.rpc_servers:  # died without last words (they could not be sent): name its workers anyway
            err = RunnerFailed(f"{RUNNER_STOPPED}: {detail}; its layers were on the RPC workers "
                               f"{', '.join(self.spec.rpc_servers)}")
        else:
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
        self, tokens: tuple[int, ...], sampling: SamplingParams, logprobs: bool, top_logprobs: int, grammar: str | None,
        images: tuple[ImageInput, ...] = (),
    ) -> AsyncIterator[TextEvent | DoneEvent]:
        req_id = next(_ids)
        q = _Inbox()
        self._queues[req_id] = q
        finished = False
        try:
            self._send(GenerateCmd(req_id, tokens, sampling, logprobs, top_logprobs, grammar, images))
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
        q = _Inbox()
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
        return await asyncio.wait_for(asyncio.shield(self.request_status()), 10)

    def request_status(self) -> asyncio.Future[StatusEvent]:
        """Ask for fresh counters; every caller meanwhile shares the one question in flight. The runner answers
        between two decode steps, so the answer may come late: views wait for it only briefly."""
        assert self._loop is not None
        fut = self._status
        if fut is None or fut.done():
            fut = self._status = self._loop.create_future()
            try:
                self._send(StatusCmd())
            except RunnerFailed as exc:
                fut.set_exception(exc)
                fut.exception()  # retrieved: nobody may be waiting
        return fut

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
