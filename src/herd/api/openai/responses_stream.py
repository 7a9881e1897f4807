"""OpenAI's Responses API (`POST /v1/responses`): the native chunk stream as Responses events and objects.

The chunks become output items in the order they arrive (reasoning, message, function calls; each item closed
before the next opens) through one state machine, `ResponseStream`, which also builds the non-streamed response:
streamed and non-streamed answers cannot disagree. The request side is `responses_request.py`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from herd.api.openai import responses_wire as wire
from herd.api.openai.responses_request import ResponsePlan, new_id
from herd.api.streaming import dumps
from herd.engine.protocol import TokenLogprob
from herd.errors import HerdError, InvalidRequest
from herd.parsing.base import ToolCall
from herd.services.chat import ChatChunk
from herd.types import Message, ToolCallIn

# ---- response ---------------------------------------------------------------------------------------------------


class _Item(Enum):
    """What output item is open: none (before the first, between items, after the last), the reasoning item or
    a message. Function calls arrive whole, so one is opened and closed at once and is never left open."""

    NONE = "none"
    REASONING = "reasoning"
    MESSAGE = "message"


@dataclass
class _Open:
    kind: _Item
    id: str
    index: int
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)


Event = dict[str, object]
OnDone = Callable[[dict[str, object], Message], None]


class ResponseStream:
    """Native chunks -> Responses stream events, and the response object they add up to.

    States: NOT STARTED (nothing sent) -> STARTED (`response.created` and `response.in_progress` went out with the
    first chunk's events, so an error before the first chunk still gets a real status) -> in each output item in
    turn (`_Item`) -> DONE (`response.completed` or `response.incomplete`), or FAILED (`response.failed`).
    Thinking, then text, then calls: each item is closed before the next one opens; text after a call opens a new
    message. `on_done(response, assistant_message)` runs once the response is complete (to store it)."""

    def __init__(self, plan: ResponsePlan, on_done: OnDone | None = None) -> None:
        self.plan = plan
        self.echo = plan.echo
        self.with_tools = bool(plan.turn.tools)
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.on_done = on_done
        self.seq = 0
        self.started = False
        self.finished = False
        self.output: list[dict[str, object]] = []  # the items closed so far
        self.open: _Open | None = None
        self.held_logprobs: list[TokenLogprob] = []  # logprobs of text the parser still holds back
        self.thinking: list[str] = []
        self.content: list[str] = []
        self.calls: list[ToolCall] = []
        self.response: dict[str, object] | None = None  # the final object, once DONE

    # ---- events ------------------------------------------------------------------------------------------
    def _event(self, type_: str, **fields: object) -> Event:
        doc = wire.event_json(type_, self.seq, **fields)
        self.seq += 1
        return doc

    def _snapshot(self, status: str, **extra: Any) -> dict[str, object]:
        return wire.response_json(self.id, self.created_at, status, self.echo, [dict(i) for i in self.output],
                                  **extra)

    def _open(self, kind: _Item) -> list[Event]:
        out = self._close()
        index = len(self.output)
        if kind is _Item.REASONING:
            self.open = _Open(kind, new_id("rs"), index)
            item = wire.reasoning_item_json(self.open.id, [])
            part = wire.reasoning_text_json("")
        else:
            self.open = _Open(kind, new_id("msg"), index)
            item = wire.message_item_json(self.open.id, "in_progress", [])
            part = wire.output_text_json("")
        out.append(self._event("response.output_item.added", output_index=index, item=item))
        out.append(self._event("response.content_part.added", item_id=self.open.id, output_index=index,
                               content_index=0, part=part))
        return out

    def _close(self, status: str = "completed") -> list[Event]:
        """Close the open item (if any): its done events, and the item joins the output."""
        o = self.open
        if o is None:
            return []
        self.open = None
        text = "".join(o.text)
        if o.kind is _Item.REASONING:
            part = wire.reasoning_text_json(text)
            item = wire.reasoning_item_json(o.id, [part])
            done = self._event("response.reasoning_text.done", item_id=o.id, output_index=o.index, content_index=0,
                               text=text)
        else:
            lps = [wire.text_logprob_json(lp) for lp in o.logprobs]
            part = wire.output_text_json(text, lps)
            item = wire.message_item_json(o.id, status, [part])
            done = self._event("response.output_text.done", item_id=o.id, output_index=o.index, content_index=0,
                               text=text, logprobs=[wire.delta_logprob_json(lp) for lp in o.logprobs])
        self.output.append(item)
        return [done,
                self._event("response.content_part.done", item_id=o.id, output_index=o.index, content_index=0,
                            part=dict(part)),
                self._event("response.output_item.done", output_index=o.index, item=dict(item))]

    def _call(self, call: ToolCall) -> list[Event]:
        out = self._close()
        index = len(self.output)
        item_id = new_id("fc")
        call_id = call.id or new_id("call")
        arguments = json.dumps(call.arguments, ensure_ascii=False, separators=(",", ":"))
        namespace = self.plan.namespaces.get(call.name, "")
        self.calls.append(ToolCall(call.name, call.arguments, len(self.calls), call_id))
        out.append(self._event("response.output_item.added", output_index=index,
                               item=wire.function_call_item_json(item_id, "in_progress", call_id, call.name, "",
                                                                 namespace)))
        out.append(self._event("response.function_call_arguments.delta", item_id=item_id, output_index=index,
                               delta=arguments))
        out.append(self._event("response.function_call_arguments.done", item_id=item_id, output_index=index,
                               arguments=arguments))
        item = wire.function_call_item_json(item_id, "completed", call_id, call.name, arguments, namespace)
        self.output.append(item)
        out.append(self._event("response.output_item.done", output_index=index, item=dict(item)))
        return out

    def feed(self, chunk: ChatChunk) -> list[Event]:
        """The events one chunk adds, in order."""
        out: list[Event] = []
        if not self.started:
            self.started = True
            out.append(self._event("response.created", response=self._snapshot("in_progress")))
            out.append(self._event("response.in_progress", response=self._snapshot("in_progress")))
        if chunk.thinking:
            if self.open is None or self.open.kind is not _Item.REASONING:
                out.extend(self._open(_Item.REASONING))
            assert self.open is not None
            self.open.text.append(chunk.thinking)
            self.thinking.append(chunk.thinking)
            out.append(self._event("response.reasoning_text.delta", item_id=self.open.id,
                                   output_index=self.open.index, content_index=0, delta=chunk.thinking))
        if self.plan.logprobs and chunk.logprobs:
            self.held_logprobs.extend(chunk.logprobs)
        if chunk.content:
            if self.open is None or self.open.kind is not _Item.MESSAGE:
                out.extend(self._open(_Item.MESSAGE))
            assert self.open is not None
            lps, self.held_logprobs = self.held_logprobs, []
            self.open.text.append(chunk.content)
            self.open.logprobs.extend(lps)
            self.content.append(chunk.content)
            out.append(self._event("response.output_text.delta", item_id=self.open.id,
                                   output_index=self.open.index, content_index=0, delta=chunk.content,
                                   logprobs=[wire.delta_logprob_json(lp) for lp in lps]))
        if self.with_tools:  # without tools offered, nothing can be a call (as chat completions)
            for call in chunk.tool_calls:
                out.extend(self._call(call))
        if chunk.done:
            out.extend(self._finish(chunk))
        return out

    def _finish(self, chunk: ChatChunk) -> list[Event]:
        incomplete = chunk.done_reason == "length"
        if self.open is not None and self.open.kind is _Item.MESSAGE and self.held_logprobs:
            self.open.logprobs.extend(self.held_logprobs)
        self.held_logprobs = []
        out = self._close("incomplete" if incomplete else "completed")
        m = chunk.metrics
        usage = wire.usage_json(m.prompt_eval_count if m else 0, m.eval_count if m else 0)
        status = "incomplete" if incomplete else "completed"
        self.response = self._snapshot(status, usage=usage, completed_at=int(time.time()),
                                       incomplete_reason="max_output_tokens" if incomplete else None)
        self.finished = True
        if self.on_done is not None:
            self.on_done(self.response, self.assistant_message())
        out.append(self._event(f"response.{status}", response=self.response))
        return out

    def assistant_message(self) -> Message:
        """The answer as a domain message, for the stored conversation."""
        calls = tuple(ToolCallIn(c.name, c.arguments, c.index, c.id) for c in self.calls)
        return Message(role="assistant", content="".join(self.content), thinking="".join(self.thinking),
                       tool_calls=calls)

    def fail(self, exc: Exception) -> list[Event]:
        """An error after the stream began: one `response.failed` with the error, then the stream ends."""
        if isinstance(exc, HerdError):
            message = exc.message
            code = "invalid_prompt" if isinstance(exc, InvalidRequest) else "server_error"
        else:
            message, code = f"internal error: {exc}", "server_error"
        self.open = None
        self.finished = True
        return [self._event("response.failed", response=self._snapshot("failed",
                                                                       error=wire.error_json(code, message)))]

    # ---- SSE ---------------------------------------------------------------------------------------------
    def encode(self, chunk: ChatChunk) -> str | None:
        return sse(self.feed(chunk)) or None

    def encode_error(self, exc: HerdError | Exception) -> str:
        return sse(self.fail(exc))


def sse(events: list[Event]) -> str:
    return "".join(f"event: {e['type']}\ndata: {dumps(e)}\n\n" for e in events)


async def collect(stream: ResponseStream, chunks: AsyncIterator[ChatChunk]) -> dict[str, object]:
    """stream:false: the same state machine over the whole stream; its final response object."""
    async for chunk in chunks:
        stream.feed(chunk)
    if stream.response is None:
        raise HerdError("generation ended without a final chunk")
    return stream.response
