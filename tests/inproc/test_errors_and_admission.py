"""Error paths, the runner view (issue 11 point 6) and admission (issue 12 point 6), over the fake runner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from herd.engine.protocol import DoneEvent
from herd.errors import RunnerFailed
from tests.inproc.conftest import MODEL, Stall, chat_body, until


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_a_failure_before_the_first_chunk_gets_a_status_code(make_harness: Callable[..., Any]) -> None:
    async def main() -> None:
        async with make_harness() as h:
            h.fakes.script = lambda req: [RunnerFailed("boom")]
            call = await h.client.request("POST", "/api/chat", chat_body(True))
            assert call.status == 500 and call.lines() == [{"error": "boom"}]
            assert h.busy_slots() == 0

    run(main())


def test_a_failure_after_the_first_chunk_is_the_last_line(make_harness: Callable[..., Any]) -> None:
    async def main() -> None:
        async with make_harness() as h:
            h.fakes.script = lambda req: ["partial", RunnerFailed("boom")]
            call = await h.client.request("POST", "/api/chat", chat_body(True))
            lines = call.lines()
            assert call.status == 200 and lines[0]["message"]["content"] == "partial"
            assert lines[-1] == {"error": "boom"} and h.busy_slots() == 0

    run(main())


def test_a_failed_load_fails_every_waiter_once(make_harness: Callable[..., Any]) -> None:
    async def main() -> None:
        async with make_harness() as h:
            h.fakes.load_stall = Stall()
            h.fakes.load_error = RunnerFailed("cannot load")
            calls = [h.client.start("POST", "/api/chat", chat_body(False)) for _ in range(3)]
            assert await until(lambda: h.queued() == 3)
            h.fakes.load_stall.event.set()
            for c in calls:
                await c.done()
                assert c.status == 500 and c.lines() == [{"error": "cannot load"}]
            assert len(h.fakes.runners) == 1  # one load for all three, not one per waiter

    run(main())


def test_runner_view_answers_at_once_while_busy_and_while_loading(make_harness: Callable[..., Any]) -> None:
    async def main() -> None:
        stall = Stall()
        async with make_harness() as h:
            h.fakes.load_stall = Stall()
            h.fakes.script = lambda req: ["a", stall, DoneEvent(req, "stop")]
            call = h.client.start("POST", "/api/chat", chat_body(True))
            assert await until(lambda: len(h.fakes.runners) == 1)
            view = await h.client.request("GET", "/api/herd/runners")
            rows = view.lines()[0]["runners"]
            assert [(r["model"], r["state"]) for r in rows] == [(MODEL, "loading")] and rows[0]["queued"] == 1
            h.fakes.load_stall.event.set()
            assert await until(lambda: len(h.fakes.generating) == 1)
            t0 = time.monotonic()
            view = await h.client.request("GET", "/api/herd/runners")
            assert time.monotonic() - t0 < 1.0
            (row,) = view.lines()[0]["runners"]
            assert row["state"] == "ready" and row["active"] == 1 and row["in_flight"] == 1
            stall.event.set()
            await call.done()

    run(main())


def test_an_unload_during_a_load_takes_effect_after_it(make_harness: Callable[..., Any]) -> None:
    async def main() -> None:
        async with make_harness() as h:
            h.fakes.load_stall = Stall()
            call = h.client.start("POST", "/api/chat", chat_body(False))
            assert await until(lambda: len(h.fakes.runners) == 1)
            unload = await h.client.request("POST", "/api/chat", {"model": MODEL, "messages": [], "keep_alive": 0})
            assert unload.status == 200
            assert not h.fakes.runners[0].stopped
            h.fakes.load_stall.event.set()
            await call.done()
            assert call.status == 200  # the request that waited for the load is served
            assert await until(lambda: h.fakes.runners[0].stopped)  # then the unload happens
            assert not h.scheduler.loaded

    run(main())


def test_chat_and_embed_on_one_model_do_not_reload_on_each_switch(make_harness: Callable[..., Any]) -> None:
    async def main() -> None:
        async with make_harness() as h:
            for _ in range(3):
                chat = await h.client.request("POST", "/api/chat", chat_body(False))
                assert chat.status == 200
                embed = await h.client.request("POST", "/api/embed", {"model": MODEL, "input": "hello"})
                assert embed.status == 200, embed.body
            assert len(h.fakes.runners) == 2  # one chat runner, one embedding runner, both kept
            assert sorted(r.spec.embedding for r in h.fakes.runners) == [False, True]
            ps = await h.client.request("GET", "/api/ps")
            assert [m["name"] for m in ps.lines()[0]["models"]] == [MODEL]  # one model, as Ollama shows it

    run(main())
