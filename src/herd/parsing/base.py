"""The one incremental parser interface: `feed(text) -> Delta` while tokens arrive, `finish() -> Delta` at the end.

Streaming and non-streaming responses both drain the same parser, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, object]  # a JSON object; key order as the model wrote it
    index: int  # position of the call in this assistant turn
    id: str  # "call_" + 8 chars of [a-z0-9], as Ollama makes them


# A call as a family parser reads it, before it gets its index and id: the tool's name and its arguments.
ParsedCall = tuple[str, dict[str, object]]


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is several times slower, and one is made per token
class Delta:
    """What a chunk of model output adds to the visible message."""

    content: str = ""
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return bool(self.content or self.thinking or self.tool_calls)

    def __add__(self, other: Delta) -> Delta:
        return Delta(
            self.content + other.content, self.thinking + other.thinking, self.tool_calls + other.tool_calls
        )


class IncrementalParser(Protocol):
    def feed(self, text: str) -> Delta: ...

    def finish(self) -> Delta: ...


class PassThrough:
    """No thinking, no tools: every piece of text is content."""

    def feed(self, text: str) -> Delta:
        return Delta(content=text) if text else Delta()

    def finish(self) -> Delta:
        return Delta()
