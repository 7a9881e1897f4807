"""Ollama wire types: request bodies (pydantic v2, checked the way Go's decoder checks them) and response encoders
that keep Ollama's field order and leave out empty optional fields (spec 2.2)."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from herd.engine.protocol import TokenLogprob
from herd.errors import InvalidRequest
from herd.parsing.base import ToolCall

_STRICT = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class FunctionCallIn(BaseModel):
    model_config = _STRICT
    name: str = ""
    arguments: dict[str, Any] | None = None
    index: int | None = None


class ToolCallWire(BaseModel):
    model_config = _STRICT
    id: str | None = None
    function: FunctionCallIn = Field(default_factory=FunctionCallIn)


class MessageIn(BaseModel):
    model_config = _STRICT
    role: str = ""
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCallWire] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class _GenerationRequest(BaseModel):
    """The fields /api/chat and /api/generate share (spec 2.1, 5.1)."""

    model_config = _STRICT
    model: str | None = None
    format: Any = None
    options: dict[str, Any] | None = None
    stream: bool | None = None
    think: Any = None
    keep_alive: Any = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    truncate: bool | None = None
    shift: bool | None = None
    debug_render_only: bool | None = Field(default=None, alias="_debug_render_only")


class ChatRequest(_GenerationRequest):
    messages: list[MessageIn] | None = None
    tools: list[dict[str, Any]] | None = None


class ShowRequest(BaseModel):
    model_config = _STRICT
    model: str | None = None
    name: str | None = None
    verbose: bool | None = None
    system: str | None = None


class ModelOnlyRequest(BaseModel):
    model_config = _STRICT
    model: str | None = None
    name: str | None = None


_GO_KIND = {dict: "object", list: "array", str: "string", bool: "bool", int: "number", float: "number"}
_GO_TYPE = {
    "string_type": "string", "bool_type": "bool", "int_type": "int", "float_type": "float64",
    "list_type": "[]interface {}", "dict_type": "map[string]interface {}", "model_type": "struct",
    "int_from_float": "int", "model_attributes_type": "struct",
}


def decode(model_cls: type[BaseModel], data: object, go_struct: str) -> Any:
    """Validate into a wire type; a type mismatch gets Go's decoder wording, as clients see from Ollama."""
    if data is None:
        data = {}  # a literal null body decodes as an empty request
    if not isinstance(data, dict):
        kind = _GO_KIND.get(type(data), "value")
        raise InvalidRequest(f"json: cannot unmarshal {kind} into Go value of type api.{go_struct}")
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        kind = _GO_KIND.get(type(err.get("input")), "value") if err.get("input") is not None else "null"
        target = _GO_TYPE.get(err["type"], "value")
        raise InvalidRequest(
            f"json: cannot unmarshal {kind} into Go struct field {go_struct}.{path} of type {target}"
        ) from None


# ---- responses ---------------------------------------------------------------------------------------------


_second_cache: list[object] = [-1, ""]


def now_rfc3339() -> str:
    """UTC with nanoseconds, trailing zeros trimmed, as Go's time.RFC3339Nano prints it."""
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    if _second_cache[0] != secs:  # formatting the date part once a second: this runs once per token
        _second_cache[0] = secs
        _second_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    base = _second_cache[1]
    frac_text = f"{frac:09d}".rstrip("0")
    return f"{base}.{frac_text}Z" if frac_text else f"{base}Z"


def tool_call_json(call: ToolCall) -> dict[str, object]:
    return {"id": call.id, "function": {"index": call.index, "name": call.name, "arguments": call.arguments}}


def logprob_json(lp: TokenLogprob) -> dict[str, object]:
    doc: dict[str, object] = {"token": lp.token, "logprob": lp.logprob}
    if lp.bytes:
        doc["bytes"] = list(lp.bytes)
    if lp.top:
        doc["top_logprobs"] = [
            {"token": t.token, "logprob": t.logprob, **({"bytes": list(t.bytes)} if t.bytes else {})} for t in lp.top
        ]
    return doc


def metrics_json(metrics: Any) -> dict[str, object]:
    doc: dict[str, object] = {}
    if metrics is None:
        return doc
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                "eval_duration"):
        value = getattr(metrics, key)
        if value:
            doc[key] = value
    return doc


# ---- request -> domain --------------------------------------------------------------------------------------

THINK_LEVELS = ("low", "medium", "high", "max")


def parse_think(value: object) -> Any:
    from herd.types import Think

    if value is None:
        return None
    if isinstance(value, bool):
        return Think(value)
    if isinstance(value, str):
        if value in THINK_LEVELS:
            return Think(True, value)
        if value in ("true", "false"):
            return Think(value == "true")
        raise InvalidRequest(f'invalid think value: "{value}" (must be "high", "medium", "low", "max", true, or false)')
    raise InvalidRequest('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')


def parse_keep_alive_field(value: object) -> float | None:
    from herd.durations import parse_keep_alive

    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def decode_image(data: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        bad = next((i for i, c in enumerate(data) if not (c.isalnum() or c in "+/=")), len(data) - 1)
        raise InvalidRequest(f"illegal base64 data at input byte {max(bad, 0)}") from None


def tool_defs(tools: list[dict[str, Any]] | None) -> tuple[Any, ...]:
    from herd.types import ToolDef

    out = []
    for tool in tools or ():
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else {}
        name = fn.get("name") if isinstance(fn.get("name"), str) else ""
        params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {"type": "object"}
        desc = fn.get("description") if isinstance(fn.get("description"), str) else ""
        out.append(ToolDef(name=name, description=desc, parameters=params, raw=tool))
    return tuple(out)


def messages_in(messages: list[MessageIn] | None) -> tuple[Any, ...]:
    from herd.types import Message, ToolCallIn

    out = []
    for m in messages or ():
        calls = tuple(
            ToolCallIn(c.function.name, dict(c.function.arguments or {}), c.function.index or i, c.id or "")
            for i, c in enumerate(m.tool_calls or ())
        )
        out.append(Message(
            role=m.role.lower(),
            content=m.content or "",
            thinking=m.thinking or "",
            images=tuple(decode_image(i) for i in m.images or ()),
            tool_calls=calls,
            tool_name=m.tool_name or "",
            tool_call_id=m.tool_call_id or "",
        ))
    return tuple(out)


def to_chat_turn(req: ChatRequest) -> Any:
    """Checks in Ollama's order (spec 2.4): think and keep_alive, then top_logprobs, then the model name."""
    from herd.registry.names import ModelName
    from herd.types import ChatTurn

    think = parse_think(req.think)
    keep_alive = parse_keep_alive_field(req.keep_alive)
    top = req.top_logprobs or 0
    if not 0 <= top <= 20:
        raise InvalidRequest("top_logprobs must be between 0 and 20")
    model = (req.model or "").strip()
    if not model:
        raise InvalidRequest("model is required")
    ModelName.parse(model)  # raises "invalid model name"
    fmt = req.format if req.format not in ("", None) else None
    return ChatTurn(
        model=model,
        messages=messages_in(req.messages),
        tools=tool_defs(req.tools),
        format=fmt,
        options=dict(req.options or {}),
        think=think,
        keep_alive=keep_alive,
        logprobs=bool(req.logprobs),
        top_logprobs=top,
        truncate=req.truncate is not False,
        shift=req.shift is not False,
        debug_render_only=bool(req.debug_render_only),
    )


# ---- /api/generate, /api/embed, /api/embeddings ----------------------------------------------------------


class GenerateRequest(_GenerationRequest):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None


class EmbedRequest(BaseModel):
    model_config = _STRICT
    model: str | None = None
    input: Any = None  # a string or a list of strings; checked by hand for Ollama's "invalid input type"
    truncate: bool | None = None
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None


class EmbeddingsRequest(BaseModel):
    model_config = _STRICT
    model: str | None = None
    prompt: str | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None


def to_generate_request(req: GenerateRequest) -> Any:
    """Ollama's GenerateHandler order: body, then top_logprobs, then the model name (a bad one is a 404)."""
    from herd.services.generate import GenerateRequest as Domain

    think = parse_think(req.think)
    keep_alive = parse_keep_alive_field(req.keep_alive)
    top = req.top_logprobs or 0
    if not 0 <= top <= 20:
        raise InvalidRequest("top_logprobs must be between 0 and 20")
    return Domain(
        model=(req.model or "").strip(),
        prompt=req.prompt or "",
        suffix=req.suffix or "",
        system=req.system or "",
        template=req.template or "",
        context=tuple(req.context) if req.context is not None else None,
        raw=bool(req.raw),
        images=tuple(decode_image(i) for i in req.images or ()),
        format=req.format if req.format not in ("", None) else None,
        options=dict(req.options or {}),
        think=think,
        keep_alive=keep_alive,
        logprobs=bool(req.logprobs),
        top_logprobs=top,
        truncate=req.truncate is not False,
        shift=req.shift is not False,
        debug_render_only=bool(req.debug_render_only),
    )


def embed_inputs(value: object) -> tuple[str, ...]:
    """`input`: a string or a list of strings; "" and [] mean "just load the model" (spec 5.6)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidRequest("invalid input type")


def to_embed_request(req: EmbedRequest) -> Any:
    from herd.services.embed import EmbedRequest as Domain

    inputs = embed_inputs(req.input)
    keep_alive = parse_keep_alive_field(req.keep_alive)
    return Domain(
        model=(req.model or "").strip(),
        inputs=inputs,
        truncate=req.truncate is not False,
        dimensions=max(req.dimensions or 0, 0),
        options=dict(req.options or {}),
        keep_alive=keep_alive,
    )


def to_embeddings_request(req: EmbeddingsRequest) -> Any:
    """The legacy endpoint: one prompt, a raw (not normalised) vector; a blank model is a 400 here."""
    from herd.registry.names import is_valid_name
    from herd.services.embed import EmbedRequest as Domain

    keep_alive = parse_keep_alive_field(req.keep_alive)
    model = (req.model or "").strip()
    if not is_valid_name(model):
        raise InvalidRequest("model is required")  # Ollama's EmbeddingsHandler says this for any bad name
    return Domain(
        model=model,
        inputs=(req.prompt,) if req.prompt else (),
        options=dict(req.options or {}),
        keep_alive=keep_alive,
        normalize=False,
    )
