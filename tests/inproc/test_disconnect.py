"""Issue 12 point 2: a client that leaves is noticed at once, at every stage, streamed or not; the request is
cancelled in the runner and its slot freed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from herd.engine.protocol import DoneEvent
from tests.inproc.conftest import Stall, chat_body, until

STREAMS = pytest.mark.parametrize("stream", [True, False], ids=["stream", "nostream"])

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


@STREAMS
def test_leaving_while_queued_for_a_slot(make_harness: Callable[..., Any], stream: bool) -> None:
    async def main() -> None:
        stall = Stall()
        async with make_harness(num_parallel=1) as h:
            h.fakes.script = lambda req: ["a", stall, DoneEvent(req, "stop")]
            first = h.client.start("POST", "/api/chat", chat_body(True))
            assert await until(lambda: len(h.fakes.generating) == 1)
            second = h.client.start("POST", "/api/chat", chat_body(stream))
            assert await until(lambda: h.queued() == 1)
            second.disconnect()
            assert await until(lambda: h.queued() == 0, 0.5)  # out of the queue at once
            await second.done()
            assert second.status is None  # nothing was sent to a client that left
            stall.event.set()
            await first.done()
            assert first.status == 200 and first.lines()[-1]["done"] is True
            assert len(h.fakes.started) == 1  # the one that left never reached the runner
            assert h.busy_slots() == 0

    run(main())


@STREAMS
def test_leaving_while_the_model_loads(make_harness: Callable[..., Any], stream: bool) -> None:
    async def main() -> None:
        async with make_harness() as h:
            h.fakes.load_stall = Stall()
            call = h.client.start("POST", "/api/chat", chat_body(stream))
            assert await until(lambda: len(h.fakes.runners) == 1)
            call.disconnect()
            await call.done(1)
            assert call.status is None and h.queued() == 0
            # The load goes on in the scheduler's own task; it is not left orphaned nor started twice.
            retry = h.client.start("POST", "/api/chat", chat_body(False))
            await asyncio.sleep(0.05)
            assert len(h.fakes.runners) == 1
            h.fakes.load_stall.event.set()
            await retry.done()
            assert retry.status == 200 and len(h.fakes.runners) == 1
            assert h.busy_slots() == 0

    run(main())


@STREAMS
def test_leaving_during_prefill(make_harness: Callable[..., Any], stream: bool) -> None:
    async def main() -> None:
        stall = Stall()
        async with make_harness() as h:
            h.fakes.script = lambda req: [stall, "late", DoneEvent(req, "stop")]  # no event yet: a long prefill
            call = h.client.start("POST", "/api/chat", chat_body(stream))
            assert await until(lambda: len(h.fakes.generating) == 1)
            call.disconnect()
            assert await until(lambda: len(h.fakes.cancelled) == 1, 0.5)
            assert await until(lambda: h.busy_slots() == 0, 0.5)
            await call.done(1)
            assert call.status is None

    run(main())


@STREAMS
def test_leaving_while_tool_call_text_is_held_back(make_harness: Callable[..., Any], stream: bool) -> None:
    async def main() -> None:
        stall = Stall()
        async with make_harness() as h:
            # Text flows from the runner, but the parser holds an open tool call back: no chunk goes out yet.
            h.fakes.script = lambda req: ["<tool_call>", '\n{"name": "get_', "weather", stall,
                                          DoneEvent(req, "stop")]
            call = h.client.start("POST", "/api/chat", chat_body(stream, tools=TOOLS))
            assert await until(lambda: len(h.fakes.generating) == 1)
            await asyncio.sleep(0.02)
            assert call.status is None  # held back: not even headers
            call.disconnect()
            assert await until(lambda: len(h.fakes.cancelled) == 1, 0.5)
            assert await until(lambda: h.busy_slots() == 0, 0.5)
            await call.done(1)

    run(main())


@STREAMS
def test_leaving_during_generation(make_harness: Callable[..., Any], stream: bool) -> None:
    async def main() -> None:
        stall = Stall()
        async with make_harness() as h:
            h.fakes.script = lambda req: ["one", " two", stall, " three", DoneEvent(req, "stop")]
            call = h.client.start("POST", "/api/chat", chat_body(stream))
            assert await until(lambda: len(h.fakes.generating) == 1)
            if stream:
                assert await until(lambda: b"two" in call.body)
            call.disconnect()
            assert await until(lambda: len(h.fakes.cancelled) == 1, 0.5)
            assert await until(lambda: h.busy_slots() == 0, 0.5)
            await call.done(1)
            assert b"three" not in call.body

    run(main())


@pytest.mark.parametrize("path,body", [
    ("/api/generate", {"model": "smollm2:135m", "prompt": "hi"}),
    ("/v1/chat/completions", {"model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}],
                              "stream": True}),
])
def test_other_routes_notice_a_client_that_leaves_before_the_first_chunk(
        make_harness: Callable[..., Any], path: str, body: dict[str, object]) -> None:
    async def main() -> None:
        stall = Stall()
        async with make_harness() as h:
            h.fakes.script = lambda req: [stall, "x", DoneEvent(req, "stop")]
            call = h.client.start("POST", path, body)
            assert await until(lambda: len(h.fakes.generating) == 1)
            call.disconnect()
            assert await until(lambda: len(h.fakes.cancelled) == 1, 0.5)
            assert await until(lambda: h.busy_slots() == 0, 0.5)

    run(main())
