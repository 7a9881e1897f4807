"""The OpenAI-compatible layer (spec 9), translated onto the native services.

Requests become a `ChatTurn` (chat.completions), a `GenerateRequest` (completions) or an `EmbedRequest`
(embeddings), mapped the way Ollama's `openai/openai.go` maps them; the native chunk stream is then turned into
OpenAI's objects. Streaming and non-streaming read the same `ChatChunk`s, so they cannot disagree.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from herd.api.ollama import wire as native
from herd.api.openai import wire
from herd.errors import InvalidRequest, LimitExceeded, ModelNotFound
from herd.parsing.base import ToolCall
from herd.registry.models import ModelCatalog
from herd.registry.names import ModelName
from herd.services.chat import ChatChunk
from herd.services.choices import MAX_CHOICES, drain_all
from herd.services.embed import EmbedRequest, EmbedResult
from herd.services.generate import GenerateRequest
from herd.types import ChatTurn, Message, Think, ToolCallIn

# reasoning_effort / reasoning.effort -> native think (spec 9.1)
EFFORT: dict[str, Think] = {
    "none": Think(False),
    "minimal": Think(True, "low"),
    "low": Think(True, "low"),
    "medium": Think(True, "medium"),
    "high": Think(True, "high"),
    "max": Think(True, "max"),
    "xhigh": Think(True, "max"),
    "ultra": Think(True, "max"),
}
EFFORT_ERROR = ('invalid reasoning value: "{}" (must be "minimal", "low", "medium", "high", "xhigh", "ultra", '
                 '"max", or "none")')
_IMAGE_PREFIXES = tuple(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp", "gif", "bmp"))
# Ollama's text, word for word (clients match it); HERD_ALLOW_IMAGE_URLS=1 lets the server fetch them instead.
IMAGE_URLS_REFUSED = "image URLs are not currently supported, please use base64 encoded data instead"


def _go_type(value: object) -> str:
    """Go's %T of a decoded JSON value, for error texts that match Ollama's."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


def new_id(prefix: str) -> str:
    return f"{prefix}-{random.randrange(999)}"  # Ollama's ids: a random number below 999


# ---- chat.completions: request ------------------------------------------------------------------------------


def is_remote(url: object) -> bool:
    return isinstance(url, str) and url.startswith(("http://", "https://"))


def _image_url_parts(req: wire.ChatCompletionRequest) -> list[dict[str, object]]:
    """The image_url content parts of a request, in order."""
    out = []
    for m in req.messages:
        if isinstance(m.content, list):
            out.extend(p for p in m.content if isinstance(p, dict) and p.get("type") == "image_url")
    return out


async def fetch_remote_images(req: wire.ChatCompletionRequest, max_bytes: int, max_images: int) -> None:
    """With HERD_ALLOW_IMAGE_URLS=1: each http(s) image URL fetched now and put back as a data URL, so the
    translation below sees only inline images. Bounded by the request's image limits."""
    import base64

    from herd.image_fetch import fetch_image

    parts = _image_url_parts(req)
    if len(parts) > max_images:
        raise LimitExceeded(f"{len(parts)} images exceed the limit of {max_images} per request")
    for part in parts:
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if is_remote(url):
            data = await fetch_image(str(url), max_bytes)
            part["image_url"] = {"url": "data:;base64," + base64.b64encode(data).decode()}


def image_bytes(url: str) -> bytes:
    if is_remote(url):
        raise InvalidRequest(IMAGE_URLS_REFUSED)
    if url.startswith("data:;base64,"):  # a blank MIME type, like the native API's bare base64
        data = url[len("data:;base64,"):]
    else:
        prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
        if prefix is None:
            raise InvalidRequest("invalid image input")
        data = url[len(prefix):]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("invalid image input") from None


def no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: Python's json reads them, Go's does not


def _tool_calls(calls: list[wire.ToolCallIn] | None) -> tuple[ToolCallIn, ...]:
    out = []
    for i, call in enumerate(calls or ()):
        try:
            args = json.loads(call.function.arguments, parse_constant=no_constant) if call.function.arguments else {}
        except (ValueError, RecursionError):  # RecursionError: a string of thousands of nested brackets
            raise InvalidRequest("invalid tool call arguments") from None
        if not isinstance(args, dict):
            raise InvalidRequest("invalid tool call arguments")
        out.append(ToolCallIn(call.function.name, args, call.index if call.index is not None else i, call.id or ""))
    return tuple(out)


def _tool_name_for(messages: list[wire.ChatMessage], call_id: str) -> str:
    """A tool result names its call by id only: find the function name in the assistant's earlier calls."""
    for m in reversed(messages):
        for call in m.tool_calls or ():
            if call.id == call_id:
                return call.function.name
    return ""


def _messages(messages: list[wire.ChatMessage]) -> tuple[Message, ...]:
    out: list[Message] = []
    for m in messages:
        role = m.role.lower()
        tool_name = ""
        if role == "tool":
            tool_name = m.name or (_tool_name_for(messages, m.tool_call_id) if m.tool_call_id else "")
        calls = _tool_calls(m.tool_calls)
        full = Message(role=role, thinking=m.reasoning or "", tool_calls=calls, tool_name=tool_name,
                       tool_call_id=m.tool_call_id or "")

        if isinstance(m.content, str):
            out.append(replace(full, content=m.content))
        elif isinstance(m.content, list):
            # Each content part becomes its own message with the same role (Ollama); the message's tool
            # calls and reasoning go on the last of them.
            parts = [_content_part(role, part) for part in m.content]
            if parts and (calls or m.reasoning or tool_name or m.tool_call_id):
                parts[-1] = replace(full, content=parts[-1].content, images=parts[-1].images)
            out.extend(parts)
        elif m.content is None and m.tool_calls is not None:
            out.append(full)
        else:
            # Content may be left out only when the message carries tool calls.
            raise InvalidRequest(f"invalid message content type: {_go_type(m.content)}")
    return tuple(out)


def _content_part(role: str, part: object) -> Message:
    if not isinstance(part, dict):
        raise InvalidRequest("invalid message format")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest("invalid message format")
        return Message(role=role, content=text)
    if kind == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str):
            raise InvalidRequest("invalid message format")
        return Message(role=role, images=(image_bytes(url),))
    if kind == "input_audio":
        audio = part.get("input_audio")
        data = audio.get("data") if isinstance(audio, dict) else None
        if not isinstance(data, str):
            raise InvalidRequest("invalid message format")
        try:
            # Audio goes where images go (Ollama passes both to the model's encoder).
            return Message(role=role, images=(base64.b64decode(data, validate=True),))
        except (binascii.Error, ValueError):
            raise InvalidRequest("invalid audio input") from None
    raise InvalidRequest("invalid message format")


def _stop(value: object, strict: bool) -> list[str] | None:
    """`stop`: a string or a list. Chat drops non-strings silently; completions refuse them (Ollama)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        out = []
        for s in value:
            if isinstance(s, str):
                out.append(s)
            elif strict:
                raise InvalidRequest(f"invalid type for 'stop' field: {_go_type(s)}")
        return out
    return None


def _think(req: wire.ChatCompletionRequest) -> Think | None:
    effort = req.reasoning.effort if req.reasoning is not None else req.reasoning_effort
    if not effort:
        return None  # the model's default
    think = EFFORT.get(effort)
    if think is None:
        raise InvalidRequest(EFFORT_ERROR.format(effort))
    return think


def _format(rf: wire.ResponseFormat | None) -> object:
    if rf is None:
        return None
    kind = rf.type.strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema" and rf.json_schema is not None:
        return rf.json_schema.schema_  # name and strict are not used: the schema is always enforced
    return None  # "text" and unknown types: unconstrained


def tool_choice(choice: object, tool_names: list[str]) -> tuple[bool, str | None]:
    """(keep tools, force_tool). OpenAI's tool_choice, which Ollama ignores, maps onto the constraint:
    "required" forces some call, a named function forces that one, "none" hides the tools from the model."""
    if choice is None or choice == "auto":
        return True, None
    if choice == "none":
        return False, None
    if choice == "required":
        forced = ""
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) \
            and isinstance(choice["function"].get("name"), str):
        forced = choice["function"]["name"]
        if tool_names and forced not in tool_names:
            raise InvalidRequest(f"Invalid value for 'tool_choice': no function named '{forced}' in 'tools'.")
    else:
        raise InvalidRequest("Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a named "
                             "function.")
    if not tool_names:
        raise InvalidRequest("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
                             "specified.")
    return True, forced


def _refuse_unsupported(req: wire.ChatCompletionRequest) -> None:
    """Fields that ask for something herd cannot do are a 400 naming them, never a quiet answer without them."""
    if req.audio is not None or (req.modalities and any(m != "text" for m in req.modalities)):
        raise InvalidRequest("Invalid value for 'modalities': herd generates text only (no audio output)")
    if req.web_search_options is not None:
        raise InvalidRequest("'web_search_options' is not supported: herd has no web search")
    if req.functions is not None or req.function_call is not None:
        raise InvalidRequest("'functions' and 'function_call' are deprecated and not supported: use 'tools' and "
                             "'tool_choice'")


def choice_count(n: int | None) -> int:
    """`n`: how many choices to generate (1 when not given)."""
    if n is None:
        return 1
    if not 1 <= n <= MAX_CHOICES:
        raise InvalidRequest(f"Invalid value for 'n': {n} (must be between 1 and {MAX_CHOICES})")
    return n


def logit_bias(raw: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's logit_bias: token ids (as strings) of the model's own vocabulary, each biased by -100..100. The
    ids are checked against the vocabulary by the chat service, once the model is known."""
    out = []
    for key, value in (raw or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequest(f"Invalid key in 'logit_bias': {key!r} is not a token id") from None
        if not -100 <= value <= 100:
            raise InvalidRequest(f"Invalid value in 'logit_bias' for token {key}: {value} (must be between -100 and "
                                 "100)")
        out.append((token, float(value)))
    return tuple(out)


def chat_turn(req: wire.ChatCompletionRequest) -> ChatTurn:
    """Spec 9.1, in Ollama's order: messages present, then message content, then the native checks."""
    if not req.messages:
        raise InvalidRequest("[] is too short - 'messages'")
    _refuse_unsupported(req)
    messages = _messages(req.messages)
    options: dict[str, object] = {}
    stop = _stop(req.stop, strict=False)
    if stop is not None:
        options["stop"] = stop
    # Newer SDKs send max_completion_tokens (Ollama ignores it; herd reads it, before the deprecated max_tokens).
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if limit is not None:
        options["num_predict"] = limit
    options["temperature"] = req.temperature if req.temperature is not None else 1.0  # OpenAI's default
    if req.seed is not None:
        options["seed"] = req.seed
    if req.frequency_penalty is not None:
        options["frequency_penalty"] = req.frequency_penalty
    if req.presence_penalty is not None:
        options["presence_penalty"] = req.presence_penalty
    options["top_p"] = req.top_p if req.top_p is not None else 1.0
    think = _think(req)
    tools = native.tool_defs(req.tools)
    keep_tools, force_tool = tool_choice(req.tool_choice, [t.name for t in tools])
    top = req.top_logprobs or 0
    if not 0 <= top <= 20:
        raise InvalidRequest("top_logprobs must be between 0 and 20")
    model = model_name(req.model)
    return ChatTurn(
        model=model,
        messages=messages,
        tools=tools if keep_tools else (),
        format=_format(req.response_format),
        options=options,
        think=think,
        logprobs=bool(req.logprobs),
        top_logprobs=top,
        debug_render_only=bool(req.debug_render_only),
        force_tool=force_tool,
        parallel_tool_calls=req.parallel_tool_calls is not False,
        logit_bias=logit_bias(req.logit_bias),
    )


def model_name(raw: str | None) -> str:
    model = (raw or "").strip()
    if not model:
        raise InvalidRequest("model is required")
    ModelName.parse(model)  # raises "invalid model name"
    return model


# ---- chat.completions: response -----------------------------------------------------------------------------


def _finish_reason(reason: str, saw_tool_calls: bool) -> str | None:
    if saw_tool_calls and reason == "stop":
        return "tool_calls"
    return reason or None


def _debug_info(chunk: ChatChunk, image_count: int) -> dict[str, object]:
    return {"rendered_template": chunk.debug_prompt, "image_count": image_count}


def _usage(lasts: list[ChatChunk]) -> dict[str, int]:
    """The prompt once (every choice reads the same prompt), the completions of all choices together."""
    metrics = [c.metrics for c in lasts if c.metrics is not None]
    return wire.usage_json(metrics[0].prompt_eval_count if metrics else 0, sum(m.eval_count for m in metrics))


async def chat_completion(model: str, streams: list[AsyncIterator[ChatChunk]], with_tools: bool,
                          image_count: int = 0) -> dict[str, object]:
    """stream:false: each choice's stream drained (all at once) into one chat.completion."""
    lasts = await drain_all(streams)
    if lasts[0].debug_prompt is not None:
        return wire.chat_completion_json(new_id("chatcmpl"), int(time.time()), model,
                                         [wire.choice_json(0, wire.message_json("", "", ()), None)],
                                         wire.usage_json(0, 0), debug_info=_debug_info(lasts[0], image_count))
    choices = []
    for i, last in enumerate(lasts):
        tool_calls = last.tool_calls if with_tools else ()
        choices.append(wire.choice_json(i, wire.message_json(last.content, last.thinking, tool_calls),
                                        _finish_reason(last.done_reason, bool(tool_calls)), last.logprobs))
    return wire.chat_completion_json(new_id("chatcmpl"), int(time.time()), model, choices, _usage(lasts))


class ChatStream:
    """Native chunks -> chat.completion.chunk objects (spec 9.1): role only on the first delta, reasoning and
    content/tool calls in separate chunks, complete tool calls, then a finish chunk and an optional usage chunk.
    Every chunk of a stream shares the first chunk's id and `created`."""

    def __init__(self, model: str, include_usage: bool, image_count: int = 0, n: int = 1) -> None:
        self.model = model
        self.include_usage = include_usage
        self.image_count = image_count
        self.id = new_id("chatcmpl")
        self.created = int(time.time())
        # Per choice (n > 1 interleaves the choices' chunks, each tagged with its index).
        self.role_sent = [False] * n
        self.saw_tool_calls = [False] * n
        self.lasts: list[ChatChunk] = []

    def _delta(self, index: int, content: str, reasoning: str = "", calls: tuple[ToolCall, ...] = ()
               ) -> dict[str, object]:
        delta: dict[str, object] = {}
        if not self.role_sent[index]:
            delta["role"] = "assistant"
            self.role_sent[index] = True
        delta["content"] = content
        if reasoning:
            delta["reasoning"] = reasoning
        if calls:
            delta["tool_calls"] = [wire.tool_call_json(c) for c in calls]
        return delta

    def events(self, chunk: ChatChunk, index: int = 0) -> list[dict[str, object]]:
        if chunk.debug_prompt is not None:
            return [wire.chat_completion_json(self.id, self.created, self.model,
                                              [wire.choice_json(0, wire.message_json("", "", ()), None)],
                                              wire.usage_json(0, 0), debug_info=_debug_info(chunk, self.image_count))]
        out = []
        if chunk.thinking:
            out.append(wire.chat_chunk_json(self.id, self.created, self.model, self._delta(index, "", chunk.thinking),
                                            None, index=index))
        if chunk.content or chunk.tool_calls or chunk.logprobs:
            self.saw_tool_calls[index] |= bool(chunk.tool_calls)
            out.append(wire.chat_chunk_json(self.id, self.created, self.model,
                                            self._delta(index, chunk.content, calls=chunk.tool_calls), None,
                                            chunk.logprobs, index=index))
        if chunk.done:
            out.append(wire.chat_chunk_json(self.id, self.created, self.model, {},
                                            _finish_reason(chunk.done_reason, self.saw_tool_calls[index]),
                                            index=index))
            self.lasts.append(chunk)
            if self.include_usage and len(self.lasts) == len(self.role_sent):  # after the last choice ends
                out.append(wire.usage_chunk_json(self.id, self.created, self.model, "chat.completion.chunk",
                                                 _usage(self.lasts)))
        return out


# ---- completions ---------------------------------------------------------------------------------------------


def completion_request(req: wire.CompletionRequest) -> GenerateRequest:
    """Spec 9.2. Penalties are always sent (default 0) and a top_p of 0 means 1.0, as in Ollama."""
    options: dict[str, object] = {}
    stop = _stop(req.stop, strict=True)
    if stop is not None:
        options["stop"] = stop
    if req.max_tokens is not None:
        options["num_predict"] = req.max_tokens
    options["temperature"] = req.temperature if req.temperature is not None else 1.0
    if req.seed is not None:
        options["seed"] = req.seed
    options["frequency_penalty"] = req.frequency_penalty or 0.0
    options["presence_penalty"] = req.presence_penalty or 0.0
    options["top_p"] = req.top_p if req.top_p else 1.0
    n = req.logprobs if req.logprobs is not None and req.logprobs > 0 else 0
    if n > 20:
        raise InvalidRequest("top_logprobs must be between 0 and 20")  # the native check it becomes
    if req.echo:
        raise InvalidRequest("'echo' is not supported: the prompt is not returned with the completion")
    if req.best_of is not None and req.best_of != 1:
        raise InvalidRequest("Invalid value for 'best_of': only 1 is supported (use 'n' for several completions)")
    return GenerateRequest(
        model=(req.model or "").strip(),
        prompt=req.prompt or "",
        suffix=req.suffix or "",
        options=options,
        logprobs=n > 0,
        top_logprobs=n,
        debug_render_only=bool(req.debug_render_only),
        logit_bias=logit_bias(req.logit_bias),
    )


async def completion(model: str, streams: list[AsyncIterator[ChatChunk]]) -> dict[str, object]:
    lasts = await drain_all(streams)
    if lasts[0].debug_prompt is not None:
        doc = wire.completion_json(new_id("cmpl"), int(time.time()), model, [wire.text_choice_json(0, "", None)],
                                   wire.usage_json(0, 0))
        doc["_debug_info"] = _debug_info(lasts[0], 0)
        return doc
    return wire.completion_json(new_id("cmpl"), int(time.time()), model,
                                [wire.text_choice_json(i, last.content, last.done_reason or None, last.logprobs)
                                 for i, last in enumerate(lasts)], _usage(lasts))


class CompletionStream:
    """Each native chunk is one text_completion object; the last one carries finish_reason. With
    include_usage every chunk carries zeroed usage and a usage-only chunk follows the last (Ollama)."""

    def __init__(self, model: str, include_usage: bool, n: int = 1) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = new_id("cmpl")
        self.created = int(time.time())
        self.n = n
        self.lasts: list[ChatChunk] = []

    def events(self, chunk: ChatChunk, index: int = 0) -> list[dict[str, object]]:
        if chunk.debug_prompt is not None:
            doc = wire.completion_json(self.id, self.created, self.model, [wire.text_choice_json(0, "", None)], None)
            doc["_debug_info"] = _debug_info(chunk, 0)
            return [doc]
        zero = wire.usage_json(0, 0) if self.include_usage else None
        reason = (chunk.done_reason or None) if chunk.done else None
        out = [wire.completion_json(self.id, self.created, self.model,
                                    [wire.text_choice_json(index, chunk.content, reason, chunk.logprobs)], zero)]
        if chunk.done:
            self.lasts.append(chunk)
            if self.include_usage and len(self.lasts) == self.n:
                out.append(wire.usage_chunk_json(self.id, self.created, self.model, "text_completion",
                                                 _usage(self.lasts)))
        return out


# ---- embeddings -------------------------------------------------------------------------------------------------


def embed_request(req: wire.EmbeddingRequest) -> tuple[EmbedRequest, str]:
    """Spec 9.4: (the native request, the encoding: "float" or "base64")."""
    encoding = (req.encoding_format or "float").lower()
    if encoding not in ("float", "base64"):
        raise InvalidRequest(f"Invalid value for 'encoding_format' = {req.encoding_format}. Supported values: "
                             "['float', 'base64'].")
    value: Any = req.input
    if value == "":
        value = [""]  # an empty string is one empty input here, not "just load"
    if value is None or value == []:
        raise InvalidRequest("invalid input")
    inputs = native.embed_inputs(value)
    return EmbedRequest(model=(req.model or "").strip(), inputs=inputs, dimensions=max(req.dimensions or 0, 0)), \
        encoding


def embedding_list(model: str, result: EmbedResult, encoding: str) -> dict[str, object]:
    data: list[object]
    if encoding == "base64":
        # Little-endian float32, as OpenAI sends it (the official client asks for this by default).
        data = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode("ascii") for v in result.vectors]
    else:
        data = [list(v) for v in result.vectors]
    return wire.embedding_list_json(model, data, result.prompt_tokens)


# ---- models -----------------------------------------------------------------------------------------------------


def list_models(catalog: ModelCatalog) -> dict[str, object]:
    data = [wire.model_json(m.name, int(m.stored.modified_at.timestamp()), m.stored.name.namespace)
            for m in catalog.list()]
    return {"object": "list", "data": data}  # Ollama sends null for no models; [] is what clients expect


def get_model(catalog: ModelCatalog, name: str) -> dict[str, object]:
    """GET /v1/models/{model}: the id is the name as asked for; a missing model has /api/show's wording."""
    parsed = ModelName.parse(name)
    try:
        model = catalog.resolve(name)
    except ModelNotFound:
        raise ModelNotFound(f"model '{parsed.display}' not found") from None
    return wire.model_json(name, int(model.stored.modified_at.timestamp()), parsed.namespace)
