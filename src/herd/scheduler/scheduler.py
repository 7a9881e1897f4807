"""Loaded runners, keep-alive timers, the load queue, eviction and parallel slots (Ollama's server/sched.go, spec 8).

- One runner per model. A request for a loaded model with the same load options waits for one of its slots
  (first come, first served). A request that needs a load or reload joins a bounded pending queue; loads happen
  one at a time; a full queue answers 503 at once.
- Past `max_loaded`, the idle model with the shortest keep-alive (ties by name) is evicted; if none is idle, the
  load waits for the shortest keep-alive model to finish its requests.
- The keep-alive timer starts when a model's last request finishes. A request's keep_alive sets the model's
  duration; a later request without one keeps it. <= 0 unloads as soon as idle; negative... forever.
- A request with other load options reloads the model once the running requests finish.
The runner factory and the clock are injected, so the logic is tested with a fake runner and a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from herd.engine.protocol import LoadSpec
from herd.engine.runner import Runner
from herd.errors import RequestCancelled, ServerBusy, ShuttingDown

BUSY = "server busy, please try again.  maximum pending requests exceeded"
FOREVER = float("inf")


@dataclass
class LoadedModel:
    key: str
    name: str
    runner: Runner
    spec: LoadSpec
    keep_alive: float  # seconds; < 0 = forever
    slots: asyncio.Semaphore
    digest: str = ""
    details: dict[str, object] = field(default_factory=dict)
    size: int = 0
    refcount: int = 0
    expires_at: float = FOREVER  # clock time; FOREVER while in use or kept forever
    unload_when_idle: bool = False
    stopping: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def ps_expiry(self, now: float) -> float:
        """Seconds from now until unload, as /api/ps shows it (inf = forever)."""
        if self.keep_alive < 0:
            return FOREVER
        if self.refcount > 0:
            return self.keep_alive
        return max(0.0, self.expires_at - now)


@dataclass(frozen=True)
class ModelRef:
    """What the scheduler needs to know about a model to load it and show it."""

    key: str
    name: str
    digest: str = ""
    details: dict[str, object] = field(default_factory=dict)
    size: int = 0


class Scheduler:
    def __init__(
        self,
        factory: Callable[[LoadSpec], Runner],
        *,
        max_loaded: int = 3,
        max_queue: int = 512,
        default_keep_alive: float = 300.0,
        load_timeout: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        reap_interval: float = 0.25,
    ) -> None:
        self.factory = factory
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self.default_keep_alive = default_keep_alive
        self.load_timeout = load_timeout
        self.clock = clock
        self.reap_interval = reap_interval
        self.loaded: dict[str, LoadedModel] = {}
        self._load_lock = asyncio.Lock()
        self._pending = 0
        self._waiting_slots = 0
        self._reaper: asyncio.Task[None] | None = None
        self._closing = False

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            await self.reap()

    async def reap(self) -> None:
        """Unload idle models whose keep-alive ran out, and forget runners that died."""
        now = self.clock()
        for entry in list(self.loaded.values()):
            if entry.refcount == 0 and (entry.expires_at <= now or not entry.runner.alive):
                await self._unload(entry)

    async def shutdown(self) -> None:
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for entry in list(self.loaded.values()):
            await self._unload(entry)

    # ---- requests ----------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lease(self, ref: ModelRef, spec: LoadSpec, keep_alive: float | None) -> AsyncIterator[LoadedModel]:
        entry = await self.acquire(ref, spec, keep_alive)
        try:
            yield entry
        finally:
            self.release(entry)

    async def acquire(self, ref: ModelRef, spec: LoadSpec, keep_alive: float | None) -> LoadedModel:
        if self._closing:
            raise ShuttingDown("server is shutting down")
        while True:
            entry = self.loaded.get(ref.key)
            if entry is not None and entry.spec == spec and entry.runner.alive and not entry.stopping:
                return await self._take_slot(entry, keep_alive)
            if self._pending >= self.max_queue:
                raise ServerBusy(BUSY)
            self._pending += 1
            try:
                async with self._load_lock:
                    entry = self.loaded.get(ref.key)
                    if entry is not None and entry.spec == spec and entry.runner.alive and not entry.stopping:
                        continue
                    if entry is not None:
                        # Other load options, or a dead runner: reload after the running requests finish.
                        if entry.runner.alive:
                            await self._wait_idle(entry)
                        await self._unload(entry)
                    await self._make_room()
                    runner = self.factory(spec)
                    await runner.start(self.load_timeout)
                    ka = self.default_keep_alive if keep_alive is None else keep_alive
                    self.loaded[ref.key] = LoadedModel(
                        key=ref.key,
                        name=ref.name,
                        runner=runner,
                        spec=spec,
                        keep_alive=ka,
                        slots=asyncio.Semaphore(spec.num_parallel),
                        digest=ref.digest,
                        details=ref.details,
                        size=max(ref.size, runner.memory_bytes),
                    )
                    self.loaded[ref.key].idle.set()
            except asyncio.CancelledError:
                raise RequestCancelled("request canceled") from None
            finally:
                self._pending -= 1

    async def _take_slot(self, entry: LoadedModel, keep_alive: float | None) -> LoadedModel:
        entry.refcount += 1
        entry.idle.clear()
        entry.expires_at = FOREVER
        if keep_alive is not None:
            entry.keep_alive = keep_alive
            entry.unload_when_idle = False
        if entry.slots.locked():
            # Waiting for a slot is bounded too: past max_queue waiters the request is refused.
            if self._waiting_slots >= self.max_queue:
                self._drop_ref(entry)
                raise ServerBusy(BUSY)
            self._waiting_slots += 1
            try:
                await entry.slots.acquire()
            except asyncio.CancelledError:
                self._drop_ref(entry)
                raise
            finally:
                self._waiting_slots -= 1
        else:
            await entry.slots.acquire()
        return entry

    def release(self, entry: LoadedModel) -> None:
        entry.slots.release()
        self._drop_ref(entry)

    def _drop_ref(self, entry: LoadedModel) -> None:
        entry.refcount -= 1
        if entry.refcount > 0:
            return
        entry.idle.set()
        if entry.keep_alive < 0:
            entry.expires_at = FOREVER
        elif entry.keep_alive == 0 or entry.unload_when_idle:
            entry.expires_at = self.clock()
            asyncio.get_running_loop().create_task(self.reap())
        else:
            entry.expires_at = self.clock() + entry.keep_alive

    async def unload(self, key: str) -> None:
        """The `keep_alive: 0` shortcut: unload now if idle, else as soon as the running requests finish."""
        entry = self.loaded.get(key)
        if entry is None:
            return
        entry.keep_alive = 0
        if entry.refcount == 0:
            await self._unload(entry)
        else:
            entry.unload_when_idle = True

    async def touch(self, key: str, keep_alive: float | None) -> None:
        entry = self.loaded.get(key)
        if entry is not None and keep_alive is not None:
            entry.keep_alive = keep_alive

    # ---- internals ---------------------------------------------------------------------------------------
    async def _wait_idle(self, entry: LoadedModel) -> None:
        while entry.refcount > 0:
            await entry.idle.wait()

    async def _make_room(self) -> None:
        while len(self.loaded) >= self.max_loaded:
            idle = [e for e in self.loaded.values() if e.refcount == 0]
            if idle:
                victim = min(idle, key=lambda e: (self._ka_order(e), e.name))
                await self._unload(victim)
                continue
            busy = min(self.loaded.values(), key=lambda e: (self._ka_order(e), e.name))
            await self._wait_idle(busy)

    @staticmethod
    def _ka_order(entry: LoadedModel) -> float:
        return FOREVER if entry.keep_alive < 0 else entry.keep_alive

    async def _unload(self, entry: LoadedModel) -> None:
        if entry.stopping:
            return
        entry.stopping = True
        if self.loaded.get(entry.key) is entry:
            del self.loaded[entry.key]
        await entry.runner.stop()

    def snapshot(self) -> list[tuple[LoadedModel, float]]:
        """(model, seconds until unload) for /api/ps, furthest expiry first."""
        now = self.clock()
        rows = [(e, e.ps_expiry(now)) for e in self.loaded.values() if not e.stopping]
        rows.sort(key=lambda r: r[1], reverse=True)
        return rows
