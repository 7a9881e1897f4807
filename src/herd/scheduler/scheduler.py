"""Loaded runners, keep-alive timers, one admission queue per model, eviction and parallel slots (Ollama's
server/sched.go, spec 8).

- One FIFO queue per runner key, for every request of that model, whether it waits for a slot, for a load or for
  a reload. A request is granted only from the head of its queue: a reload (other load options) at the head lets
  the running requests finish but admits nobody behind it, so it cannot starve.
- Waiting for running requests holds nothing: other models load meanwhile. Loads themselves run one at a time, in
  a task of the scheduler's own (not the requester's), so a client that leaves during a load neither kills it
  half-way nor leaves a process loading that nobody tracks: the load finishes and the model stays loaded for its
  keep-alive, where the client's retry finds it (Ollama: once a load has started, it completes). A load whose
  requests have all left before it started is not started.
- Past `max_loaded` runners, the idle model with the shortest keep-alive (ties by name) is evicted; if none is
  idle, the load waits until one is.
- The keep-alive timer starts when a model's last request finishes. A request's keep_alive sets the model's
  duration; a later request without one keeps it. 0 unloads as soon as idle; negative keeps it forever. An unload
  (`keep_alive: 0` with no prompt) that arrives during a load takes effect after the load.
- Chat and embeddings on the same model are separate runner keys (an embedding runner keeps hidden states and
  one sequence), so switching between them does not reload either. Both count towards `max_loaded`; /api/ps
  shows the model once.
- The keep-alive reaper survives any exception (logged) and also re-runs every queue, so nothing waits on a wake-up
  that was lost.
The runner factory and the clock are injected, so the logic is tested with a fake runner and a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from herd.engine.protocol import LoadSpec
from herd.engine.runner import Runner
from herd.errors import ServerBusy, ShuttingDown

log = logging.getLogger("herd.scheduler")

BUSY = "server busy, please try again.  maximum pending requests exceeded"
FOREVER = float("inf")
EMBED_SUFFIX = " (embed)"


def runner_key(model_key: str, spec: LoadSpec) -> str:
    """The key a runner is kept under: one for chat and generate, one for embeddings, per model."""
    return model_key + EMBED_SUFFIX if spec.embedding else model_key


@dataclass
class LoadedModel:
    key: str  # the model's store key (what /api/ps and unload name)
    name: str
    runner: Runner
    spec: LoadSpec
    keep_alive: float  # seconds; < 0 = forever
    digest: str = ""
    details: dict[str, object] = field(default_factory=dict)
    size: int = 0
    refcount: int = 0  # slots handed out; at most spec.num_parallel
    expires_at: float = FOREVER  # clock time; FOREVER while in use or kept forever
    unload_when_idle: bool = False
    stopping: bool = False
    loaded_at: float = 0.0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def runner_key(self) -> str:
        return runner_key(self.key, self.spec)

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


@dataclass(eq=False)
class _Waiter:
    ref: ModelRef
    spec: LoadSpec
    keep_alive: float | None
    future: asyncio.Future[LoadedModel]


@dataclass(eq=False)
class _Queue:
    """The admission state of one runner key. States: idle (no entry, no task), loading (task, no entry),
    ready (entry), unloading (entry stopping or task)."""

    key: str
    waiters: deque[_Waiter] = field(default_factory=deque)
    entry: LoadedModel | None = None
    task: asyncio.Task[None] | None = None  # a load or unload in progress: the queue waits for it
    loading: Runner | None = None  # the runner being started, for the runner view
    loading_spec: LoadSpec | None = None
    loading_name: str = ""
    loading_since: float = 0.0
    unload_after_load: bool = False


@dataclass(frozen=True)
class RunnerRow:
    """One runner as the server itself sees it (no round trip to the runner)."""

    key: str
    model: str
    kind: str  # "chat" | "embed"
    state: str  # "loading" | "ready" | "stopping"
    pid: int | None
    num_parallel: int
    active: int  # slots handed out to requests
    queued: int  # requests waiting in this runner's queue
    in_flight: int  # requests with a command in the runner
    since_s: float  # seconds since the load started (loading) or finished (ready)
    runner: object  # the runner handle, for the counters the view may add


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
        self.loaded: dict[str, LoadedModel] = {}  # by runner key
        self._queues: dict[str, _Queue] = {}
        self._load_lock = asyncio.Lock()  # loads run one at a time (memory is checked against what is free)
        self._room = asyncio.Event()  # set whenever a runner becomes idle or goes: a load waiting for room retries
        self._waiting = 0
        self._reaper: asyncio.Task[None] | None = None
        self._closing = False

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                await self.reap()
            except Exception:  # the reaper must outlive any bug: a dead reaper never unloads anything again
                log.exception("keep-alive reaper")

    async def reap(self) -> None:
        """Unload idle models whose keep-alive ran out, forget runners that died, and re-run every queue."""
        now = self.clock()
        for entry in list(self.loaded.values()):
            try:
                if entry.refcount == 0 and (entry.expires_at <= now or not entry.runner.alive):
                    await self._unload(entry)
            except Exception:
                log.exception("unloading %s", entry.name)
        for q in list(self._queues.values()):
            try:
                self._pump(q)
            except Exception:
                log.exception("admission queue of %s", q.key)

    async def shutdown(self) -> None:
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for q in list(self._queues.values()):
            for w in q.waiters:
                if not w.future.done():
                    w.future.set_exception(ShuttingDown("server is shutting down"))
            q.waiters.clear()
            if q.task is not None and q.entry is None:
                q.task.cancel()  # a load: the runner kills its process when cancelled
                with contextlib.suppress(BaseException):
                    await q.task
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
        key = runner_key(ref.key, spec)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _Queue(key)
        entry = q.entry
        if not q.waiters and entry is not None and self._fits(entry, spec) and entry.refcount < spec.num_parallel:
            self._grant(entry, keep_alive)  # the common case: a free slot and nobody ahead
            return entry
        if self._waiting >= self.max_queue:
            raise ServerBusy(BUSY)
        w = _Waiter(ref, spec, keep_alive, asyncio.get_running_loop().create_future())
        q.waiters.append(w)
        self._waiting += 1
        try:
            self._pump(q)
            return await w.future
        except asyncio.CancelledError:
            # The client left. If the grant raced the cancel, hand the slot back at once.
            if w.future.done() and not w.future.cancelled() and w.future.exception() is None:
                self.release(w.future.result())
            raise
        finally:
            self._waiting -= 1
            with contextlib.suppress(ValueError):
                q.waiters.remove(w)
            if not w.future.done():
                w.future.cancel()
                self._room.set()  # a load waiting for room checks whether it is still wanted
            self._pump(q)

    def release(self, entry: LoadedModel) -> None:
        entry.refcount -= 1
        if entry.refcount <= 0:
            entry.refcount = 0
            entry.idle.set()
            self._room.set()
            if entry.keep_alive < 0:
                entry.expires_at = FOREVER
            elif entry.keep_alive == 0 or entry.unload_when_idle:
                entry.expires_at = self.clock()
                asyncio.get_running_loop().create_task(self.reap())
            else:
                entry.expires_at = self.clock() + entry.keep_alive
        q = self._queues.get(entry.runner_key)
        if q is not None and q.waiters:
            self._pump(q)

    async def unload(self, key: str) -> None:
        """The `keep_alive: 0` shortcut: unload now if idle, else as soon as the running requests finish; a model
        that is loading is unloaded once its load is done (and the requests that waited for it are served)."""
        for rkey in (key, key + EMBED_SUFFIX):
            q = self._queues.get(rkey)
            if q is not None and q.task is not None and q.entry is None:
                q.unload_after_load = True
            entry = self.loaded.get(rkey)
            if entry is None:
                continue
            entry.keep_alive = 0
            if entry.refcount == 0:
                await self._unload(entry)
            else:
                entry.unload_when_idle = True

    async def touch(self, key: str, keep_alive: float | None) -> None:
        entry = self.loaded.get(key)
        if entry is not None and keep_alive is not None:
            entry.keep_alive = keep_alive

    # ---- admission -----------------------------------------------------------------------------------------
    @staticmethod
    def _fits(entry: LoadedModel, spec: LoadSpec) -> bool:
        return entry.spec == spec and not entry.stopping and entry.runner.alive

    def _grant(self, entry: LoadedModel, keep_alive: float | None) -> None:
        entry.refcount += 1
        entry.idle.clear()
        entry.expires_at = FOREVER
        if keep_alive is not None:
            entry.keep_alive = keep_alive
            entry.unload_when_idle = False

    def _pump(self, q: _Queue) -> None:
        """Serve the head of the queue as far as possible; start the load or unload it waits for. Synchronous:
        it never waits, it only starts tasks that pump again when they are done."""
        while q.waiters and q.waiters[0].future.done():
            q.waiters.popleft()
        if q.task is not None or self._closing:
            return
        entry = q.entry
        if entry is not None and entry.stopping:
            return
        while q.waiters:
            w = q.waiters[0]
            if w.future.done():
                q.waiters.popleft()
                continue
            if entry is not None and self._fits(entry, w.spec):
                if entry.refcount >= entry.spec.num_parallel:
                    return  # wait for a slot, first come first served
                q.waiters.popleft()
                self._grant(entry, w.keep_alive)
                w.future.set_result(entry)
                continue
            if entry is not None:
                # Other load options, or a dead runner: reload once the running requests are done. Nobody
                # behind this request is admitted meanwhile.
                if entry.refcount == 0:
                    q.task = asyncio.get_running_loop().create_task(self._unload_then_pump(q, entry))
                return
            q.task = asyncio.get_running_loop().create_task(self._load(q, w.ref, w.spec))
            return

    async def _unload_then_pump(self, q: _Queue, entry: LoadedModel) -> None:
        try:
            await self._unload(entry)
        finally:
            q.task = None
            self._pump(q)

    def _wanted(self, q: _Queue, spec: LoadSpec) -> bool:
        return any(not w.future.done() and w.spec == spec for w in q.waiters)

    async def _load(self, q: _Queue, ref: ModelRef, spec: LoadSpec) -> None:
        runner: Runner | None = None
        ok = False
        try:
            async with self._load_lock:
                if not await self._make_room(lambda: self._wanted(q, spec), spec):
                    return  # everyone who wanted it left before the load began: start nothing
                runner = self.factory(spec)
                q.loading, q.loading_spec, q.loading_name, q.loading_since = runner, spec, ref.name, self.clock()
                await runner.start(self.load_timeout)
            ok = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Everyone waiting for this load fails the same way, at once (no load retried per waiter).
            for w in list(q.waiters):
                if w.spec == spec and not w.future.done():
                    w.future.set_exception(exc)
        finally:
            q.loading, q.loading_spec = None, None
            if not ok:
                q.task = None
                if not self._closing:
                    self._pump(q)
        if not ok or runner is None:
            return
        waiter_ka = next((w.keep_alive for w in q.waiters if w.spec == spec and w.keep_alive is not None), None)
        ka = self.default_keep_alive if waiter_ka is None else waiter_ka
        now = self.clock()
        entry = LoadedModel(key=ref.key, name=ref.name, runner=runner, spec=spec, keep_alive=ka, digest=ref.digest,
                            details=ref.details, size=max(ref.size, runner.memory_bytes), loaded_at=now)
        entry.idle.set()
        # Loaded for requests that may all have left: it then idles for its keep-alive, where a retry finds it.
        entry.expires_at = FOREVER if ka < 0 else now + ka
        if q.unload_after_load:
            q.unload_after_load = False
            entry.keep_alive = 0
            entry.unload_when_idle = True
            entry.expires_at = now
        self.loaded[q.key] = entry
        q.entry = entry
        q.task = None
        if self._closing:
            await self._unload(entry)
            return
        self._pump(q)
        if entry.refcount == 0 and entry.unload_when_idle:
            await self._unload(entry)

    async def _make_room(self, wanted: Callable[[], bool], spec: LoadSpec | None = None) -> bool:
        """Evict until one more runner fits, and until no loaded runner holds an RPC worker that `spec` needs (a
        worker serves one client at a time: a second runner would hang on it); False if the load is no longer
        wanted meanwhile."""
        workers = set(spec.rpc_servers) if spec is not None else set()
        while True:
            if not wanted():
                return False
            holders = [e for e in self.loaded.values() if workers & set(e.spec.rpc_servers)]
            if not holders and len(self.loaded) < self.max_loaded:
                return True
            idle = [e for e in holders or self.loaded.values() if e.refcount == 0 and not e.stopping]
            if idle:
                # A model with requests queued for it is evicted last: they would load it again at once.
                victim = min(idle, key=lambda e: (self._has_waiters(e), self._ka_order(e), e.name))
                await self._unload(victim)
                continue
            self._room.clear()
            await self._room.wait()

    def _has_waiters(self, entry: LoadedModel) -> bool:
        q = self._queues.get(entry.runner_key)
        return bool(q and q.waiters)

    @staticmethod
    def _ka_order(entry: LoadedModel) -> float:
        return FOREVER if entry.keep_alive < 0 else entry.keep_alive

    async def _unload(self, entry: LoadedModel) -> None:
        if entry.stopping:
            return
        entry.stopping = True
        key = entry.runner_key
        if self.loaded.get(key) is entry:
            del self.loaded[key]
        q = self._queues.get(key)
        try:
            await entry.runner.stop()
        finally:
            if q is not None and q.entry is entry:
                q.entry = None
            self._room.set()
            if q is not None and q.task is None and not self._closing:
                self._pump(q)

    # ---- views -------------------------------------------------------------------------------------------
    def snapshot(self) -> list[tuple[LoadedModel, float]]:
        """(model, seconds until unload) for /api/ps, furthest expiry first; a model with both a chat and an
        embedding runner is shown once, as Ollama shows one model."""
        now = self.clock()
        best: dict[str, tuple[LoadedModel, float]] = {}
        for e in self.loaded.values():
            if e.stopping:
                continue
            row = (e, e.ps_expiry(now))
            seen = best.get(e.key)
            if seen is None or (seen[0].spec.embedding and not e.spec.embedding):
                best[e.key] = row
        rows = list(best.values())
        rows.sort(key=lambda r: r[1], reverse=True)
        return rows

    def runner_rows(self) -> list[RunnerRow]:
        """Every runner the scheduler holds, loading ones included, from its own records: answered at once,
        whatever the runners are doing."""
        now = self.clock()
        rows = []
        for q in self._queues.values():
            queued = sum(not w.future.done() for w in q.waiters)
            e = q.entry
            if e is not None:
                rows.append(RunnerRow(q.key, e.name, "embed" if e.spec.embedding else "chat",
                                      "stopping" if e.stopping else "ready", getattr(e.runner, "pid", None),
                                      e.spec.num_parallel, e.refcount, queued,
                                      int(getattr(e.runner, "in_flight", e.refcount)), max(0.0, now - e.loaded_at),
                                      e.runner))
            elif q.loading is not None and q.loading_spec is not None:
                spec = q.loading_spec
                rows.append(RunnerRow(q.key, q.loading_name, "embed" if spec.embedding else "chat", "loading",
                                      getattr(q.loading, "pid", None), spec.num_parallel, 0, queued, 0,
                                      max(0.0, now - q.loading_since), q.loading))
        return rows
