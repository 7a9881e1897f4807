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

from herd.parsing.base import ParsedCall
from herd.parsing.jsoncalls import BracketScanner, calls_from_objects
from herd.parsing.machine import CallEmitter, Output, StepParser
from herd.parsing.markers import split_at_marker
from herd.parsing.thinking import THINK_CLOSE, THINK_OPEN
from herd.parsing.toolcalls import new_call_id
from herd.types import ToolDef

log = logging.getLogger(__name__)

TOOL_CALL_TOKEN = "<|tool_call|>"  # Granite 3.x
TOOL_CALL_OPEN = "<tool_call>"  # Granite 4.x (and the plain-text spelling of 3.1+)
TOOL_CALL_CLOSE = "</tool_call>"
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


class GraniteParser(StepParser, CallEmitter):
    """Incremental parser for one Granite assistant turn: content, reasoning and tool calls."""

    _family = "Granite"
    _log = log

    def __init__(
        self,
        tools: Sequence[ToolDef],
        thinking: bool = False,
        prefilled: bool = False,
        *,
        new_id: Callable[[], str] = new_call_id,
    ) -> None:
        super().__init__(tools, new_id)
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

    def _step(self, out: Output) -> bool:
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
            before, closer, rest = split_at_marker(buf, self._closers)
            reasoning = before.rstrip()
            out.thinking.append(reasoning)
            if closer:
                self._buf = rest
                self.state = GraniteState.RESPONSE_START
                return True
            self._buf = buf[len(reasoning) :]  # trailing whitespace waits: it is dropped if the closer follows
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
            return self._step_content(out)

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
            out.content.append(self._opener)  # the rest flows on as content
            self.state = GraniteState.CONTENT
            return True

        if state is GraniteState.CALL_VALUE:
            end = self._scanner.advance(buf)
            if end is None:
                return False
            parsed = self._parse_value(buf[self._value_start : end])
            self._buf = buf[end:]
            ok = self._emit(parsed, self._opener + buf[:end], out)
            self.state = GraniteState.CALL_CLOSE if ok else GraniteState.CONTENT
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

    def _step_content(self, out: Output) -> bool:
        buf = self._buf
        if self._eat_ws:
            buf = buf.lstrip()
            if not buf:
                self._buf = ""
                return False
            self._eat_ws = False
        markers = (TOOL_CALL_TOKEN, TOOL_CALL_OPEN, RESPONSE_CLOSE) if self._in_response else _CALL_MARKERS
        before, marker, self._buf = split_at_marker(buf, markers)
        out.content.append(before)
        if not marker:
            return False  # only a possible partial marker is held
        if marker == RESPONSE_CLOSE:
            self._in_response = False  # the response wrapper of Granite 3.3 is not content
        else:
            self._opener = marker
            self.state = GraniteState.CALL_START
        return True

    def _flush(self, out: Output) -> None:
        """End of output: nothing held back may be lost."""
        buf, self._buf = self._buf, ""
        state, self.state = self.state, GraniteState.CONTENT
        if state is GraniteState.THINKING:
            out.thinking.append(buf.rstrip())  # the model stopped mid-thought
        elif state in (GraniteState.CALL_START, GraniteState.CALL_VALUE):
            log.warning("Granite tool call never ended; given back as content: %.300r", self._opener + buf)
            out.content.append(self._opener + buf)
        elif state is not GraniteState.THINKING_STARTED:
            out.content.append(buf)  # a partial marker that never completed is ordinary text

    def _parse_value(self, raw: str) -> list[ParsedCall] | str:
        """The JSON after a marker: one call object or a list of them, all valid, or a reason string."""
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            return "not valid JSON"
        items = value if isinstance(value, list) else [value]
        if not items:
            return "an empty list of calls"
        return calls_from_objects(items, self._names)


_CALL_MARKERS = (TOOL_CALL_TOKEN, TOOL_CALL_OPEN)
