"""Anthropic's Messages API translated onto the chat service.

A request becomes a `ChatTurn`: `system` is the first message, each message's blocks fold into herd's messages
(tool results first, as their own `tool` messages, then the turn's text, images, calls and thinking), tools get
the OpenAI-style definition chat templates read, and `tool_choice`/`thinking` map onto the turn's constraint and
think settings. The chunk stream then becomes one `message` object (stream:false) or Anthropic's SSE events
(`MessageStream`). Both read the same `ChatChunk`s, so they cannot disagree.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from enum import Enum

from herd.api.anthropic import wire
from herd.api.streaming import dumps
from herd.errors import InvalidRequest, LimitExceeded
from herd.registry.names import ModelName
from herd.services.chat import ChatChunk, drain
from herd.types import ChatTurn, Message, Think, ToolCallIn, ToolDef

# thinking.budget_tokens -> herd's think level. Claude Code's own budgets land one per level: "think" asks for
# 4,000 tokens (low), "think hard" for 10,000 (medium), "ultrathink" for 31,999 (high).
LOW_BELOW = 4096
MEDIUM_BELOW = 16384

# Text blocks of one turn are joined as paragraphs: clients split one prompt into several blocks (Claude Code puts
# its reminders in blocks of their own), and run together they would read as one sentence.
TEXT_JOIN = "\n\n"

_USER_ONLY = (wire.ImageBlock, wire.ToolResultBlock)
_ASSISTANT_ONLY = (wire.ToolUseBlock, wire.ThinkingBlock, wire.RedactedThinkingBlock)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"  # msg_<24 hex>, toolu_<24 hex>: Anthropic's prefixes


def thinking_level(budget: int) -> str:
    if budget < LOW_BELOW:
        return "low"
    if budget < MEDIUM_BELOW:
        return "medium"
    return "high"


# ---- request -----------------------------------------------------------------------------------------------


def decoded_messages(req: wire.CountTokensRequest) -> list[tuple[str, list[wire.Block]]]:
    """Each message's role and blocks, with blocks checked against the role that may send them."""
    out: list[tuple[str, list[wire.Block]]] = []
    for i, m in enumerate(req.messages):
        path = f"messages.{i}.content"
        if m.role == "system":
            out.append((m.role, wire.content_blocks(m.content, path, ("text",), "system content block")))
            continue
        blocks = wire.content_blocks(m.content, path)
        wrong = _USER_ONLY if m.role == "assistant" else _ASSISTANT_ONLY
        for j, block in enumerate(blocks):
            if isinstance(block, wrong):
                raise InvalidRequest(f"{path}.{j}: a {block.type} block is not allowed in a {m.role} message")
        out.append((m.role, blocks))
    return out


def image_urls(messages: list[tuple[str, list[wire.Block]]]) -> list[str]:
    """The URL image sources of a request, in order, tool results included."""
    urls: list[str] = []
    for _, blocks in messages:
        for block in blocks:
            parts = block.content if isinstance(block, wire.ToolResultBlock) and isinstance(block.content, list) \
                else [block]
            urls.extend(p.source.url for p in parts
                        if isinstance(p, wire.ImageBlock) and isinstance(p.source, wire.URLSource))
    return urls


async def fetch_remote_images(req: wire.CountTokensRequest, max_bytes: int, max_images: int) -> dict[str, bytes]:
    """With HERD_ALLOW_IMAGE_URLS=1: every URL image source fetched now, bounded by the request's image limits,
    so that the translation itself stays a pure function of the request and these bytes."""
    from herd.image_fetch import fetch_image

    urls = image_urls(decoded_messages(req))
    if len(urls) > max_images:
        raise LimitExceeded(f"{len(urls)} images exceed the limit of {max_images} per request")
    fetched: dict[str, bytes] = {}
    for url in urls:
        if url not in fetched:
            fetched[url] = await fetch_image(url, max_bytes)
    return fetched


def _image_bytes(source: wire.Base64Source | wire.URLSource, path: str, fetched: Mapping[str, bytes]) -> bytes:
    if isinstance(source, wire.URLSource):
        data = fetched.get(source.url)
        if data is None:
            raise InvalidRequest(f"{path}: image URLs are not fetched by this server (set HERD_ALLOW_IMAGE_URLS=1 "
                                 "to allow it); send the image as base64 data instead")
        return data
    try:
        return base64.b64decode(source.data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{path}.data: invalid base64 image data") from None


def _tool_result(block: wire.ToolResultBlock, path: str, names: Mapping[str, str], fetched: Mapping[str, bytes]
                 ) -> Message:
    name = names.get(block.tool_use_id)
    if name is None:
        # Anthropic refuses a result for a call it never made; a template could not name its tool either.
        raise InvalidRequest(f"{path}.tool_use_id: no earlier tool_use block has the id '{block.tool_use_id}'")
    images: tuple[bytes, ...] = ()
    if isinstance(block.content, str):
        text = block.content
    else:
        text = TEXT_JOIN.join(p.text for p in block.content if isinstance(p, wire.TextBlock))
        images = tuple(_image_bytes(p.source, f"{path}.content.{k}.source", fetched)
                       for k, p in enumerate(block.content) if isinstance(p, wire.ImageBlock))
    if block.is_error:
        # herd's messages have no error flag: the template would show a failure as an ordinary result, so the
        # model is told in the text itself.
        text = f"Error: {text}"
    return Message(role="tool", content=text, images=images, tool_name=name, tool_call_id=block.tool_use_id)


def _messages(req: wire.CountTokensRequest, fetched: Mapping[str, bytes]) -> list[Message]:
    out: list[Message] = []
    system = [b.text for b in wire.system_blocks(req.system)] if req.system is not None else []
    if any(system):
        out.append(Message(role="system", content=TEXT_JOIN.join(t for t in system if t)))
    names: dict[str, str] = {}  # tool_use id -> tool name, from the calls made so far
    for i, (role, blocks) in enumerate(decoded_messages(req)):
        path = f"messages.{i}.content"
        texts: list[str] = []
        images: list[bytes] = []
        calls: list[ToolCallIn] = []
        thinking: list[str] = []
        results: list[Message] = []
        for j, block in enumerate(blocks):
            if isinstance(block, wire.TextBlock):
                texts.append(block.text)
            elif isinstance(block, wire.ImageBlock):
                images.append(_image_bytes(block.source, f"{path}.{j}.source", fetched))
            elif isinstance(block, wire.ToolUseBlock):
                calls.append(ToolCallIn(block.name, block.input, len(calls), block.id))
                names[block.id] = block.name
            elif isinstance(block, wire.ToolResultBlock):
                results.append(_tool_result(block, f"{path}.{j}", names, fetched))
            elif isinstance(block, wire.ThinkingBlock):
                thinking.append(block.thinking)
            # redacted_thinking is dropped: it is Anthropic's encrypted reasoning, opaque by design, which only
            # the model that wrote it can read. Dropping it is what any other model would do with it.
        # The results answer the previous assistant turn's calls, so they come before this turn's own text
        # (Anthropic asks clients to put them first; Ollama orders them the same way).
        out.extend(results)
        if texts or images or calls or thinking or not results:
            out.append(Message(role=role, content=TEXT_JOIN.join(texts), thinking="".join(thinking),
                               images=tuple(images), tool_calls=tuple(calls)))
    return out


def _clear_thinking(messages: list[Message], edits: list[wire.ClearThinkingEdit]) -> list[Message]:
    """context_management's clear_thinking: only the last `keep` assistant turns keep their thinking."""
    for edit in edits:
        if edit.keep == "all":
            continue
        keep = edit.keep.value if isinstance(edit.keep, wire.KeepThinkingTurns) else 1
        with_thinking = [i for i, m in enumerate(messages) if m.role == "assistant" and m.thinking]
        for i in with_thinking[:-keep]:
            messages[i] = replace(messages[i], thinking="")
    return messages


def _tools(params: list[wire.ToolParam]) -> tuple[ToolDef, ...]:
    out = []
    seen: set[str] = set()
    for t in params:
        if t.name in seen:
            raise InvalidRequest(f"tools: tool names must be unique ('{t.name}' appears twice)")
        seen.add(t.name)
        description = t.description or ""
        # The template sees the definition the way every other dialect sends it.
        raw: dict[str, object] = {"type": "function", "function": {"name": t.name, "description": description,
                                                                   "parameters": t.input_schema}}
        out.append(ToolDef(name=t.name, description=description, parameters=t.input_schema, raw=raw))
    return tuple(out)


def _tool_choice(choice: wire.ToolChoice | None, names: list[str]) -> tuple[bool, str | None, bool]:
    """(keep the tools, force_tool, parallel calls). `any` forces some call and `tool` that one, from the first
    token (a grammar); `none` hides the tools from the model, as Anthropic does."""
    if choice is None:
        return True, None, True
    parallel = not choice.disable_parallel_tool_use
    if choice.type == "auto":
        return True, None, parallel
    if choice.type == "none":
        return False, None, True
    if not names:
        raise InvalidRequest(f"tool_choice: type '{choice.type}' needs at least one tool in 'tools'")
    if choice.type == "any":
        return True, "", parallel
    if choice.name is None:
        raise InvalidRequest("tool_choice.name: Field required")
    if choice.name not in names:
        raise InvalidRequest(f"tool_choice.name: no tool named '{choice.name}' in 'tools'")
    return True, choice.name, parallel


# output_config.effort -> think level; xhigh is past high, as in herd's OpenAI reasoning efforts.
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "max", "max": "max"}


def _think(thinking: wire.ThinkingConfig | None, config: wire.OutputConfig | None) -> Think | None:
    """None leaves it to the model (thinking models think, others do not)."""
    effort = _EFFORT[config.effort] if config is not None and config.effort is not None else None
    if thinking is None or thinking.type == "adaptive":
        # Adaptive thinking lets the model decide; an effort level, where given, sets how hard a model that
        # thinks does (Claude Code sends one with every request: a model without thinking just answers).
        return Think(True, effort, optional=True) if effort else None
    if thinking.type == "disabled":
        # An effort level with thinking off has nothing left to set here: herd maps effort onto thinking only.
        return Think(False)
    if thinking.budget_tokens is None:
        raise InvalidRequest("thinking.enabled.budget_tokens: Field required")
    return Think(True, thinking_level(thinking.budget_tokens))  # an explicit budget wins over an effort level


def _format(req: wire.CountTokensRequest) -> object:
    fmt = req.output_config.format if req.output_config is not None else None
    if fmt is not None and req.output_format is not None:
        raise InvalidRequest("output_format: give either output_format or output_config.format, not both")
    fmt = fmt or req.output_format
    return fmt.schema_ if fmt is not None else None


def _options(req: wire.MessagesRequest) -> dict[str, object]:
    options: dict[str, object] = {
        "num_predict": req.max_tokens,
        "temperature": req.temperature if req.temperature is not None else 1.0,  # Anthropic's default
    }
    if req.top_p is not None:
        options["top_p"] = req.top_p
    if req.top_k is not None:
        options["top_k"] = req.top_k
    if req.stop_sequences:
        for k, seq in enumerate(req.stop_sequences):
            if not seq:
                raise InvalidRequest(f"stop_sequences.{k}: a stop sequence must not be empty")
        options["stop"] = list(req.stop_sequences)
    return options


def _model_name(raw: str) -> str:
    model = raw.strip()
    if not model:
        raise InvalidRequest("model: a model name is required")
    ModelName.parse(model)  # raises "invalid model name"
    return model


def thinking_shown(req: wire.CountTokensRequest) -> bool:
    """False with thinking.display "omitted": thinking blocks then come without their text."""
    return req.thinking is None or req.thinking.display != "omitted"


def chat_turn(req: wire.CountTokensRequest, fetched: Mapping[str, bytes] | None = None) -> ChatTurn:
    """The turn a /v1/messages (or count_tokens) request asks for. `fetched` holds the bytes of URL images
    (only when the server allows fetching them)."""
    model = _model_name(req.model)
    if not req.messages:
        raise InvalidRequest("messages: at least one message is required")
    if req.mcp_servers:
        raise InvalidRequest("mcp_servers: MCP connectors are not supported by herd")
    messages = _clear_thinking(_messages(req, fetched or {}), wire.context_edits(req.context_management))
    tools = _tools(wire.tool_params(req.tools))
    keep_tools, force_tool, parallel = _tool_choice(req.tool_choice, [t.name for t in tools])
    think = _think(req.thinking, req.output_config)
    if force_tool is not None and keep_tools and req.thinking is not None and req.thinking.type == "enabled":
        # A forced call starts at the first token, so there is no room to think (Anthropic refuses it too).
        raise InvalidRequest("thinking may not be enabled when tool_choice forces tool use")
    options: dict[str, object] = {}
    if isinstance(req, wire.MessagesRequest):
        options = _options(req)
        budget = req.thinking.budget_tokens if req.thinking is not None and req.thinking.type == "enabled" else None
        if budget is not None and budget >= req.max_tokens:
            # max_tokens counts thinking and answer together, as in herd's num_predict.
            raise InvalidRequest("max_tokens: must be greater than thinking.budget_tokens")
    return ChatTurn(
        model=model,
        messages=tuple(messages),
        tools=tools if keep_tools else (),
        format=_format(req),
        options=options,
        think=think,
        force_tool=force_tool if keep_tools else None,
        parallel_tool_calls=parallel,
    )


# ---- response ----------------------------------------------------------------------------------------------


def stop_reason(chunk: ChatChunk, saw_tool_calls: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for the done chunk: a call ends the turn with "tool_use"; running out of
    max_tokens is "max_tokens"; a stop sequence is "stop_sequence", echoed; the model's own end is "end_turn"."""
    if saw_tool_calls:
        return "tool_use", None
    if chunk.done_reason == "length":
        return "max_tokens", None
    if chunk.stop_sequence:
        return "stop_sequence", chunk.stop_sequence
    return "end_turn", None


def _usage(chunk: ChatChunk) -> dict[str, int]:
    m = chunk.metrics
    return wire.usage_json(m.prompt_eval_count if m else 0, m.eval_count if m else 0)


def _arguments_json(arguments: dict[str, object]) -> str:
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def message_of(model: str, last: ChatChunk, id_: str | None = None, show_thinking: bool = True
               ) -> dict[str, object]:
    """A drained stream as one `message`: thinking, then text (kept when empty only if it is the only block),
    then one tool_use block per call."""
    content: list[dict[str, object]] = []
    if last.thinking:
        content.append(wire.thinking_json(last.thinking if show_thinking else ""))
    if last.content or not (last.thinking or last.tool_calls):
        content.append(wire.text_json(last.content))
    content.extend(wire.tool_use_json(new_id("toolu"), c.name, c.arguments) for c in last.tool_calls)
    reason, sequence = stop_reason(last, bool(last.tool_calls))
    return wire.message_json(id_ or new_id("msg"), model, content, reason, sequence, _usage(last))


async def message(model: str, chunks: AsyncIterator[ChatChunk], show_thinking: bool = True) -> dict[str, object]:
    """stream:false: the whole stream drained into one message."""
    return message_of(model, await drain(chunks), show_thinking=show_thinking)


class _Open(Enum):
    """Which content block the stream has open. Tool calls arrive whole, so a tool_use block opens and closes
    in one go and is never left open."""

    NONE = "none"
    THINKING = "thinking"
    TEXT = "text"


class MessageStream:
    """Chunks -> Anthropic's SSE events: message_start and a ping (sent with the first chunk's events, so that a
    failure before the first token still gets a real status), then per block content_block_start, its deltas and
    content_block_stop, then message_delta (stop reason and the final usage) and message_stop. Switching from
    thinking to text (or back) closes the open block first; each tool call is one tool_use block whose input
    arrives as one input_json_delta. A stream with no output at all sends one empty text block, as the
    non-streamed message has one. With `show_thinking` false a thinking block opens and closes without deltas."""

    def __init__(self, model: str, show_thinking: bool = True) -> None:
        self.model = model
        self.show_thinking = show_thinking
        self.id = new_id("msg")
        self.started = False
        self.open = _Open.NONE
        self.index = 0  # the index of the next block to open
        self.blocks = 0
        self.saw_tool_calls = False

    def _start(self, out: list[dict[str, object]], kind: _Open, block: dict[str, object]) -> None:
        self._close(out)
        out.append(wire.block_start_json(self.index, block))
        self.open = kind
        self.blocks += 1

    def _close(self, out: list[dict[str, object]]) -> None:
        if self.open is not _Open.NONE:
            out.append(wire.block_stop_json(self.index))
            self.index += 1
            self.open = _Open.NONE

    def events(self, chunk: ChatChunk) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        if not self.started:
            self.started = True
            # The prompt's token count is known only when generation ends: it comes in message_delta.
            start = wire.message_json(self.id, self.model, [], None, None, wire.usage_json(0, 0))
            out += [wire.message_start_json(start), wire.ping_json()]
        if chunk.thinking:
            if self.open is not _Open.THINKING:
                self._start(out, _Open.THINKING, wire.thinking_json(""))
            if self.show_thinking:
                out.append(wire.block_delta_json(self.index, {"type": "thinking_delta",
                                                              "thinking": chunk.thinking}))
        if chunk.content:
            if self.open is not _Open.TEXT:
                self._start(out, _Open.TEXT, wire.text_json(""))
            out.append(wire.block_delta_json(self.index, {"type": "text_delta", "text": chunk.content}))
        for call in chunk.tool_calls:
            self.saw_tool_calls = True
            self._start(out, _Open.NONE, wire.tool_use_json(new_id("toolu"), call.name, {}))
            out.append(wire.block_delta_json(self.index, {"type": "input_json_delta",
                                                          "partial_json": _arguments_json(call.arguments)}))
            out.append(wire.block_stop_json(self.index))
            self.index += 1
        if chunk.done:
            if not self.blocks:
                self._start(out, _Open.TEXT, wire.text_json(""))
            self._close(out)
            reason, sequence = stop_reason(chunk, self.saw_tool_calls)
            out.append(wire.message_delta_json(reason, sequence, _usage(chunk)))
            out.append(wire.message_stop_json())
        return out

    def encode(self, chunk: ChatChunk) -> str | None:
        return "".join(sse(doc) for doc in self.events(chunk)) or None


def sse(doc: dict[str, object]) -> str:
    """One SSE event, named by the document's own type, as Anthropic sends them."""
    return f"event: {doc['type']}\ndata: {dumps(doc)}\n\n"
