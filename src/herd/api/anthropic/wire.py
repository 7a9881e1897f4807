"""Anthropic Messages API wire types: request bodies (pydantic v2, strict) and response/event encoders.

Requests are checked the way Anthropic's own server checks them: strict types, and a field it does not know is
`<field>: Extra inputs are not permitted`. A field that does not change the answer (`metadata`, `service_tier`,
`container`, `inference_geo`, `cache_control`, an empty `mcp_servers`) is accepted and ignored; a field or a value
herd cannot honour (server tools, MCP connectors, documents, ...) is a 400 that names it, never silently dropped.
Every validation message reads `<dotted path>: <what is wrong>`, as Anthropic's do (`max_tokens: Field required`).

Content blocks, tools, tool_choice and the other tagged objects are decoded here by their `type`, so a type herd
does not handle is refused by name rather than with a union's list of mismatches.

Responses and stream events are plain dicts in Anthropic's field order.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from herd.errors import InvalidRequest

_STRICT = ConfigDict(strict=True, extra="forbid", populate_by_name=True)
M = TypeVar("M", bound=BaseModel)


def decode(model_cls: type[M], data: object, path: str = "") -> M:
    """Validate `data` into `model_cls`; the first error becomes a 400 `<path>: <message>`."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"{path or 'body'}: Input should be a valid dictionary")
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join([path] * bool(path) + [str(p) for p in err["loc"]])
        raise InvalidRequest(f"{loc}: {err['msg']}" if loc else str(err["msg"])) from None


def _tag(data: object, path: str, known: tuple[str, ...], what: str) -> str:
    """The `type` of a tagged object, refused by name when herd does not handle it."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"{path}: Input should be a valid dictionary")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise InvalidRequest(f"{path}.type: Field required" if kind is None else
                             f"{path}.type: Input should be a valid string")
    if kind not in known:
        raise InvalidRequest(f"{path}: {what} type '{kind}' is not supported by herd")
    return kind


# ---- content blocks ------------------------------------------------------------------------------------------


class CacheControl(BaseModel):
    """A prompt-caching hint: accepted and ignored (herd reuses every prompt prefix it still holds anyway)."""

    model_config = _STRICT
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    # Citations an earlier answer carried: they describe the text, which is what the model sees.
    citations: list[dict[str, Any]] | None = None


class Base64Source(BaseModel):
    model_config = _STRICT
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLSource(BaseModel):
    model_config = _STRICT
    type: Literal["url"]
    url: str


class ImageBlock(BaseModel):
    model_config = _STRICT
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]
    cache_control: CacheControl | None = None


class DirectCaller(BaseModel):
    model_config = _STRICT
    type: Literal["direct"]


class ToolUseBlock(BaseModel):
    model_config = _STRICT
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    # Fields of the response block, which clients send back as they got it. herd's calls come from the model
    # itself (a "direct" caller) and belong to no MCP toolset; calls made by Anthropic's server tools are refused.
    caller: DirectCaller | None = None
    toolset_name: None = None


class ToolResultBlock(BaseModel):
    model_config = _STRICT
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = ""
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(BaseModel):
    model_config = _STRICT
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None  # herd signs nothing: whatever comes back is accepted


class RedactedThinkingBlock(BaseModel):
    model_config = _STRICT
    type: Literal["redacted_thinking"]
    data: str


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock

_BLOCKS: dict[str, type[BaseModel]] = {
    "text": TextBlock,
    "image": ImageBlock,
    "tool_use": ToolUseBlock,
    "tool_result": ToolResultBlock,
    "thinking": ThinkingBlock,
    "redacted_thinking": RedactedThinkingBlock,
}
_SOURCES: dict[str, type[BaseModel]] = {"base64": Base64Source, "url": URLSource}
_RESULT_BLOCKS = ("text", "image")  # what a tool_result's content may hold here (documents are refused)


def _image(data: dict[str, Any], path: str) -> ImageBlock:
    # The source is decoded by its tag first, so a "file" source (the Files API) is refused by name.
    source = data.get("source")
    if source is not None:
        _tag(source, f"{path}.source", tuple(_SOURCES), "image source")
    return decode(ImageBlock, data, path)


def _result_content(content: object, path: str) -> None:
    """A tool_result's content, checked part by part first so that an error names the part, not a union."""
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}: Input should be a valid string or a list of content blocks")
    for j, part in enumerate(content):
        at = f"{path}.{j}"
        if _tag(part, at, _RESULT_BLOCKS, "tool_result content block") == "image":
            _image(part, at)
        else:
            decode(TextBlock, part, at)


def content_blocks(content: object, path: str, allowed: tuple[str, ...] = tuple(_BLOCKS),
                   what: str = "content block") -> list[Block]:
    """A message's `content`: a string (one text block) or a list of blocks, each decoded by its type."""
    if isinstance(content, str):
        return [TextBlock(type="text", text=content)]
    if not isinstance(content, list):
        raise InvalidRequest(f"{path}: Input should be a valid string or a list of content blocks")
    out: list[Block] = []
    for i, item in enumerate(content):
        at = f"{path}.{i}"
        kind = _tag(item, at, allowed, what)
        assert isinstance(item, dict)
        if kind == "image":
            out.append(_image(item, at))
            continue
        if kind == "tool_result":
            _result_content(item.get("content", ""), f"{at}.content")
        out.append(cast(Block, decode(_BLOCKS[kind], item, at)))
    return out


def system_blocks(system: object) -> list[TextBlock]:
    """`system`: a string or a list of text blocks."""
    return [b for b in content_blocks(system, "system", ("text",), "system content block")
            if isinstance(b, TextBlock)]


# ---- tools, tool_choice, thinking, context management, output config ----------------------------------------


class ToolParam(BaseModel):
    """A client tool. Server tools (`web_search_...`, `bash_...`, `text_editor_...`, ...) have a versioned
    `type` and run on Anthropic's side: herd has nothing to run them with, so they are refused."""

    model_config = _STRICT
    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None
    # strict:true asks for a guarantee herd gives only for the families whose calls it constrains: refused.
    strict: Literal[False] | None = None
    # Deferred tools are loaded by Anthropic's tool search, which herd does not have: only false is honoured.
    defer_loading: Literal[False] | None = None
    # How finely the input is streamed: herd's calls arrive whole, which every setting allows.
    eager_input_streaming: bool | None = None


def tool_params(tools: list[Any] | None) -> list[ToolParam]:
    out = []
    for i, tool in enumerate(tools or ()):
        if isinstance(tool, dict) and tool.get("type") not in (None, "custom"):
            _tag(tool, f"tools.{i}", ("custom",), "tool")  # names the server tool's type
        out.append(decode(ToolParam, tool, f"tools.{i}"))
    return out


class ToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None  # with type "tool"
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(BaseModel):
    """`enabled` needs a budget (Anthropic's minimum is 1024 tokens); `adaptive` lets the model decide.
    `display: "omitted"` sends thinking blocks without their text; "summarized" is served with the whole text,
    which herd's models write in the open (there is nothing to summarise it for)."""

    model_config = _STRICT
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1024)
    display: Literal["summarized", "omitted"] | None = None


class KeepThinkingTurns(BaseModel):
    model_config = _STRICT
    type: Literal["thinking_turns"]
    value: int = Field(ge=1)


class ClearThinkingEdit(BaseModel):
    """Drop the thinking of all but the last `keep` assistant turns (Anthropic's default keep: one turn)."""

    model_config = _STRICT
    type: Literal["clear_thinking_20251015"]
    keep: Literal["all"] | KeepThinkingTurns | None = None


def context_edits(value: dict[str, Any] | None) -> list[ClearThinkingEdit]:
    """`context_management.edits`. Only clearing thinking is honoured; clearing tool uses past a token trigger
    (`clear_tool_uses_...`) rewrites the conversation in ways herd does not reproduce, so it is refused."""
    if value is None:
        return []
    cm = decode(ContextManagement, value, "context_management")
    out = []
    for i, edit in enumerate(cm.edits or ()):
        _tag(edit, f"context_management.edits.{i}", ("clear_thinking_20251015",), "context edit")
        out.append(decode(ClearThinkingEdit, edit, f"context_management.edits.{i}"))
    return out


class ContextManagement(BaseModel):
    model_config = _STRICT
    edits: list[Any] | None = None


class JSONOutputFormat(BaseModel):
    """Structured output: the answer is constrained to the schema by herd's grammar."""

    model_config = _STRICT
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = _STRICT
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JSONOutputFormat | None = None


# ---- requests ----------------------------------------------------------------------------------------------


class MessageParam(BaseModel):
    """A turn. A `system` message (text only) gives instructions in the middle of the conversation."""

    model_config = _STRICT
    role: Literal["user", "assistant", "system"]
    content: Any  # a string or a list of blocks: decoded by `content_blocks`, which names unsupported types


class CountTokensRequest(BaseModel):
    """`POST /v1/messages/count_tokens`: the body of /v1/messages, with max_tokens optional. The generation
    settings are accepted here too (a client may send the same body to both) and cannot change the count."""

    model_config = _STRICT
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    messages: list[MessageParam]
    system: Any = None  # a string or a list of text blocks
    tools: list[Any] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    context_management: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
    output_format: JSONOutputFormat | None = None  # the structured-outputs beta's name for output_config.format
    # MCP connectors would have the server call remote tools: only an empty list can be honoured.
    mcp_servers: list[Any] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    # Accepted and ignored: none of them changes the answer. `container` names the sandbox of Anthropic's code
    # execution tool, which herd refuses anyway.
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    container: str | None = None
    inference_geo: str | None = None
    speed: Literal["standard", "fast"] | None = None  # herd runs at the one speed it has
    cache_control: CacheControl | None = None  # the automatic caching hint: herd reuses prompt prefixes anyway
    # Asks for a cache-miss explanation relative to an earlier answer; it adds nothing to the answer itself.
    diagnostics: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    """`POST /v1/messages`: max_tokens is required (Anthropic: `max_tokens: Field required`)."""

    max_tokens: int = Field(ge=1)  # type: ignore[assignment]


# ---- responses and stream events --------------------------------------------------------------------------


def usage_json(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens}


def text_json(text: str) -> dict[str, object]:
    return {"type": "text", "text": text}


def thinking_json(thinking: str) -> dict[str, object]:
    return {"type": "thinking", "thinking": thinking, "signature": ""}  # herd signs nothing


def tool_use_json(id_: str, name: str, arguments: dict[str, object]) -> dict[str, object]:
    return {"type": "tool_use", "id": id_, "name": name, "input": arguments}


def message_json(id_: str, model: str, content: list[dict[str, object]], stop_reason: str | None,
                 stop_sequence: str | None, usage: dict[str, int]) -> dict[str, object]:
    return {"id": id_, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage}


def message_start_json(message: dict[str, object]) -> dict[str, object]:
    return {"type": "message_start", "message": message}


def ping_json() -> dict[str, object]:
    return {"type": "ping"}


def block_start_json(index: int, block: dict[str, object]) -> dict[str, object]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def block_delta_json(index: int, delta: dict[str, object]) -> dict[str, object]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def block_stop_json(index: int) -> dict[str, object]:
    return {"type": "content_block_stop", "index": index}


def message_delta_json(stop_reason: str | None, stop_sequence: str | None, usage: dict[str, int]
                       ) -> dict[str, object]:
    return {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": usage}


def message_stop_json() -> dict[str, object]:
    return {"type": "message_stop"}
