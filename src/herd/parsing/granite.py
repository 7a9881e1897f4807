"""IBM Granite output parser: 3.2 / 3.3 reasoning and the Granite 3.x and 4.x tool-call forms.

Formats, as verified in the models' chat templates and IBM's own output processors (ibm-granite/granite-common,
`granite3/granite32` and `granite33`):

- Granite 3.x tools: the system prompt says "respond only with <|tool_call|> followed by a JSON list of tools used";
  the output is `<|tool_call|>[{"name": ..., "arguments": {...}}, ...]` (`<|tool_call|>` is a special token).
  Some 3.1+ checkpoints write the plain text `<tool_call>` instead (vLLM's granite parser and granite-common's 3.3
  processor accept that spelling), still followed by a list.
- Granite 4.0 tools (its template, Hermes style): `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
  one block per call, the blocks separated by "\n".
- Granite 3.3 thinking (`thinking=True` in the template): "Write your thoughts between <think></think> and write your
  response between <response></response>", so `<think>…</think><response>…</response>`.
- Granite 3.2 thinking: "Write your thoughts after 'Here is my thought process:' and write your response after 'Here
  is my response:'"; granite-common also accepts "Here's my thought process:" / "Here's my response:", which
  quantized checkpoints write.

Ollama has no Granite parser: its library templates hand Granite to the generic tag parser (tools/tools.go).

Behaviour:
- With `thinking`, reasoning counts only as the first thing written (as herd's ThinkingParser has it). Either opener
  starts it; its own closer ends it (with `prefilled`, where the prompt opened it, any closer does). Whitespace after
  the opener and after the closer is dropped, and the reasoning text is right-trimmed (the 3.2 form always leaves a
  blank line before "Here is my response:"). After the closer, a `<response>` opener is dropped, and so is the first
  `</response>` that follows it.
- Content streams as it arrives; only a possible partial marker at the chunk end is held back. Text before, between
  and after calls is content, unchanged; whitespace right after a parsed call (and its `</tool_call>`) is dropped.
- After `<|tool_call|>` or `<tool_call>` comes one JSON value: an object that is a call or a list of call objects.
  A call object names an offered tool in "name" and carries its arguments (an object, or a string holding one) in
  "arguments" or "parameters" (none: no arguments). The value is accepted whole or given back whole: if any call in
  it fails, the marker and the value are content, with a logged warning. So is a marker not followed by `{` or `[`
  (the marker alone), and a value that never ends.
- Without the marker, a JSON list at the start is not a call (vLLM accepts that; herd keeps one rule: a marker).

Grammar
-------
What a constraint must make the model write so that this parser accepts it:

    Granite 3.x:  <|tool_call|>[CALL (, CALL)*]
    Granite 4.x:  (<tool_call>\\n CALL \\n</tool_call>)+   with only whitespace between the blocks
    CALL := {"name": "NAME", "arguments": ARGS}

- NAME is the offered tool's name, as a JSON string; ARGS a JSON object. Key order and whitespace inside the JSON are
  free; "parameters" may stand for "arguments". The value is one JSON text for `json.loads`, and its brackets are
  matched outside strings (so braces inside strings are fine).
- Whitespace is allowed between the marker and the value and between the value and `</tool_call>`.
- Text before the first marker is content; after the last call the model should end its turn.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from enum import Enum, auto

from herd.parsing.base import Delta, ToolCall
from herd.parsing.toolcalls import new_call_id
from herd.types import ToolDef

log = logging.getLogger(__name__)

TOOL_CALL_TOKEN = "<|tool_call|>"  # Granite 3.x
TOOL_CALL_OPEN = "<tool_call>"  # Granite 4.x (and the plain-text spelling of 3.1+)
TOOL_CALL_CLOSE = "</tool_call>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
RESPONSE_OPEN = "<response>"
RESPONSE_CLOSE = "</response>"
_RESPONSE_PHRASES = ("Here is my response:", "Here's my response:")
# Reasoning openers and the closers that end each of them.
_OPENERS: dict[str, tuple[str, ...]] = {
    THINK_OPEN: (THINK_CLOSE,),
    "Here is my thought process:": _RESPONSE_PHRASES,
    "Here's my thought process:": _RESPONSE_PHRASES,
}
_ALL_CLOSERS = (THINK_CLOSE, *_RESPONSE_PHRASES)


class BracketScanner:
    """Finds where one bracketed value ({…} or […]) ends, fed a growing buffer piece by piece.

    Brackets count only outside strings; strings open with " or ' and close with the same quote, backslash escapes
    honoured. That is JSON's lexing and Python's too (for pythonic calls), so one scanner serves both; whether the
    text is valid is for the real parser to say. Shared with gemma.py.
    """

    def __init__(self, start: int = 0) -> None:
        self.pos = start  # next index to look at; the value's opening bracket is at `start`
        self._depth = 0
        self._quote = ""  # the quote of the string we are in, "" outside strings
        self._escaped = False

    def advance(self, buf: str) -> int | None:
        """Scan new text. Returns the index just past the closing bracket, or None while the value is open."""
        i = self.pos
        n = len(buf)
        while i < n:
            c = buf[i]
            i += 1
            if self._quote:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == self._quote:
                    self._quote = ""
            elif c in "\"'":
                self._quote = c
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth <= 0:
                    self.pos = i
                    return i
        self.pos = i
        return None


class GraniteState(Enum):
    """States of the Granite parser, in the order output passes through them."""

    # Thinking on, not pre-opened: only whitespace or a prefix of a reasoning opener so far; nothing is released
    # until we know whether the output is reasoning.
    LEADING = auto()
    # An opener was seen (or pre-opened): the whitespace after it is dropped.
    THINKING_STARTED = auto()
    # Reasoning until a closer; a partial closer and trailing whitespace are held back.
    THINKING = auto()
    # A closer was seen: whitespace and an optional <response> opener are dropped.
    RESPONSE_START = auto()
    # Content streams out; a possible partial marker at the end is held back.
    CONTENT = auto()
    # A call marker was seen: after optional whitespace the JSON value must open with { or [.
    CALL_START = auto()
    # Inside the JSON value, until its brackets balance.
    CALL_VALUE = auto()
    # After a parsed value: whitespace and, for <tool_call>, the </tool_call> closer are dropped.
    CALL_CLOSE = auto()


class GraniteParser:
    """Incremental parser for one Granite assistant turn: content, reasoning and tool calls."""

    def __init__(
        self,
        tools: Sequence[ToolDef],
        thinking: bool = False,
        prefilled: bool = False,
        *,
        new_id: Callable[[], str] = new_call_id,
    ) -> None:
        self._names = frozenset(t.name for t in tools if t.name)
        self._new_id = new_id
        self._closers: tuple[str, ...] = _ALL_CLOSERS
        if thinking and prefilled:
            self.state = GraniteState.THINKING_STARTED
        elif thinking:
            self.state = GraniteState.LEADING
        else:
            self.state = GraniteState.CONTENT
        self._buf = ""
        self._eat_ws = False  # CONTENT: drop whitespace that follows a parsed call
        self._in_response = False  # a <response> opener was dropped, so its </response> is dropped too
        self._opener = ""  # CALL_*: the marker that opened the call
        self._value_start = 0  # CALL_VALUE: index of the value's opening bracket in _buf
        self._scanner = BracketScanner()
        self._n = 0

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
        content: list[str] = []
        thinking: list[str] = []
        calls: list[ToolCall] = []
        while self._step(content, thinking, calls):
            pass
        if final:
            self._flush(content, thinking)
        return Delta(content="".join(content), thinking="".join(thinking), tool_calls=tuple(calls))

    def _step(self, content: list[str], thinking: list[str], calls: list[ToolCall]) -> bool:
        """Consume what the buffer allows in the current state. True when another step can make progress."""
        state = self.state
        buf = self._buf
        if state is GraniteState.LEADING:
            trimmed = buf.lstrip()
            for opener, closers in _OPENERS.items():
                if trimmed.startswith(opener):
                    self._closers = closers
                    self._buf = trimmed[len(opener) :]
                    self.state = GraniteState.THINKING_STARTED
                    return True
            if any(opener.startswith(trimmed) for opener in _OPENERS):
                return False  # whitespace, or an opener still arriving
            self.state = GraniteState.CONTENT  # not reasoning: all of it, leading whitespace included, is content
            return True

        if state is GraniteState.THINKING_STARTED:
            self._buf = buf.lstrip()
            if not self._buf:
                return False
            self.state = GraniteState.THINKING
            return True

        if state is GraniteState.THINKING:
            found = _earliest(buf, self._closers)
            if found is not None:
                i, closer = found
                thinking.append(buf[:i].rstrip())
                self._buf = buf[i + len(closer) :]
                self.state = GraniteState.RESPONSE_START
                return True
            cut = len(buf) - _partial_len(buf, self._closers)
            cut = len(buf[:cut].rstrip())  # trailing whitespace waits: it is dropped if the closer follows
            thinking.append(buf[:cut])
            self._buf = buf[cut:]
            return False

        if state is GraniteState.RESPONSE_START:
            trimmed = self._buf = buf.lstrip()
            if trimmed.startswith(RESPONSE_OPEN):
                self._buf = trimmed[len(RESPONSE_OPEN) :]
                self._in_response = True
                self._eat_ws = True
            elif RESPONSE_OPEN.startswith(trimmed):
                return False  # nothing yet, or <response> still arriving
            self.state = GraniteState.CONTENT
            return True

        if state is GraniteState.CONTENT:
            return self._step_content(content)

        if state is GraniteState.CALL_START:
            stripped = buf.lstrip()
            if not stripped:
                return False
            if stripped[0] in "{[":
                self._value_start = len(buf) - len(stripped)
                self._scanner = BracketScanner(self._value_start)
                self.state = GraniteState.CALL_VALUE
                return True
            log.warning("Granite %s not followed by JSON; given back as content", self._opener)
            content.append(self._opener)  # the rest flows on as content
            self.state = GraniteState.CONTENT
            return True

        if state is GraniteState.CALL_VALUE:
            end = self._scanner.advance(buf)
            if end is None:
                return False
            parsed = self._parse_value(buf[self._value_start : end])
            self._buf = buf[end:]
            if isinstance(parsed, str):
                raw = self._opener + buf[:end]
                log.warning("Granite tool call given back as content (%s): %.300r", parsed, raw)
                content.append(raw)
                self.state = GraniteState.CONTENT
                return True
            for name, args in parsed:
                calls.append(ToolCall(name=name, arguments=args, index=self._n, id=self._new_id()))
                self._n += 1
            self.state = GraniteState.CALL_CLOSE
            return True

        # CALL_CLOSE
        trimmed = self._buf = buf.lstrip()
        if self._opener == TOOL_CALL_OPEN:
            if trimmed.startswith(TOOL_CALL_CLOSE):
                self._buf = trimmed[len(TOOL_CALL_CLOSE) :]
            elif TOOL_CALL_CLOSE.startswith(trimmed):
                return False  # nothing yet, or </tool_call> still arriving
        self.state = GraniteState.CONTENT
        self._eat_ws = True
        return True

    def _step_content(self, content: list[str]) -> bool:
        buf = self._buf
        if self._eat_ws:
            buf = buf.lstrip()
            if not buf:
                self._buf = ""
                return False
            self._eat_ws = False
        markers = (TOOL_CALL_TOKEN, TOOL_CALL_OPEN, RESPONSE_CLOSE) if self._in_response else _CALL_MARKERS
        found = _earliest(buf, markers)
        if found is None:
            keep = _partial_len(buf, markers)
            content.append(buf[: len(buf) - keep])
            self._buf = buf[len(buf) - keep :]
            return False
        i, marker = found
        content.append(buf[:i])
        self._buf = buf[i + len(marker) :]
        if marker == RESPONSE_CLOSE:
            self._in_response = False  # the response wrapper of Granite 3.3 is not content
        else:
            self._opener = marker
            self.state = GraniteState.CALL_START
        return True

    def _flush(self, content: list[str], thinking: list[str]) -> None:
        """End of output: nothing held back may be lost."""
        buf, self._buf = self._buf, ""
        state, self.state = self.state, GraniteState.CONTENT
        if state is GraniteState.THINKING:
            thinking.append(buf.rstrip())  # the model stopped mid-thought
        elif state in (GraniteState.CALL_START, GraniteState.CALL_VALUE):
            log.warning("Granite tool call never ended; given back as content: %.300r", self._opener + buf)
            content.append(self._opener + buf)
        elif state is not GraniteState.THINKING_STARTED:
            content.append(buf)  # a partial marker that never completed is ordinary text

    def _parse_value(self, raw: str) -> list[tuple[str, dict[str, object]]] | str:
        """The JSON after a marker: one call object or a list of them, all valid, or a reason string."""
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            return "not valid JSON"
        items = value if isinstance(value, list) else [value]
        if not items:
            return "an empty list of calls"
        found: list[tuple[str, dict[str, object]]] = []
        for item in items:
            call = call_from_object(item, self._names)
            if isinstance(call, str):
                return call
            found.append(call)
        return found


_CALL_MARKERS = (TOOL_CALL_TOKEN, TOOL_CALL_OPEN)


def call_from_object(item: object, names: frozenset[str]) -> tuple[str, dict[str, object]] | str:
    """{"name": NAME, "arguments" | "parameters": ARGS} as (name, arguments), or a reason string. Shared with gemma.py.

    ARGS may be an object or a string holding one (OpenAI style); a call without either key has no arguments.
    """
    if not isinstance(item, dict):
        return "a call is not a JSON object"
    name = item.get("name")
    if not isinstance(name, str):
        return 'a call has no "name"'
    if name not in names:
        return f"tool {name!r} was not offered"
    for key in ("arguments", "parameters"):
        if key in item:
            args = item[key]
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except (ValueError, RecursionError):
                    return f"arguments of {name!r} are not a JSON object"
            if not isinstance(args, dict):
                return f"arguments of {name!r} are not a JSON object"
            return name, args
    return name, {}


def _earliest(buf: str, markers: Sequence[str]) -> tuple[int, str] | None:
    """The first occurrence of any marker in `buf` (the longest one where two start at the same place)."""
    best: tuple[int, str] | None = None
    for marker in markers:
        i = buf.find(marker)
        if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(marker) > len(best[1]))):
            best = (i, marker)
    return best


def _partial_len(buf: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of one of the markers (0 if none)."""
    longest = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(buf)), longest, -1):
            if buf.endswith(marker[:n]):
                longest = n
                break
    return longest
