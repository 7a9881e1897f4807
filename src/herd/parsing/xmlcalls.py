"""The `<tool_call>…</tool_call>` stage of the XML-style families, Qwen3-Coder / Qwen3.5 and GLM-4.x.

Both write calls inside the same outer tags and differ only in the body between them: each family module has its
body parser (`parse_qwen_body`, `parse_glm_body`), its Grammar and its thinking front, and builds its parser from
the pieces here: `CallStage`, which finds the blocks, holds the whitespace around them and gives failed ones back
as content; the conversion of a raw value to the type the tool's schema declares (`parse_value`: Ollama uses the
same function for both families); and `XmlCallParser`, the thinking front and the stage behind one parser API.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from enum import Enum, auto

from herd.parsing.base import Delta, IncrementalParser, ParsedCall
from herd.parsing.jsoncalls import strict_json
from herd.parsing.machine import CallEmitter, Output, StepParser
from herd.parsing.markers import find_from, partial_len
from herd.parsing.toolcalls import new_call_id
from herd.types import ToolDef

log = logging.getLogger(__name__)

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"


class CallError(ValueError):
    """A call body that is not a call. Its message is what the warning says; it never leaves this package."""


# Parses the text between <tool_call> and </tool_call>. `final`: the output ended before </tool_call>, so accept
# only a complete call (no repairs, required arguments present).
BodyParser = Callable[[str, Mapping[str, ToolDef], bool], list[ParsedCall]]


# --- values ------------------------------------------------------------------------------------------------------

_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT64 = 2**63


def declared_types(tool: ToolDef | None, key: str) -> tuple[str, ...]:
    """JSON-schema type names declared for one parameter: `type` (a name or a list), and those of `anyOf`/`oneOf`
    members (Ollama collects the `anyOf` ones). Empty when the tool or the parameter is unknown."""
    if tool is None:
        return ()
    props = tool.parameters.get("properties")
    prop = props.get(key) if isinstance(props, dict) else None
    if not isinstance(prop, dict):
        return ()
    found: list[str] = []

    def collect(schema: object) -> None:
        if not isinstance(schema, dict):
            return
        t = schema.get("type")
        if isinstance(t, str):
            found.append(t)
        elif isinstance(t, list):
            found.extend(x for x in t if isinstance(x, str))

    collect(prop)
    for union in ("anyOf", "oneOf"):
        members = prop.get(union)
        if isinstance(members, list):
            for member in members:
                collect(member)
    return tuple(dict.fromkeys(found))


def parse_value(raw: str, types: Sequence[str]) -> object:
    """A raw parameter value as the declared type, by Ollama's rules (`parseValue` in qwen3coder.go).

    One leading and one trailing "\\n" are removed first. "null" in any case is None whatever the type. Then, in
    this order, whichever declared type fits first: boolean (true/false in any case), integer, number (an
    integral one becomes an int), array, object; otherwise the string. No declared type: the string."""
    if raw.startswith("\n"):
        raw = raw[1:]
    if raw.endswith("\n"):
        raw = raw[:-1]
    if raw.lower() == "null":
        return None
    declared = set(types)
    if "boolean" in declared:
        lower = raw.lower()
        if lower in ("true", "false"):
            return lower == "true"
    if "integer" in declared and len(raw) <= 20 and _INT_RE.fullmatch(raw):  # longer is out of int64 anyway, and
        number = int(raw)  # int() refuses very long digit strings with an error
        if -_INT64 <= number < _INT64:
            return number
    if "number" in declared and _FLOAT_RE.fullmatch(raw):
        f = float(raw)
        if math.isfinite(f):
            return int(f) if f.is_integer() and abs(f) < _INT64 else f
    if "array" in declared and (array := strict_json(raw, list)) is not None:
        return array
    if "object" in declared and (obj := strict_json(raw, dict)) is not None:
        return obj
    return raw


def check_required(tool: ToolDef, args: Mapping[str, object]) -> None:
    required = tool.parameters.get("required")
    if isinstance(required, list):
        missing = [r for r in required if isinstance(r, str) and r not in args]
        if missing:
            raise CallError(f"required arguments {missing} missing for tool {tool.name!r}")


def offered(tools: Mapping[str, ToolDef], name: str) -> ToolDef:
    tool = tools.get(name)
    if tool is None:
        raise CallError(f"tool {name!r} was not offered")
    return tool


# --- the stage -----------------------------------------------------------------------------------------------------


class CallState(Enum):
    """States of `CallStage` (compare Ollama's qwenParserState / glm46ParserState content and tool states)."""

    # Content streams out; a possible partial "<tool_call>" and trailing whitespace (dropped if a call follows)
    # are held back.
    CONTENT = auto()
    # After "<tool_call>": the body accumulates until "</tool_call>", then it is parsed as a whole.
    CALL = auto()
    # After a parsed call: whitespace is dropped until the next visible character, which is content again.
    AFTER_CALL = auto()


class CallStage(StepParser, CallEmitter):
    """Finds `<tool_call>…</tool_call>` blocks in content and turns each into calls with `parse_body`.

    Family-neutral: Qwen3-Coder and GLM-4.x share the outer tags and differ only in the body. A block that fails
    becomes content exactly as written (with the whitespace before it); a warning says why (to `log`: the family
    module's logger).
    """

    def __init__(
        self, tools: Sequence[ToolDef], parse_body: BodyParser, family: str, log: logging.Logger = log
    ) -> None:
        super().__init__(tools, new_call_id)
        self._tools: dict[str, ToolDef] = {}
        for tool in tools:
            self._tools.setdefault(tool.name, tool)
        self._parse_body = parse_body
        self._family = family
        self._log = log
        self.state = CallState.CONTENT
        self._buf = ""  # CONTENT: held text; CALL: the body so far
        self._ws = ""  # whitespace before the current call's tag, given back if the call fails
        self._scanned = 0  # CALL: _buf[:_scanned] holds no "</tool_call>"

    def finish(self) -> Delta:
        state, buf = self.state, self._buf
        self.state, self._buf = CallState.CONTENT, ""
        if state is CallState.CONTENT:
            return Delta(content=buf)  # trailing whitespace, or a partial tag that never completed
        if state is CallState.AFTER_CALL:
            return Delta()
        # The output ended inside a call. Only a call missing nothing but its closing tag counts.
        body = buf[: len(buf) - partial_len(buf, (TOOL_CLOSE,))]
        out = Output()
        if not self._resolve(body, buf, True, out):
            return Delta(content=self._ws + TOOL_OPEN + buf)
        return out.delta()

    def _step(self, out: Output) -> bool:
        """Consume what the buffer allows in the current state. True when a transition needs another step."""
        buf = self._buf
        if self.state is CallState.CONTENT:
            i = buf.find(TOOL_OPEN)
            if i >= 0:
                before = buf[:i]
                visible = before.rstrip()
                out.content.append(visible)
                self._ws = before[len(visible) :]
                self._buf = buf[i + len(TOOL_OPEN) :]
                self._scanned = 0
                self.state = CallState.CALL
                return True
            keep = partial_len(buf, (TOOL_OPEN,))
            visible = buf[: len(buf) - keep].rstrip()
            out.content.append(visible)
            self._buf = buf[len(visible) :]
            return False

        if self.state is CallState.CALL:
            j, self._scanned = find_from(buf, TOOL_CLOSE, self._scanned)
            if j < 0:
                return False
            body = buf[:j]
            self._buf = buf[j + len(TOOL_CLOSE) :]
            if self._resolve(body, body, False, out):
                self.state = CallState.AFTER_CALL
            else:
                out.content.append(self._ws + TOOL_OPEN + body + TOOL_CLOSE)
                self.state = CallState.CONTENT
            self._ws = ""
            return True

        visible = buf.lstrip()
        self._buf = visible
        if visible:
            self.state = CallState.CONTENT
            return True
        return False

    def _resolve(self, body: str, raw: str, final: bool, out: Output) -> bool:
        """True when `body` gave calls (added to `out`); False, with a warning, when it is not a call."""
        try:
            parsed = self._parse_body(body, self._tools, final)
        except CallError as e:
            where = "unfinished call at end of output" if final else "tool call"
            self._log.warning("%s %s returned as content: %s: %r", self._family, where, e, raw[:200])
            return False
        self._add_calls(parsed, out)
        return True


class XmlCallParser:
    """Thinking (optional) in front of a `CallStage`: the one `feed`/`finish` parser for a turn."""

    def __init__(self, front: IncrementalParser | None, calls: CallStage) -> None:
        self._front = front
        self._calls = calls

    def feed(self, text: str) -> Delta:
        if self._front is None:
            return self._calls.feed(text)
        split = self._front.feed(text)
        out = self._calls.feed(split.content)
        return Delta(content=out.content, thinking=split.thinking, tool_calls=out.tool_calls)

    def finish(self) -> Delta:
        split = self._front.finish() if self._front is not None else Delta()
        out = self._calls.feed(split.content) + self._calls.finish()
        return Delta(content=out.content, thinking=split.thinking, tool_calls=out.tool_calls)
