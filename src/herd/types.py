"""Domain types shared by the services. The HTTP layer converts wire schemas into these."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ToolCallIn:
    name: str
    arguments: dict[str, object]
    index: int = 0
    id: str = ""


@dataclass(frozen=True)
class Message:
    role: str
    content: str = ""
    thinking: str = ""
    images: tuple[bytes, ...] = ()
    tool_calls: tuple[ToolCallIn, ...] = ()
    tool_name: str = ""
    tool_call_id: str = ""


@dataclass(frozen=True)
class ToolDef:
    name: str
    description: str
    parameters: dict[str, object]
    raw: dict[str, object] = field(default_factory=dict)  # the definition as sent, for the template


@dataclass(frozen=True)
class Think:
    """`think` from the request: None = not given; enabled with an optional level."""

    enabled: bool
    level: str = ""  # "low" | "medium" | "high" | "max" | ""
    # A preference, not a demand (Anthropic's adaptive thinking with an effort): a model that cannot think
    # answers without thinking instead of refusing.
    optional: bool = False


@dataclass(frozen=True)
class ChatTurn:
    """One /api/chat request, validated."""

    model: str  # as sent (echoed back)
    messages: tuple[Message, ...]
    tools: tuple[ToolDef, ...] = ()
    format: object = None  # None, "json" or a schema dict; checked by constrain/
    options: dict[str, object] = field(default_factory=dict)
    think: Think | None = None
    keep_alive: float | None = None  # seconds; negative = forever
    logprobs: bool = False
    top_logprobs: int = 0
    truncate: bool = True
    shift: bool = True
    debug_render_only: bool = False
    constrain_tools: bool = True
    force_tool: str | None = None  # "" = any tool must be called; a name = that tool
    parallel_tool_calls: bool = True  # False: the turn ends after its first complete call (at most one)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id of the model's vocabulary, bias) pairs
