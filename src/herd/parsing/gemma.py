"""Gemma output parsers: Gemma 4's native tool calls and thinking channel, and Gemma 3's prompted calls.

Gemma 4, as its chat template writes an assistant turn (Google's template; Ollama's `model/parsers/gemma4.go` and
its renderer's reference templates):
- a call is `<|tool_call>call:NAME{key:value,...}<tool_call|>`, calls back to back, with Gemma's own value notation:
  bare keys, strings between `<|"|>` delimiters (raw text, no escapes), JSON numbers, `true` / `false` / `null`, and
  nested `{...}` / `[...]` in the same notation (the template's `format_argument`, keys sorted).
- reasoning is a channel, `<|channel>thought\\n…<channel|>`. With thinking on, the system turn starts with `<|think|>`;
  with it off, the 31B template pre-fills an empty `<|channel>thought\\n<channel|>`. After a tool response with
  thinking on, the prompt ends in `<|channel>thought\\n` (that is `prefilled`).

Gemma 3 has no tool tokens (its template has no tools at all, and Ollama's gemma3 template does not offer them).
Google's function-calling guide prompts for one of two shapes, and Gemma's agent examples wrap calls in a
```tool_code block; herd accepts each of them:
- at the very start of the output (after whitespace): a JSON object `{"name": NAME, "parameters": {...}}` (or
  "arguments"), a JSON list of such objects, or a pythonic list `[name(key=value, ...), ...]`;
- anywhere: a fenced block opened by "```tool_code\\n" or "```json\\n" and closed by "```", holding the same JSON or
  pythonic calls (python calls may be one per line, bare or inside `print(...)`);
- FunctionGemma (the Gemma 3 270M tool model; Ollama's `functiongemma.go`): `<start_function_call>call:NAME{...}
  <end_function_call>`, Gemma 4's notation with `<escape>` as the string delimiter.
Python values are read from the syntax tree (`ast`), never evaluated: literals, lists, tuples, dicts with string
keys, and the JSON names true/false/null. Positional arguments are refused (the prompt asks for keywords).

Behaviour (both):
- Content streams as it arrives; only a possible partial marker at the chunk end is held back (at the start of a
  Gemma 3 turn, a leading { or [ is held until its value is complete). Text around calls stays content, unchanged;
  whitespace right after a parsed call is dropped, and after a Gemma 4 call also the stray `<tool_call|>` and
  `<|tool_response>` markers that Ollama has seen the model repeat there.
- A call that does not parse or names a tool not offered is given back as content (its raw text, markers included)
  with a logged warning. A list or block of several calls is accepted or given back whole. A fenced ```json block or
  leading JSON that is not shaped like a call (no "name") is ordinary content, without a warning.
- Gemma 4: a `<|channel>` block anywhere is reasoning (interleaved thinking between calls is allowed); its channel
  name "thought\\n" is dropped, its text right-trimmed, whitespace after `<channel|>` dropped. With thinking off the
  block is dropped, as Ollama does. A call still open at the end of output is parsed as if closed (Ollama: the model
  may stop before `<tool_call|>`); if that fails it is content.
- Gemma 3 has no reasoning markup; `thinking` and `prefilled` change nothing there.

Grammar
-------
What a constraint must make the model write so that this parser accepts it.

Gemma 4 (version=4):

    (<|tool_call>call:NAME{ARGS}<tool_call|>)+
    ARGS  := "" | KEY:VALUE (,KEY:VALUE)*
    VALUE := <|"|>text<|"|> | JSON number | true | false | null | {ARGS} | [ (VALUE (,VALUE)*)? ]

- NAME is the offered tool's name exactly, right after "call:" and up to the first "{".
- KEY is bare: one or more characters other than whitespace and :{}[],"< (a JSON string or <|"|>key<|"|> is also
  read). Text inside <|"|>…<|"|> is taken verbatim and must not contain <|"|> or <tool_call|>.
- Whitespace is allowed between tokens; nothing may follow the closing "}" but whitespace before <tool_call|>.

Gemma 3 (version=3), the one form a constraint should produce:

    {"name": "NAME", "parameters": ARGS}      as the first output (leading whitespace allowed)

with ARGS a JSON object; several calls as a JSON list `[{...}, {...}]` in the same place. Whitespace after it is
dropped; the model should end its turn there.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Callable, Sequence
from enum import Enum, auto

from herd.parsing.base import Delta, ParsedCall
from herd.parsing.jsoncalls import BracketScanner, calls_from_objects, reject_constant
from herd.parsing.machine import CallEmitter, Output, StepParser
from herd.parsing.markers import find_from, split_at_marker
from herd.parsing.toolcalls import new_call_id
from herd.types import ToolDef

log = logging.getLogger(__name__)

CHANNEL_OPEN = "<|channel>"
CHANNEL_CLOSE = "<channel|>"
CHANNEL_NAME = "thought\n"
CALL_OPEN = "<|tool_call>"
CALL_CLOSE = "<tool_call|>"
TOOL_RESPONSE = "<|tool_response>"
STRING_DELIM = '<|"|>'
_POST_CALL_NOISE = (CALL_CLOSE, TOOL_RESPONSE)
_GEMMA4_MARKERS = (CHANNEL_OPEN, CALL_OPEN)

FENCE_TOOL_CODE = "```tool_code\n"
FENCE_JSON = "```json\n"
FENCE_CLOSE = "```"
FG_CALL_OPEN = "<start_function_call>"
FG_CALL_CLOSE = "<end_function_call>"
FG_STRING_DELIM = "<escape>"

_MAX_DEPTH = 100  # nesting of argument values; deeper text is not a call
_Calls = list[ParsedCall]

_JSON = json.JSONDecoder(parse_constant=reject_constant)


# --- Gemma's argument notation ----------------------------------------------------------------------------------


class _Notation:
    """Reads Gemma's `{key:value,...}` argument notation (strings between `delim`) into Python values."""

    def __init__(self, text: str, delim: str) -> None:
        self.s = text
        self.i = 0
        self.delim = delim

    def read_object(self) -> dict[str, object]:
        """The whole text must be one object (surrounding whitespace allowed). Raises ValueError otherwise."""
        self._ws()
        value = self._object(0)
        self._ws()
        if self.i != len(self.s):
            raise ValueError("text after the arguments")
        return value

    def _ws(self) -> None:
        s, i = self.s, self.i
        while i < len(s) and s[i].isspace():
            i += 1
        self.i = i

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _expect(self, c: str) -> None:
        if self._peek() != c:
            raise ValueError(f"expected {c!r} at {self.i}")
        self.i += 1

    def _delimited(self) -> str:
        start = self.i + len(self.delim)
        end = self.s.find(self.delim, start)
        if end < 0:
            raise ValueError("unterminated string")
        self.i = end + len(self.delim)
        return self.s[start:end]

    def _object(self, depth: int) -> dict[str, object]:
        if depth > _MAX_DEPTH:
            raise ValueError("nested too deeply")
        self._expect("{")
        out: dict[str, object] = {}
        self._ws()
        if self._peek() == "}":
            self.i += 1
            return out
        while True:
            self._ws()
            key = self._key()
            self._ws()
            self._expect(":")
            out[key] = self._value(depth)
            self._ws()
            c = self._peek()
            self.i += 1
            if c == "}":
                return out
            if c != ",":
                raise ValueError(f"expected ',' or '}}' at {self.i - 1}")

    def _array(self, depth: int) -> list[object]:
        if depth > _MAX_DEPTH:
            raise ValueError("nested too deeply")
        self._expect("[")
        out: list[object] = []
        self._ws()
        if self._peek() == "]":
            self.i += 1
            return out
        while True:
            out.append(self._value(depth))
            self._ws()
            c = self._peek()
            self.i += 1
            if c == "]":
                return out
            if c != ",":
                raise ValueError(f"expected ',' or ']' at {self.i - 1}")

    def _key(self) -> str:
        if self.s.startswith(self.delim, self.i):
            return self._delimited()
        if self._peek() == '"':
            key, self.i = _JSON.raw_decode(self.s, self.i)
            return str(key)
        start = self.i
        s = self.s
        while self.i < len(s) and not s[self.i].isspace() and s[self.i] not in ':{}[],"<':
            self.i += 1
        if self.i == start:
            raise ValueError(f"expected a key at {start}")
        return s[start : self.i]

    def _value(self, depth: int) -> object:
        self._ws()
        if self.s.startswith(self.delim, self.i):
            return self._delimited()
        c = self._peek()
        if c == "{":
            return self._object(depth + 1)
        if c == "[":
            return self._array(depth + 1)
        if not c:
            raise ValueError("expected a value")
        # A JSON string, number, true, false or null. raw_decode would also take { or [, handled above.
        value, self.i = _JSON.raw_decode(self.s, self.i)
        return value


def _parse_notation_call(body: str, delim: str, names: frozenset[str]) -> _Calls | str:
    """`call:NAME{...}` as [(name, arguments)], or a reason string."""
    text = body.strip()
    if not text.startswith("call:"):
        return 'no "call:" prefix'
    rest = text[len("call:") :]
    brace = rest.find("{")
    if brace < 0:
        return "no arguments object"
    name = rest[:brace].strip()
    if name not in names:
        return f"tool {name!r} was not offered"
    try:
        args = _Notation(rest[brace:], delim).read_object()
    except (ValueError, RecursionError) as exc:
        return f"arguments of {name!r} do not parse ({exc})"
    return [(name, args)]


# --- Gemma 4 -----------------------------------------------------------------------------------------------------


class Gemma4State(Enum):
    """States of the Gemma 4 parser (Ollama's gemma4.go has the same four, plus the channel name)."""

    # Content streams out; a possible partial <|channel> or <|tool_call> at the end is held back.
    CONTENT = auto()
    # After <|channel>: the channel name "thought\n" is dropped (held while it may still be arriving).
    CHANNEL_NAME = auto()
    # Reasoning until <channel|>; a partial close marker and trailing whitespace are held back.
    THINKING = auto()
    # After <|tool_call>: the call accumulates until <tool_call|>.
    CALL = auto()
    # After a parsed call: whitespace and stray <tool_call|> / <|tool_response> markers are dropped.
    AFTER_CALL = auto()


class Gemma4Parser(StepParser, CallEmitter):
    """Incremental parser for one Gemma 4 assistant turn."""

    _family = "Gemma 4"
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
        self._thinking = thinking
        # A pre-opened channel already carries its name, so the output is reasoning text from the first token.
        self.state = Gemma4State.THINKING if prefilled else Gemma4State.CONTENT
        self._buf = ""
        self._pos = 0  # CALL: where the search for <tool_call|> resumes
        self._eat_ws = False  # CONTENT: drop whitespace after a channel block

    def _step(self, out: Output) -> bool:
        state = self.state
        buf = self._buf
        if state is Gemma4State.CONTENT:
            if self._eat_ws:
                buf = buf.lstrip()
                if not buf:
                    self._buf = ""
                    return False
                self._eat_ws = False
            before, marker, self._buf = split_at_marker(buf, _GEMMA4_MARKERS)
            out.content.append(before)
            if not marker:
                return False  # only a possible partial marker is held
            self._pos = 0
            self.state = Gemma4State.CHANNEL_NAME if marker == CHANNEL_OPEN else Gemma4State.CALL
            return True

        if state is Gemma4State.CHANNEL_NAME:
            if buf.startswith(CHANNEL_NAME):
                self._buf = buf[len(CHANNEL_NAME) :]
            elif CHANNEL_NAME.startswith(buf):
                return False  # "" or part of the name
            self.state = Gemma4State.THINKING  # another channel name is left in the text, as Ollama does
            return True

        if state is Gemma4State.THINKING:
            before, closer, rest = split_at_marker(buf, (CHANNEL_CLOSE,))
            reasoning = before.rstrip()
            if self._thinking:
                out.thinking.append(reasoning)
            if closer:
                self._buf = rest
                self.state = Gemma4State.CONTENT
                self._eat_ws = True
                return True
            self._buf = buf[len(reasoning) :]  # trailing whitespace waits: it is dropped if the closer follows
            return False

        if state is Gemma4State.CALL:
            i, self._pos = find_from(buf, CALL_CLOSE, self._pos)
            if i < 0:
                return False
            body = buf[:i]
            self._buf = buf[i + len(CALL_CLOSE) :]
            parsed = _parse_notation_call(body, STRING_DELIM, self._names)
            ok = self._emit(parsed, CALL_OPEN + body + CALL_CLOSE, out)
            self.state = Gemma4State.AFTER_CALL if ok else Gemma4State.CONTENT
            return True

        # AFTER_CALL
        trimmed = self._buf = buf.lstrip()
        for noise in _POST_CALL_NOISE:
            if trimmed.startswith(noise):
                self._buf = trimmed[len(noise) :]
                return True
        if any(noise.startswith(trimmed) for noise in _POST_CALL_NOISE):
            return False  # nothing yet, or a noise marker still arriving
        self.state = Gemma4State.CONTENT
        return True

    def _flush(self, out: Output) -> None:
        buf, self._buf = self._buf, ""
        state, self.state = self.state, Gemma4State.CONTENT
        if state is Gemma4State.CONTENT:
            out.content.append(buf)  # a partial marker that never completed is ordinary text
        elif state is Gemma4State.THINKING and self._thinking:
            out.thinking.append(buf.rstrip())
        elif state is Gemma4State.CALL:
            # Ollama flushes an unclosed call at the end: the model may stop before <tool_call|>.
            self._emit(_parse_notation_call(buf, STRING_DELIM, self._names), CALL_OPEN + buf, out)
        # CHANNEL_NAME holds part of the name, AFTER_CALL part of a noise marker: both are dropped.


# --- Gemma 3 -----------------------------------------------------------------------------------------------------


class Gemma3State(Enum):
    """States of the Gemma 3 parser."""

    # Tools offered, only whitespace so far: a { or [ here starts a call value.
    LEADING = auto()
    # A leading { or [ value, until its brackets balance.
    VALUE = auto()
    # Content streams out; a possible partial fence or FunctionGemma marker at the end is held back.
    CONTENT = auto()
    # Inside ```tool_code / ```json, until the closing ```.
    FENCE = auto()
    # After <start_function_call>, until <end_function_call>.
    FUNCTION_CALL = auto()
    # After parsed calls: whitespace is dropped; a { or [ next is another call value.
    AFTER_CALL = auto()
    # No tools were offered: everything is content.
    DONE = auto()


_GEMMA3_MARKERS = (FENCE_TOOL_CODE, FENCE_JSON, FG_CALL_OPEN)


class Gemma3Parser(StepParser, CallEmitter):
    """Incremental parser for one Gemma 3 (or FunctionGemma) assistant turn. Gemma 3 has no reasoning markup."""

    _family = "Gemma 3"
    _log = log

    def __init__(
        self,
        tools: Sequence[ToolDef],
        thinking: bool = False,
        prefilled: bool = False,
        *,
        new_id: Callable[[], str] = new_call_id,
    ) -> None:
        del thinking, prefilled  # no reasoning markup in Gemma 3
        super().__init__(tools, new_id)
        self.state = Gemma3State.LEADING if self._names else Gemma3State.DONE
        self._buf = ""
        self._pos = 0  # FENCE / FUNCTION_CALL: where the search for the closer resumes
        self._fence = ""  # FENCE: the opener, for giving the block back
        self._scanner = BracketScanner()

    def feed(self, text: str) -> Delta:
        if text and self.state is Gemma3State.DONE:
            return Delta(content=text)
        return super().feed(text)

    def _step(self, out: Output) -> bool:
        state = self.state
        buf = self._buf
        if state in (Gemma3State.LEADING, Gemma3State.AFTER_CALL):
            stripped = buf.lstrip()
            if state is Gemma3State.AFTER_CALL:
                buf = self._buf = stripped  # whitespace after calls is dropped
            if not stripped:
                return False
            if stripped[0] in "{[":
                out.content.append(buf[: len(buf) - len(stripped)])  # leading whitespace is content, as in Ollama
                self._buf = stripped
                self._scanner = BracketScanner()
                self.state = Gemma3State.VALUE
            else:
                self.state = Gemma3State.CONTENT
            return True

        if state is Gemma3State.VALUE:
            end = self._scanner.advance(buf)
            if end is None:
                return False
            raw = buf[:end]
            self._buf = buf[end:]
            calls_or_reason = _gemma3_calls(raw, self._names)
            if calls_or_reason is None:
                out.content.append(raw)  # ordinary JSON, not a call
                self.state = Gemma3State.CONTENT
            else:
                ok = self._emit(calls_or_reason, raw, out)
                self.state = Gemma3State.AFTER_CALL if ok else Gemma3State.CONTENT
            return True

        if state is Gemma3State.CONTENT:
            before, marker, self._buf = split_at_marker(buf, _GEMMA3_MARKERS)
            out.content.append(before)
            if not marker:
                return False  # only a possible partial marker is held
            self._pos = 0
            self._fence = marker
            self.state = Gemma3State.FUNCTION_CALL if marker == FG_CALL_OPEN else Gemma3State.FENCE
            return True

        # FENCE or FUNCTION_CALL
        closer = FG_CALL_CLOSE if state is Gemma3State.FUNCTION_CALL else FENCE_CLOSE
        i, self._pos = find_from(buf, closer, self._pos)
        if i < 0:
            return False
        body = buf[:i]
        self._buf = buf[i + len(closer) :]
        raw = self._fence + body + closer
        if state is Gemma3State.FUNCTION_CALL:
            parsed: _Calls | str | None = _parse_notation_call(body, FG_STRING_DELIM, self._names)
        else:
            parsed = _gemma3_calls(body, self._names)
            if parsed is None and self._fence == FENCE_TOOL_CODE:
                parsed = "no function call in the tool_code block"  # the block is meant for calls
        if parsed is None:
            out.content.append(raw)  # a ```json block that is not a call
            self.state = Gemma3State.CONTENT
        else:
            ok = self._emit(parsed, raw, out)
            self.state = Gemma3State.AFTER_CALL if ok else Gemma3State.CONTENT
        return True

    def _flush(self, out: Output) -> None:
        buf, self._buf = self._buf, ""
        state, self.state = self.state, Gemma3State.DONE
        if state is Gemma3State.VALUE:
            log.warning("Gemma 3: a leading value never ended; given back as content: %.300r", buf)
        elif state in (Gemma3State.FENCE, Gemma3State.FUNCTION_CALL):
            log.warning("Gemma 3 tool call never ended; given back as content: %.300r", self._fence + buf)
            buf = self._fence + buf
        elif state is Gemma3State.AFTER_CALL:
            return  # only whitespace
        out.content.append(buf)


def _gemma3_calls(text: str, names: frozenset[str]) -> _Calls | str | None:
    """Calls in JSON or pythonic text; a reason string when it is shaped like a call but is not a valid one;
    None when it is not shaped like a call at all (ordinary JSON, prose)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return _python_calls(text, names)
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, dict) and "name" in item for item in items):
        return None
    return calls_from_objects(items, names)


def _python_calls(text: str, names: frozenset[str]) -> _Calls | str | None:
    """`name(key=value, ...)` statements, bare, in print(...), or as a list; read from the syntax tree."""
    try:
        tree = ast.parse(text.strip(), mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not tree.body:
        return None
    nodes: list[ast.Call] = []
    for stmt in tree.body:
        expr = stmt.value if isinstance(stmt, ast.Expr) else None
        if isinstance(expr, ast.List | ast.Tuple):
            items = list(expr.elts)
        else:
            items = [expr] if expr is not None else []
        if not items or not all(isinstance(item, ast.Call) for item in items):
            if any(isinstance(node, ast.Call) for node in ast.walk(stmt)):
                return "not a plain function call"
            return None
        nodes.extend(item for item in items if isinstance(item, ast.Call))
    found: _Calls = []
    for node in nodes:
        call = _python_call(node, names)
        if isinstance(call, str):
            return call
        found.append(call)
    return found


def _python_call(node: ast.Call, names: frozenset[str]) -> ParsedCall | str:
    inner = node.args[0] if len(node.args) == 1 and not node.keywords else None
    if isinstance(node.func, ast.Name) and node.func.id == "print" and isinstance(inner, ast.Call):
        node = inner  # print(get_weather(city="Paris")), as tool_code examples write it
    if not isinstance(node.func, ast.Name):
        return "the called function is not a plain name"
    name = node.func.id
    if name not in names:
        return f"tool {name!r} was not offered"
    if node.args:
        return f"positional arguments to {name!r}"
    args: dict[str, object] = {}
    for kw in node.keywords:
        if kw.arg is None:
            return f"**arguments to {name!r}"
        try:
            args[kw.arg] = _python_value(kw.value, 0)
        except ValueError as exc:
            return f"argument {kw.arg!r} of {name!r}: {exc}"
    return name, args


_PY_NAMES: dict[str, object] = {"True": True, "False": False, "None": None, "true": True, "false": False, "null": None}


def _python_value(node: ast.expr, depth: int) -> object:
    """A literal argument as a JSON value. Raises ValueError for anything else (names, calls, operators)."""
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, str | int | float)):
        return node.value  # bool is an int
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        number = node.operand.value if isinstance(node.operand, ast.Constant) else None
        if isinstance(number, int | float) and not isinstance(number, bool):
            return -number if isinstance(node.op, ast.USub) else number
    if isinstance(node, ast.Name) and node.id in _PY_NAMES:
        return _PY_NAMES[node.id]
    if isinstance(node, ast.List | ast.Tuple):
        return [_python_value(item, depth + 1) for item in node.elts]
    if isinstance(node, ast.Dict):
        out: dict[str, object] = {}
        for key, value in zip(node.keys, node.values):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                raise ValueError("dictionary keys must be strings")
            out[key.value] = _python_value(value, depth + 1)
        return out
    raise ValueError("not a literal value")


# --- shared --------------------------------------------------------------------------------------------------------


class GemmaParser:
    """The Gemma parser for a model generation: `version=4` (the default) or `version=3` (also 1, 2, 3n and
    FunctionGemma, which have no native tool tokens beyond FunctionGemma's). Both behind the one parser API."""

    def __init__(
        self,
        tools: Sequence[ToolDef],
        thinking: bool = False,
        prefilled: bool = False,
        *,
        version: int = 4,
        new_id: Callable[[], str] = new_call_id,
    ) -> None:
        if version == 4:
            self._impl: Gemma4Parser | Gemma3Parser = Gemma4Parser(tools, thinking, prefilled, new_id=new_id)
        elif 1 <= version <= 3:
            self._impl = Gemma3Parser(tools, thinking, prefilled, new_id=new_id)
        else:
            raise ValueError(f"no Gemma parser for version {version}")
        self.version = version

    def feed(self, text: str) -> Delta:
        return self._impl.feed(text)

    def finish(self) -> Delta:
        return self._impl.finish()
