"""OpenAI Responses API wire types: request bodies (pydantic v2, strict types) and encoders for the response
object, its output items and its stream events.

Field names and order follow OpenAI's own JSON (and the `openai` SDK's types in `openai/types/responses/`, which
parse it): `type` then `sequence_number` first in every event, the response object in the order the API writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from herd.engine.protocol import TokenLogprob
from herd.errors import InvalidRequest

_STRICT = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class InvalidParam(InvalidRequest):
    """A 400 that names the offending parameter, as OpenAI's error body does (`error.param`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# ---- requests ----------------------------------------------------------------------------------------------


class TextFormat(BaseModel):
    model_config = _STRICT
    type: str
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = _STRICT
    format: TextFormat | None = None
    verbosity: str | None = None  # a hint for models that take one; herd's do not


class ReasoningConfig(BaseModel):
    model_config = _STRICT
    effort: str | None = None
    summary: str | None = None  # herd always returns the whole reasoning text, never a summary
    generate_summary: str | None = None  # the deprecated name of `summary`


class ResponsesRequest(BaseModel):
    model_config = _STRICT
    model: str | None = None
    input: str | list[dict[str, Any]] | None = None  # items are read one by one (responses.py), by their type
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    truncation: str | None = None
    include: list[str] | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None


# Input items (`input: [...]`), each decoded by its `type`.


class MessageItem(BaseModel):
    model_config = _STRICT
    role: str
    content: str | list[dict[str, Any]]


class FunctionCallItem(BaseModel):
    model_config = _STRICT
    call_id: str
    name: str
    arguments: str  # JSON text


class FunctionCallOutputItem(BaseModel):
    model_config = _STRICT
    call_id: str
    output: str | list[dict[str, Any]]


class ReasoningPart(BaseModel):
    model_config = _STRICT
    text: str
    type: str = ""


class ReasoningItem(BaseModel):
    model_config = _STRICT
    summary: list[ReasoningPart] = Field(default_factory=list)
    content: list[ReasoningPart] | None = None
    encrypted_content: str | None = None  # only OpenAI can read its own; herd never sends one


_EXPECTED = {
    "string_type": "a string", "int_type": "an integer", "float_type": "a decimal", "bool_type": "a boolean",
    "list_type": "an array", "dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
}


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "int", "float", "bool") or "[" in part:
            continue  # the member of a union that pydantic names in its location, not a field
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def decode(model_cls: type[BaseModel], data: object, prefix: str = "") -> Any:
    """Validate into a wire type; errors in OpenAI's words, naming the parameter (`input[2].call_id`)."""
    if not isinstance(data, dict):
        where = prefix or "body"
        raise InvalidParam(f"Invalid type for '{where}': expected an object, but got {_json_kind(data)} instead.",
                           prefix or None)
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        # In a union each member reports its own error; the deepest one says most ("input[0]" rather than "input").
        errors = exc.errors()
        field_errors = [e for e in errors if e["loc"][:1] == errors[0]["loc"][:1]]
        err = max(field_errors, key=lambda e: len(e["loc"]))
        param = _path(prefix, tuple(err["loc"]))
        if err["type"] == "missing":
            raise InvalidParam(f"Missing required parameter: '{param}'.", param) from None
        expected = _EXPECTED.get(err["type"], "another type")
        raise InvalidParam(f"Invalid type for '{param}': expected {expected}, but got "
                           f"{_json_kind(err.get('input'))} instead.", param) from None


# ---- responses ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Echo:
    """The request's settings that every response object repeats back (the SDK's `Response` declares them)."""

    model: str
    instructions: str | None = None
    max_output_tokens: int | None = None
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None
    reasoning: tuple[str | None, str | None] = (None, None)  # (effort, summary)
    safety_identifier: str | None = None
    service_tier: str = "default"
    store: bool = True
    temperature: float = 1.0
    text_format: dict[str, object] | None = None  # None: {"type": "text"}
    verbosity: str = "medium"
    tool_choice: object = "auto"
    tools: tuple[dict[str, object], ...] = ()
    top_logprobs: int = 0
    top_p: float = 1.0
    truncation: str = "auto"
    user: str | None = None
    metadata: dict[str, str] | None = None


def usage_json(input_tokens: int, output_tokens: int) -> dict[str, object]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},  # thinking tokens are not counted apart
        "total_tokens": input_tokens + output_tokens,
    }


def response_json(id_: str, created_at: int, status: str, echo: Echo, output: list[dict[str, object]],
                  usage: dict[str, object] | None = None, error: dict[str, object] | None = None,
                  incomplete_reason: str | None = None, completed_at: int | None = None) -> dict[str, object]:
    effort, summary = echo.reasoning
    return {
        "id": id_,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": completed_at,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "max_tool_calls": None,
        "model": echo.model,
        "output": output,
        "parallel_tool_calls": echo.parallel_tool_calls,
        "previous_response_id": echo.previous_response_id,
        "prompt_cache_key": echo.prompt_cache_key,
        "reasoning": {"effort": effort, "summary": summary},
        "safety_identifier": echo.safety_identifier,
        "service_tier": echo.service_tier,
        "store": echo.store,
        "temperature": echo.temperature,
        "text": {"format": dict(echo.text_format or {"type": "text"}), "verbosity": echo.verbosity},
        "tool_choice": echo.tool_choice,
        "tools": [dict(t) for t in echo.tools],
        "top_logprobs": echo.top_logprobs,
        "top_p": echo.top_p,
        "truncation": echo.truncation,
        "usage": usage,
        "user": echo.user,
        "metadata": dict(echo.metadata or {}),
    }


def output_text_json(text: str, logprobs: list[dict[str, object]] | None = None) -> dict[str, object]:
    return {"type": "output_text", "annotations": [], "logprobs": list(logprobs or ()), "text": text}


def message_item_json(id_: str, status: str, parts: list[dict[str, object]]) -> dict[str, object]:
    return {"id": id_, "type": "message", "status": status, "content": parts, "role": "assistant"}


def reasoning_text_json(text: str) -> dict[str, object]:
    return {"type": "reasoning_text", "text": text}


def reasoning_item_json(id_: str, parts: list[dict[str, object]]) -> dict[str, object]:
    """herd's reasoning is the model's own text: it goes in `content` (as gpt-oss's does on OpenAI), the summary
    stays empty, and there is no `encrypted_content` to carry it across stateless turns (clients send the
    content back instead)."""
    return {"id": id_, "type": "reasoning", "summary": [], "content": parts}


def function_call_item_json(id_: str, status: str, call_id: str, name: str, arguments: str, namespace: str = ""
                            ) -> dict[str, object]:
    doc: dict[str, object] = {"id": id_, "type": "function_call", "status": status, "arguments": arguments,
                              "call_id": call_id, "name": name}
    if namespace:
        doc["namespace"] = namespace  # a function of a `namespace` tool is called by name within it
    return doc


def event_json(type_: str, sequence_number: int, **fields: object) -> dict[str, object]:
    return {"type": type_, "sequence_number": sequence_number, **fields}


def text_logprob_json(lp: TokenLogprob) -> dict[str, object]:
    """A token of an `output_text` part (with bytes, as the SDK's `Logprob` has them)."""
    return {"token": lp.token, "bytes": list(lp.bytes), "logprob": lp.logprob,
            "top_logprobs": [{"token": t.token, "bytes": list(t.bytes), "logprob": t.logprob} for t in lp.top]}


def delta_logprob_json(lp: TokenLogprob) -> dict[str, object]:
    """A token of an `output_text.delta` event (the SDK's delta `Logprob` has no bytes)."""
    return {"token": lp.token, "logprob": lp.logprob,
            "top_logprobs": [{"token": t.token, "logprob": t.logprob} for t in lp.top]}


def error_json(code: str, message: str) -> dict[str, object]:
    return {"code": code, "message": message}
