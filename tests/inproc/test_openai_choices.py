"""/v1 `n` choices and `parallel_tool_calls: false` over the fake runner: the choices are in flight together (one
sequence each), a failure or a client that leaves ends all of them, and a turn limited to one call ends after
its first complete call with the rest of the generation cancelled. What the fake cannot show (the real batch, the
seed offsets' effect on sampling) is covered by tests/integration/test_openai.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from herd.engine.protocol import DoneEvent
from herd.errors import RunnerFailed
from tests.inproc.conftest import MODEL, Stall, until

TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = '<tool_call>\n{"name": "weather", "arguments": {"city": "%s"}}\n</tool_call>\n'


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


def sse(raw: bytes) -> list[Any]:
    events = [e[len("data: "):] for e in raw.decode().split("\n\n") if e.startswith("data: ")]
    return [json.loads(e) if e != "[DONE]" else e for e in events]


def test_choices_are_generated_together_and_come_back_in_order(make_harness: Callable[..., Any]) -> None:
    async def main() -> None:
        async with make_harness(num_parallel=4) as h:
            stall = Stall()
            h.fakes.script = lambda req: [f"answer {req}", stall, DoneEvent(req, "stop")]
            call = h.client.start("POST", "/v1/chat/completions", body(n=3, seed=1))
            # all three sequences are generating at the same moment: one batch, not one after another
            assert await until(lambda: len(h.fakes.generating) == 3)
            stall.event.set()
            await call.done()
            doc = json.loads(call.body)
            assert call.status == 200 and [c["index"] for c in doc["choices"]] == [0, 1, 2]
            assert len({c["message"]["content"] for c in doc["choices"]}) == 3
            assert doc["usage"]["completion_tokens"] == 3 * 2  # the fake counts 2 per sequence
            assert h.busy_slots() == 0

    run(main())


def test_a_failing_choice_ends_the_stream_and_cancels_the_others(make_harness: Callable[..., Any]) -> None:
    async def main() -> None:
        async with make_harness(num_parallel=4) as h:
            stall = Stall()
            first: list[int] = []

            def script(req: int) -> list[Any]:
                first.append(req)
                if req == first[0]:
                    return ["x", stall, RunnerFailed("boom")]
                return ["y", Stall(), DoneEvent(req, "stop")]  # never released: only a cancel ends it

            h.fakes.script = script
            call = h.client.start("POST", "/v1/chat/completions", body(n=2, stream=True))
            assert await until(lambda: len(h.fakes.generating) == 2)
            stall.event.set()
            await call.done()
            events = sse(call.body)
            assert call.status == 200 and events[-1] != "[DONE]" and events[-1]["error"]["message"] == "boom"
            assert await until(lambda: len(h.fakes.cancelled) == 1) and h.busy_slots() == 0

    run(main())


def test_a_client_that_leaves_cancels_every_choice(make_harness: Callable[..., Any]) -> None:
    async def main() -> None:
        async with make_harness(num_parallel=4) as h:
            h.fakes.script = lambda req: ["t", Stall(), DoneEvent(req, "stop")]
            call = h.client.start("POST", "/v1/chat/completions", body(n=3, stream=True))
            assert await until(lambda: len(h.fakes.generating) == 3)
            call.disconnect()
            await call.done()
            assert await until(lambda: len(h.fakes.cancelled) == 3 and h.busy_slots() == 0)

    run(main())


def test_parallel_tool_calls_false_ends_the_turn_after_the_first_call(make_harness: Callable[..., Any]) -> None:
    async def main() -> None:
        async with make_harness() as h:
            h.fakes.script = lambda req: [CALL % "Oslo", CALL % "Rome", "and more", DoneEvent(req, "stop")]
            call = await h.client.request("POST", "/v1/chat/completions",
                                          body(tools=TOOLS, parallel_tool_calls=False))
            doc = json.loads(call.body)
            calls = doc["choices"][0]["message"]["tool_calls"]
            assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Oslo"}]
            assert doc["choices"][0]["finish_reason"] == "tool_calls"
            assert len(h.fakes.cancelled) == 1 and h.busy_slots() == 0  # the rest was not generated

            both = await h.client.request("POST", "/v1/chat/completions", body(tools=TOOLS))
            assert len(json.loads(both.body)["choices"][0]["message"]["tool_calls"]) == 2

    run(main())
