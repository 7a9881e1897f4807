"""What the family parsers' state machines share: the loop that steps one text buffer, and the calls they make.

`StepParser` is the `feed`/`finish` loop; each family keeps its own states and `_step`. `CallEmitter` turns the
calls a family read into the turn's `ToolCall`s (running index, fresh ids) and gives failed ones back as content.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from herd.parsing.base import Delta, ParsedCall, ToolCall
from herd.types import ToolDef


class Output:
    """What one `feed` or `finish` produces, joined once at the end."""

    __slots__ = ("calls", "content", "thinking")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.thinking: list[str] = []
        self.calls: list[ToolCall] = []

    def delta(self) -> Delta:
        return Delta("".join(self.content), "".join(self.thinking), tuple(self.calls))


class StepParser:
    """`feed` and `finish` for a parser that is a state machine over one buffer of not yet consumed text.

    A subclass sets `_buf` and defines `_step`, which consumes what the buffer allows in the current state and
    returns True when another step can make progress, and `_flush`, which at the end of output gives back whatever
    is still held (or it overrides `finish`).
    """

    _buf: str

    def feed(self, text: str) -> Delta:
        if not text:
            return Delta()
        return self._run(text, final=False)

    def finish(self) -> Delta:
        return self._run("", final=True)

    def _run(self, text: str, final: bool) -> Delta:
        # Appended through a local that holds the only reference, so CPython grows the string in place
        # instead of copying the whole buffer on every token (a long argument would cost quadratic time).
        buf, self._buf = self._buf, ""
        buf += text
        self._buf = buf
        out = Output()
        while self._step(out):
            pass
        if final:
            self._flush(out)
        return out.delta()

    def _step(self, out: Output) -> bool:
        raise NotImplementedError

    def _flush(self, out: Output) -> None:
        raise NotImplementedError


class CallEmitter:
    """The calls of one turn: the names of the offered tools, and `ToolCall`s with a running index and fresh ids.

    A subclass names its family in `_family` and logs to its own module's logger, `_log`.
    """

    _family = "tool"
    _log = logging.getLogger(__name__)

    def __init__(self, tools: Sequence[ToolDef], new_id: Callable[[], str]) -> None:
        self._names = frozenset(t.name for t in tools if t.name)
        self._new_id = new_id
        self._n = 0  # calls made so far: the next call's index

    def _add_calls(self, parsed: Sequence[ParsedCall], out: Output) -> None:
        for name, args in parsed:
            out.calls.append(ToolCall(name=name, arguments=args, index=self._n, id=self._new_id()))
            self._n += 1

    def _emit(self, parsed: Sequence[ParsedCall] | str, raw: str, out: Output) -> bool:
        """True when calls were made; a reason string gives `raw` back as content, with a warning."""
        if isinstance(parsed, str):
            self._log.warning("%s tool call given back as content (%s): %.300r", self._family, parsed, raw)
            out.content.append(raw)
            return False
        self._add_calls(parsed, out)
        return True
