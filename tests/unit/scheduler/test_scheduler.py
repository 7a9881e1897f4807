"""Scheduler logic with a fake runner and a fake clock (like Ollama's sched_test.go)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest

from herd.engine.protocol import DoneEvent, EmbedEvent, LoadSpec, SamplingParams, TextEvent
from herd.errors import ServerBusy
from herd.scheduler.scheduler import BUSY, ModelRef, Scheduler


class FakeRunner:
    started: ClassVar[list[FakeRunner]] = []

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.memory_bytes = 1000
        self.stopped = False
        self.load_gate: asyncio.Event | None = None

    @property
    def alive(self) -> bool:
        return not self.stopped

    async def start(self, timeout: float) -> None:
        FakeRunner.started.append(self)
        await asyncio.sleep(0)

    def generate(self, tokens: tuple[int, ...], sampling: SamplingParams, logprobs: bool, top_logprobs: int,
                 grammar: str | None, images: tuple[object, ...] = ()) -> AsyncIterator[TextEvent | DoneEvent]:
        raise NotImplementedError

    async def embed(self, inputs: tuple[tuple[int, ...], ...]) -> EmbedEvent:
        raise NotImplementedError

    async def stop(self) -> None:
        self.stopped = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spec(path: str = "/m/a", num_ctx: int = 4096, parallel: int = 2) -> LoadSpec:
    return LoadSpec(path, num_ctx, 512, parallel, 2, True)


def ref(name: str) -> ModelRef:
    return ModelRef(key=name, name=name)


@pytest.fixture(autouse=True)
def _reset() -> None:
    FakeRunner.started.clear()


def make(clock: Clock, **kw: object) -> Scheduler:
    return Scheduler(FakeRunner, clock=clock, reap_interval=3600, **kw)  # type: ignore[arg-type]


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_reuses_a_loaded_runner_and_keeps_alive_from_release() -> None:
    async def main() -> None:
        clock = Clock()
        s = make(clock, default_keep_alive=300)
        e1 = await s.acquire(ref("a"), spec(), None)
        s.release(e1)
        e2 = await s.acquire(ref("a"), spec(), None)
        assert e2 is e1 and len(FakeRunner.started) == 1
        clock.now += 1000  # in use: never expires
        await s.reap()
        assert "a" in s.loaded
        s.release(e2)
        assert e2.expires_at == clock.now + 300
        clock.now += 299
        await s.reap()
        assert "a" in s.loaded
        clock.now += 2
        await s.reap()
        assert "a" not in s.loaded and e2.runner.stopped  # type: ignore[attr-defined]

    run(main())


def test_keep_alive_zero_unloads_when_idle_and_negative_is_forever() -> None:
    async def main() -> None:
        clock = Clock()
        s = make(clock)
        e = await s.acquire(ref("a"), spec(), 0)
        s.release(e)
        await asyncio.sleep(0.01)
        assert "a" not in s.loaded
        e = await s.acquire(ref("b"), spec("/m/b"), -1)
        s.release(e)
        clock.now += 10**9
        await s.reap()
        assert "b" in s.loaded

    run(main())


def test_later_request_without_keep_alive_keeps_the_last_value() -> None:
    async def main() -> None:
        clock = Clock()
        s = make(clock, default_keep_alive=300)
        s.release(await s.acquire(ref("a"), spec(), 60))
        e = await s.acquire(ref("a"), spec(), None)
        s.release(e)
        assert e.keep_alive == 60 and e.expires_at == clock.now + 60

    run(main())


def test_evicts_the_idle_model_with_the_shortest_keep_alive() -> None:
    async def main() -> None:
        clock = Clock()
        s = make(clock, max_loaded=2)
        s.release(await s.acquire(ref("long"), spec("/m/long"), 600))
        s.release(await s.acquire(ref("short"), spec("/m/short"), 30))
        s.release(await s.acquire(ref("new"), spec("/m/new"), None))
        assert set(s.loaded) == {"long", "new"}

    run(main())


def test_waits_for_a_busy_model_when_none_is_idle() -> None:
    async def main() -> None:
        clock = Clock()
        s = make(clock, max_loaded=1)
        busy = await s.acquire(ref("a"), spec(), None)
        task = asyncio.create_task(s.acquire(ref("b"), spec("/m/b"), None))
        await asyncio.sleep(0.01)
        assert not task.done() and set(s.loaded) == {"a"}
        s.release(busy)
        e = await asyncio.wait_for(task, 1)
        assert set(s.loaded) == {"b"} and e.key == "b"

    run(main())


def test_other_load_options_reload_after_running_requests_finish() -> None:
    async def main() -> None:
        clock = Clock()
        s = make(clock)
        old = await s.acquire(ref("a"), spec(num_ctx=4096), None)
        task = asyncio.create_task(s.acquire(ref("a"), spec(num_ctx=8192), None))
        await asyncio.sleep(0.01)
        assert not task.done() and not old.runner.stopped  # type: ignore[attr-defined]
        s.release(old)
        new = await asyncio.wait_for(task, 1)
        assert old.runner.stopped and new.spec.num_ctx == 8192  # type: ignore[attr-defined]
        assert len(FakeRunner.started) == 2

    run(main())


def test_pending_queue_is_bounded() -> None:
    async def main() -> None:
        clock = Clock()
        s = make(clock, max_loaded=1, max_queue=2)
        busy = await s.acquire(ref("a"), spec(), None)
        waiting = [asyncio.create_task(s.acquire(ref(n), spec(f"/m/{n}"), None)) for n in ("b", "c")]
        await asyncio.sleep(0.01)
        with pytest.raises(ServerBusy) as info:
            await s.acquire(ref("d"), spec("/m/d"), None)
        assert info.value.message == BUSY
        assert BUSY == "server busy, please try again.  maximum pending requests exceeded"
        s.release(busy)
        for t in waiting:
            s.release(await asyncio.wait_for(t, 1))

    run(main())


def test_slots_limit_concurrency_per_runner_first_come_first_served() -> None:
    async def main() -> None:
        clock = Clock()
        s = make(clock)
        a = await s.acquire(ref("a"), spec(parallel=2), None)
        b = await s.acquire(ref("a"), spec(parallel=2), None)
        third = asyncio.create_task(s.acquire(ref("a"), spec(parallel=2), None))
        await asyncio.sleep(0.01)
        assert not third.done()
        s.release(a)
        c = await asyncio.wait_for(third, 1)
        assert c is b and len(FakeRunner.started) == 1
        s.release(b)
        s.release(c)

    run(main())


def test_a_dead_runner_is_replaced() -> None:
    async def main() -> None:
        clock = Clock()
        s = make(clock)
        e = await s.acquire(ref("a"), spec(), None)
        s.release(e)
        e.runner.stopped = True  # type: ignore[attr-defined]
        e2 = await s.acquire(ref("a"), spec(), None)
        assert e2 is not e and len(FakeRunner.started) == 2

    run(main())


def test_ps_snapshot_orders_by_expiry() -> None:
    async def main() -> None:
        clock = Clock()
        s = make(clock)
        s.release(await s.acquire(ref("soon"), spec("/m/1"), 10))
        s.release(await s.acquire(ref("later"), spec("/m/2"), 100))
        s.release(await s.acquire(ref("forever"), spec("/m/3"), -1))
        assert [e.key for e, _ in s.snapshot()] == ["forever", "later", "soon"]
        assert [r for _, r in s.snapshot()][1:] == [100, 10]

    run(main())
