"""The parser a chat turn drains: thinking first, then tool calls in what remains as content."""

from __future__ import annotations

from collections.abc import Iterable

from herd.parsing.base import Delta, IncrementalParser, ToolCall
from herd.parsing.thinking import ThinkingParser
from herd.parsing.toolcalls import ToolCallParser


class OutputParser:
    """Chains the optional thinking and tool-call parsers behind the one `IncrementalParser` API.

    Reasoning goes straight out: a tool call the model only thinks about is not a call, which is how Ollama
    orders its parsers too.
    """

    def __init__(self, thinking: ThinkingParser | None, tools: ToolCallParser | None) -> None:
        self.thinking = thinking
        self.tools = tools

    def feed(self, text: str) -> Delta:
        split = self.thinking.feed(text) if self.thinking is not None else Delta(content=text)
        return self._tools(split, final=False)

    def finish(self) -> Delta:
        split = self.thinking.finish() if self.thinking is not None else Delta()
        return self._tools(split, final=True)

    def _tools(self, split: Delta, final: bool) -> Delta:
        if self.tools is None:
            return split
        out = self.tools.feed(split.content) if split.content else Delta()
        if final:
            out = out + self.tools.finish()
        return Delta(content=out.content, thinking=split.thinking, tool_calls=out.tool_calls)


def parse_all(parser: IncrementalParser, pieces: Iterable[str]) -> Delta:
    """Feed every piece, then finish: the whole turn as one delta (what a non-streaming response carries)."""
    content: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    # Joined once at the end: adding deltas piece by piece would copy the text so far on every token.
    deltas = [parser.feed(piece) for piece in pieces]
    deltas.append(parser.finish())
    for delta in deltas:
        content.append(delta.content)
        thinking.append(delta.thinking)
        calls.extend(delta.tool_calls)
    return Delta(content="".join(content), thinking="".join(thinking), tool_calls=tuple(calls))
