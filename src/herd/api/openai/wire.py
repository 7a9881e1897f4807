"""OpenAI wire types (spec 9): request bodies (pydantic v2, checked like Ollama's Go decoder checks them) and
response encoders in the field order Ollama's OpenAI layer writes (`openai/openai.go`)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from herd.api.ollama.wire import logprob_json
from herd.engine.protocol import TokenLogprob
from herd.parsing.base import ToolCall

_STRICT = ConfigDict(strict=True, extra="ignore", populate_by_name=True)
FINGERPRINT = "fp_ollama"


# ---- requests ----------------------------------------------------------------------------------------------


class FunctionCallIn(BaseModel):
    model_config = _STRICT
    name: str = ""
    arguments: str = ""  # a JSON text here, unlike the native API's object


class ToolCallIn(BaseModel):
    model_config = _STRICT
    id: str | None = None
    type: str | None = None
    index: int | None = None
    function: FunctionCallIn = Field(default_factory=FunctionCallIn)


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: str = ""
    content: Any = None  # a string, an array of content parts, or null (only with tool_calls)
    reasoning: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    name: str | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool | None = None


class JSONSchemaFormat(BaseModel):
    model_config = _STRICT
    name: str | None = None
    schema_: Any = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = _STRICT
    type: str = ""
    json_schema: JSONSchemaFormat | None = None


class Reasoning(BaseModel):
    model_config = _STRICT
    effort: str | None = None


class ChatCompletionRequest(BaseModel):
    model_config = _STRICT
    model: str | None = None
    messages: list[ChatMessage] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # newer SDKs send this instead of max_tokens
    n: int | None = None
    seed: int | None = None
    stop: Any = None
    temperature: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_p: float | None = None
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    reasoning: Reasoning | None = None
    reasoning_effort: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    # Accepted: they change nothing in the answer (an end-user id, tags, a routing or caching hint, a length hint).
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    verbosity: str | None = None
    prediction: Any = None  # predicted output: a speed hint, the answer is the same without it
    # Refused when set: herd cannot do what they ask (see translate._refuse_unsupported).
    audio: Any = None
    modalities: list[str] | None = None
    web_search_options: Any = None
    functions: Any = None
    function_call: Any = None
    debug_render_only: bool | None = Field(default=None, alias="_debug_render_only")


class CompletionRequest(BaseModel):
    model_config = _STRICT
    model: str | None = None
    prompt: str | None = None  # a string only, as in Ollama
    suffix: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: Any = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: int | None = None
    n: int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    echo: bool | None = None  # refused when true
    best_of: int | None = None  # refused above 1
    debug_render_only: bool | None = Field(default=None, alias="_debug_render_only")


class EmbeddingRequest(BaseModel):
    model_config = _STRICT
    model: str | None = None
    input: Any = None
    encoding_format: str | None = None
    dimensions: int | None = None


# ---- responses ---------------------------------------------------------------------------------------------


def usage_json(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def tool_call_json(call: ToolCall) -> dict[str, object]:
    """Arguments travel as a JSON string on this API (the native one sends an object)."""
    arguments = json.dumps(call.arguments, ensure_ascii=False, separators=(",", ":"))
    return {"id": call.id, "index": call.index, "type": "function",
            "function": {"name": call.name, "arguments": arguments}}


def logprobs_json(entries: tuple[TokenLogprob, ...]) -> dict[str, object]:
    return {"content": [logprob_json(lp) for lp in entries]}


def message_json(content: str, reasoning: str, calls: tuple[ToolCall, ...], role: str = "assistant"
                 ) -> dict[str, object]:
    doc: dict[str, object] = {"role": role, "content": content}
    if reasoning:
        doc["reasoning"] = reasoning  # Ollama's name for it (not reasoning_content)
    if calls:
        doc["tool_calls"] = [tool_call_json(c) for c in calls]
    return doc


def choice_json(index: int, message: dict[str, object], finish_reason: str | None,
                logprobs: tuple[TokenLogprob, ...] = ()) -> dict[str, object]:
    choice: dict[str, object] = {"index": index, "message": message, "finish_reason": finish_reason}
    if logprobs:
        choice["logprobs"] = logprobs_json(logprobs)
    return choice


def chat_completion_json(id_: str, created: int, model: str, choices: list[dict[str, object]],
                         usage: dict[str, int], debug_info: dict[str, object] | None = None) -> dict[str, object]:
    doc: dict[str, object] = {"id": id_, "object": "chat.completion", "created": created, "model": model,
                              "system_fingerprint": FINGERPRINT, "choices": choices, "usage": usage}
    if debug_info is not None:
        doc["_debug_info"] = debug_info
    return doc


def chat_chunk_json(id_: str, created: int, model: str, delta: dict[str, object], finish_reason: str | None,
                    logprobs: tuple[TokenLogprob, ...] = (), index: int = 0) -> dict[str, object]:
    choice: dict[str, object] = {"index": index, "delta": delta, "finish_reason": finish_reason}
    if logprobs:
        choice["logprobs"] = logprobs_json(logprobs)
    return {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": FINGERPRINT, "choices": [choice]}


def usage_chunk_json(id_: str, created: int, model: str, obj: str, usage: dict[str, int]) -> dict[str, object]:
    return {"id": id_, "object": obj, "created": created, "model": model, "system_fingerprint": FINGERPRINT,
            "choices": [], "usage": usage}


def text_choice_json(index: int, text: str, finish_reason: str | None, logprobs: tuple[TokenLogprob, ...] = ()
                     ) -> dict[str, object]:
    choice: dict[str, object] = {"text": text, "index": index, "finish_reason": finish_reason}
    if logprobs:
        choice["logprobs"] = logprobs_json(logprobs)
    return choice


def completion_json(id_: str, created: int, model: str, choices: list[dict[str, object]],
                    usage: dict[str, int] | None) -> dict[str, object]:
    """One text_completion object: the non-streamed reply, and each streamed chunk."""
    doc: dict[str, object] = {"id": id_, "object": "text_completion", "created": created, "model": model,
                              "system_fingerprint": FINGERPRINT, "choices": choices}
    if usage is not None:
        doc["usage"] = usage
    return doc


def model_json(id_: str, created: int, owned_by: str) -> dict[str, object]:
    return {"id": id_, "object": "model", "created": created, "owned_by": owned_by}


def embedding_list_json(model: str, data: list[object], prompt_tokens: int) -> dict[str, object]:
    return {"object": "list",
            "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(data)],
            "model": model, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}

