"""Issue 12 points 3 and 6: one FIFO per model, loads owned by the scheduler, a reaper that survives."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from herd.engine.protocol import LoadSpec
from herd.scheduler.scheduler import ModelRef, Scheduler


class Runner:
    made: ClassVar[list[Runner]] = []
    gate: asyncio.Event | None = None

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.memory_bytes = 0
        self.stopped = False
        Runner.made.append(self)

    @property
    def alive(self) -> bool:
        return not self.stopped

    async def start(self, timeout: float) -> None:
        if Runner.gate is not None:
            await Runner.gate.wait()

    async def stop(self) -> None:
        self.stopped = True


def spec(path: str = "/m/a", num_ctx: int = 4096, parallel: int = 1) -> LoadSpec:
    return LoadSpec(path, num_ctx, 512, parallel, 1, True)


def ref(name: str) -> ModelRef:
    return ModelRef(key=name, name=name)


def run(coro: Any) -> Any:
    Runner.made = []
    Runner.gate = None
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_a_reload_at_the_head_is_not_starved_by_later_requests() -> None:
    async def main() -> None:
        s = Scheduler(Runner, reap_interval=3600)  # type: ignore[arg-type]
        old = await s.acquire(ref("a"), spec(), None)
        reload = asyncio.create_task(s.acquire(ref("a"), spec(num_ctx=8192), None))
        await asyncio.sleep(0.01)
        later = asyncio.create_task(s.acquire(ref("a"), spec(), None))  # the old options, behind the reload
        await asyncio.sleep(0.01)
        s.release(old)
        new = await asyncio.wait_for(reload, 1)
        assert new.spec.num_ctx == 8192 and not later.done()  # FIFO: the reload went first
        s.release(new)
        s.release(await asyncio.wait_for(later, 1))

    run(main())


def test_a_reload_waiting_for_running_requests_does_not_block_other_models() -> None:
    async def main() -> None:
        s = Scheduler(Runner, reap_interval=3600)  # type: ignore[arg-type]
        old = await s.acquire(ref("a"), spec(), None)
        reload = asyncio.create_task(s.acquire(ref("a"), spec(num_ctx=8192), None))
        await asyncio.sleep(0.01)
        other = await asyncio.wait_for(s.acquire(ref("b"), spec("/m/b"), None), 1)  # loads meanwhile
        assert other.key == "b" and not reload.done()
        s.release(other)
        s.release(old)
        s.release(await asyncio.wait_for(reload, 1))

    run(main())


def test_ten_clients_that_leave_during_a_load_and_retry_leave_one_runner() -> None:
    async def main() -> None:
        s = Scheduler(Runner, reap_interval=3600)  # type: ignore[arg-type]
        Runner.gate = asyncio.Event()
        for _ in range(10):
            t = asyncio.create_task(s.acquire(ref("a"), spec(), None))
            await asyncio.sleep(0.01)
            t.cancel()
        await asyncio.sleep(0.01)
        assert len(Runner.made) == 1  # the first load goes on; the retries did not start others
        Runner.gate.set()
        e = await asyncio.wait_for(s.acquire(ref("a"), spec(), None), 1)
        assert len(Runner.made) == 1 and e.runner is Runner.made[0]
        s.release(e)

    run(main())


def test_a_load_nobody_waits_for_any_more_is_not_started() -> None:
    async def main() -> None:
        s = Scheduler(Runner, max_loaded=1, reap_interval=3600)  # type: ignore[arg-type]
        busy = await s.acquire(ref("a"), spec(), None)
        t = asyncio.create_task(s.acquire(ref("b"), spec("/m/b"), None))  # waits for room
        await asyncio.sleep(0.01)
        t.cancel()
        await asyncio.sleep(0.01)
        s.release(busy)
        await asyncio.sleep(0.01)
        assert [r.spec.model_path for r in Runner.made] == ["/m/a"] and set(s.loaded) == {"a"}

    run(main())


def test_the_reaper_survives_an_exception() -> None:
    async def main() -> None:
        s = Scheduler(Runner, reap_interval=0.01)  # type: ignore[arg-type]
        calls = 0
        real = s.reap

        async def flaky() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("bug")
            await real()

        s.reap = flaky  # type: ignore[method-assign]
        s.start()
        await asyncio.sleep(0.1)
        assert calls >= 3 and s._reaper is not None and not s._reaper.done()
        await s.shutdown()

    run(main())
