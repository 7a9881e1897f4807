"""Qwen3-Coder / Qwen3.5 output parser: XML-style tool calls, with optional `<think>` reasoning first.

The call format, as the models' chat templates render a call they made (Qwen3-Coder's `chat_template.jinja`, and
Ollama's renderers `model/renderers/qwen3coder.go` and `qwen35.go`, which reproduce them):

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    <parameter=days>
    3
    </parameter>
    </function>
    </tool_call>

A value is raw text, never JSON-quoted, and may span lines; the template writes a newline after `<parameter=KEY>`
and before `</parameter>`. Non-string values are written as JSON (Qwen3.5) or with Python's `str()` (Qwen3-Coder).
Qwen3.5 writes `<think>…</think>` before the answer; its template pre-opens `<think>\\n` when thinking is on.

Behaviour, following Ollama's `model/parsers/qwen3coder.go` and `qwen35.go` unless said otherwise:

- Content streams as it arrives. Held back: a possible partial `<tool_call>` at the chunk end, and trailing
  whitespace, because whitespace right before a call tag and right after a call's `</tool_call>` is dropped
  (Ollama trims both). Whitespace at the very end of the output is released by `finish` (Ollama loses it).
- A call is parsed when its `</tool_call>` arrives and is emitted in that delta. Values are converted to the type
  the tool's JSON schema declares for the parameter (`parse_value`: Ollama's rules, including its precedence for
  unions); a value that does not convert stays a string. One divergence: Ollama turns a non-boolean value of a
  boolean-only parameter into `false`; herd keeps the string, so the client sees what the model wrote.
- Lenient inside a closed call, like the reference parser (vLLM's `qwen3coder_tool_parser.py`): a missing
  `</parameter>` ends at the next `<parameter=` or `</function>`, a missing `</function>` at `</tool_call>`.
  Several `<function=…>` blocks in one `<tool_call>` are several calls. A `{"name": …, "arguments": {…}}` JSON
  body (the Hermes format of earlier Qwen models) is also accepted; Ollama fails such a call.
- Output that ends inside a call (truncation, a stop sequence) gives the call only if it is complete except for
  `</tool_call>`: every tag closed, and every parameter the schema lists as required present. Anything less is
  content: a truncated value must not become a call that changes something (Ollama's GLM rule, applied here too;
  Ollama's Qwen parser never emits it).
- A call that does not parse, or names a tool that was not offered, is returned as content, byte for byte as the
  model wrote it (with the whitespace before it), and a warning is logged. Ollama answers 500 for the first and
  passes the second through as a call; herd never drops output and never raises.
- Qwen3.5 (`thinking=True`): reasoning goes through herd's `ThinkingParser`. As in `qwen35.go`, a `<tool_call>`
  before `</think>` ends the reasoning (small Qwen3.5 models forget to close it), and when the prompt pre-opened
  `<think>` one repeated `<think>` at the start is dropped.

The outer `<tool_call>` stage and the value typing (`CallStage`, `parse_value`, …) live in `xmlcalls.py`, shared
with `glm.py`, whose GLM-4.x calls use the same outer tags; this module has the Qwen3-Coder body and `ThinkFront`.

Grammar
-------
What a constraint must make the model write so that this parser returns it as calls (WS is any run of whitespace
as `str.isspace` defines it, possibly empty):

    turn      = [content] (WS call)* [WS content]   ; content: any text without "<tool_call>"
    call      = "<tool_call>" WS function (WS function)* WS "</tool_call>"
    function  = "<function=" NAME ">" (WS parameter)* WS "</function>"
    parameter = "<parameter=" KEY ">" VALUE "</parameter>"

- NAME is exactly an offered tool's name; NAME and KEY contain no ">" (whitespace around them is stripped).
- VALUE may contain newlines but none of "</parameter>", "<parameter=", "</function>", "</tool_call>". One leading
  "\\n" and one trailing "\\n" are removed, so the template's form `<parameter=K>\\nVALUE\\n</parameter>` is canonical.
- VALUE is converted by the schema type of KEY: `null` (any case) is None whatever the type; boolean `true`/`false`
  (any case); integer `[+-]?[0-9]+` within int64; number a decimal such as `-1.5e3` (integral values come back as
  ints); array/object JSON text of that kind; anything else, and any undeclared KEY, a string. So a string
  parameter cannot carry the text "null".
- One function per call, with the template's newlines, is the canonical form:
  `<tool_call>\\nfunction…\\n</tool_call>`. Whitespace before `<tool_call>` and after `</tool_call>` is dropped.
- With thinking on, the reasoning comes first: `<think>` (left out when the prompt pre-opened it) … `</think>`.
- For output cut off before `</tool_call>` the call counts only if everything up to `</function>` is there and
  all required parameters are present.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

from herd.parsing.base import Delta, ParsedCall
from herd.parsing.jsoncalls import reject_constant, strict_json
from herd.parsing.markers import partial_len
from herd.parsing.thinking import THINK_CLOSE, THINK_OPEN, ThinkingParser, ThinkingState
from herd.parsing.xmlcalls import (
    TOOL_OPEN,
    CallError,
    CallStage,
    XmlCallParser,
    check_required,
    declared_types,
    offered,
    parse_value,
)
from herd.types import ToolDef

log = logging.getLogger(__name__)

_FUNCTION_OPEN = "<function="
_FUNCTION_CLOSE = "</function>"
_PARAM_OPEN = "<parameter="
_PARAM_CLOSE = "</parameter>"

# --- the Qwen3-Coder call body ---------------------------------------------------------------------------------


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _tag_attr(text: str, pos: int, prefix: str) -> tuple[str, int]:
    """`<prefix=ATTR>` at `pos`: the stripped ATTR and the index after ">"."""
    end = text.find(">", pos + len(prefix))
    if end < 0:
        raise CallError(f"unterminated {prefix}")
    attr = text[pos + len(prefix) : end].strip()
    if not attr:
        raise CallError(f"empty name in {prefix}>")
    return attr, end + 1


def _parse_parameters(body: str, tool: ToolDef, final: bool) -> dict[str, object]:
    args: dict[str, object] = {}
    pos = 0
    while (pos := _skip_ws(body, pos)) < len(body):
        if not body.startswith(_PARAM_OPEN, pos):
            raise CallError(f"unexpected text in <function=…>: {body[pos : pos + 20]!r}")
        key, start = _tag_attr(body, pos, _PARAM_OPEN)
        close = body.find(_PARAM_CLOSE, start)
        nxt = body.find(_PARAM_OPEN, start)
        if close >= 0 and (nxt < 0 or close < nxt):
            value, pos = body[start:close], close + len(_PARAM_CLOSE)
        elif final:
            raise CallError(f"parameter {key!r} is not closed")
        else:
            # The reference parser's tolerance: a parameter without </parameter> ends where the next one starts.
            end = nxt if nxt >= 0 else len(body)
            value, pos = body[start:end], end
        args[key] = parse_value(value, declared_types(tool, key))
    return args


def _parse_json_body(body: str, tools: Mapping[str, ToolDef], final: bool) -> list[ParsedCall]:
    try:
        value = json.loads(body, parse_constant=reject_constant)
    except (ValueError, RecursionError) as e:
        raise CallError(f"JSON body does not parse: {e}") from None
    if not isinstance(value, dict) or not isinstance(name := value.get("name"), str):
        raise CallError("JSON body is not a {name, arguments} object")
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):
        args = strict_json(args, dict) if args.strip() else {}
    if not isinstance(args, dict):
        raise CallError("JSON arguments are not an object")
    tool = offered(tools, name)
    if final:
        check_required(tool, args)
    return [(name, args)]


def parse_qwen_body(body: str, tools: Mapping[str, ToolDef], final: bool) -> list[ParsedCall]:
    """The calls in one `<tool_call>` body; raises CallError when it is not one (see the module's Grammar)."""
    if body.lstrip().startswith("{"):
        return _parse_json_body(body, tools, final)
    calls: list[ParsedCall] = []
    pos = 0
    while (pos := _skip_ws(body, pos)) < len(body):
        if not body.startswith(_FUNCTION_OPEN, pos):
            raise CallError(f"unexpected text in <tool_call>: {body[pos : pos + 20]!r}")
        name, start = _tag_attr(body, pos, _FUNCTION_OPEN)
        tool = offered(tools, name)
        end = body.find(_FUNCTION_CLOSE, start)
        if end < 0:
            if final:
                raise CallError(f"<function={name}> is not closed")
            end = pos = len(body)  # tolerated: </tool_call> closes the function too
        else:
            pos = end + len(_FUNCTION_CLOSE)
        args = _parse_parameters(body[start:end], tool, final)
        if final:
            check_required(tool, args)
        calls.append((name, args))
    if not calls:
        raise CallError("no <function=…> in <tool_call>")
    return calls


_OPEN_THINKING = (ThinkingState.THINKING_STARTED_EATING_WHITESPACE, ThinkingState.THINKING)


class ThinkFront:
    """herd's `ThinkingParser`, plus two rules of Ollama's qwen35.go.

    `end_on`: a tag that ends the reasoning when it comes before `</think>` (the tag itself is content).
    `drop_repeated_open`: with a pre-opened prompt, one `<think>` at the start of the output is dropped.
    """

    def __init__(self, prefilled: bool, end_on: str | None = None, drop_repeated_open: bool = False) -> None:
        self._think = ThinkingParser(THINK_OPEN, THINK_CLOSE, prefilled=prefilled)
        self._end_on = end_on
        self._strip_open = prefilled and drop_repeated_open
        self._held = ""

    def feed(self, text: str) -> Delta:
        buf, self._held = self._held + text, ""
        if self._strip_open:
            visible = buf.lstrip()
            if visible.startswith(THINK_OPEN):
                buf = visible[len(THINK_OPEN) :]
            elif THINK_OPEN.startswith(visible):
                self._held = buf  # whitespace or a partial "<think>": wait
                return Delta()
            self._strip_open = False
        tag = self._end_on
        if tag is None or self._think.state not in (*_OPEN_THINKING, ThinkingState.LOOKING_FOR_OPENING):
            return self._think.feed(buf)
        i = buf.find(tag)
        j = buf.find(THINK_CLOSE)
        if i >= 0 and (j < 0 or i < j):
            out = self._think.feed(buf[:i])
            if self._think.state in _OPEN_THINKING:
                out = out + self._think.feed(THINK_CLOSE)
            return out + self._think.feed(buf[i:])
        keep = partial_len(buf, (tag,)) if j < 0 else 0
        self._held = buf[len(buf) - keep :]
        return self._think.feed(buf[: len(buf) - keep])

    def finish(self) -> Delta:
        held, self._held = self._held, ""
        self._strip_open = False
        return self._think.feed(held) + self._think.finish()


class Qwen3CoderParser(XmlCallParser):
    """Qwen3-Coder and Qwen3.5 output: `<think>` reasoning when `thinking` (or `prefilled`), then content and
    `<tool_call><function=…>` calls. `prefilled`: the prompt already ends with `<think>`."""

    def __init__(self, tools: Sequence[ToolDef], thinking: bool = False, prefilled: bool = False) -> None:
        front = ThinkFront(prefilled, end_on=TOOL_OPEN, drop_repeated_open=True) if thinking or prefilled else None
        super().__init__(front, CallStage(tools, parse_qwen_body, "qwen3-coder", log))
