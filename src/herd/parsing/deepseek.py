"""DeepSeek output parser: `<think>` reasoning and DeepSeek's tool-call markup (R1, V3, V3.1, V3.2).

Formats, as the models' chat templates render an assistant turn (the markers use the fullwidth bar "｜", U+FF5C,
and the "▁" of U+2581; they are single tokens in DeepSeek's vocabulary):

- V3.1 and V3.2-Exp (`tokenizer_config.json` chat_template; Ollama's `model/parsers/deepseek3.go` parses this one):
  `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{json}<｜tool▁call▁end｜>…<｜tool▁calls▁end｜>`,
  calls chained with nothing in between. Thinking: the prompt ends in `<｜Assistant｜><think>` (thinking on) or
  `<｜Assistant｜></think>` (off), so with thinking on the output starts inside the reasoning.
- R1 and V3/V3-0324: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{json}\n```
  <｜tool▁call▁end｜>` (no line break before the end marker), calls separated by "\n", then `<｜tool▁calls▁end｜>`.
  R1's template ends the prompt in `<｜Assistant｜><think>\n`: reasoning is pre-opened.
- V3.2 (the DSML encoding that DeepSeek ships as Python; llama.cpp's `DeepSeek-V3.2.jinja` and vLLM's
  `deepseekv32_tool_parser.py` follow it): `<｜DSML｜function_calls>` blocks of
  `<｜DSML｜invoke name="NAME">` + `<｜DSML｜parameter name="P" string="true|false">VALUE</｜DSML｜parameter>` lines.

Behaviour:
- Reasoning is split by herd's `ThinkingParser` (the same `<think>` rules as every other family in herd, which port
  Ollama's thinking/parser.go): with `thinking`, a leading `<think>` (or the pre-opened prompt, `prefilled`) starts it.
  A call the model only thinks about is not a call.
- Text outside calls is content as it arrives; only a possible partial marker at the end of a chunk is held back.
  Text before, between and after calls stays content, unchanged; whitespace right after a parsed call or after
  `<｜tool▁calls▁end｜>` is dropped, as is whitespace between the calls of a section.
- A call is given back as content, with a warning, when its text does not parse, names a tool that was not offered,
  or never ends: its raw text from `<｜tool▁call▁begin｜>` to `<｜tool▁call▁end｜>` (or the whole DSML block).
  The section markers `<｜tool▁calls▁begin｜>` / `<｜tool▁calls▁end｜>` themselves are never content.
- A `<｜tool▁call▁begin｜>` without the section marker before it is accepted too (some distills skip it).
- Unlike Ollama, content before a call is not right-trimmed and hallucinated `<｜tool▁output▁begin｜>` blocks are
  left as they are: herd's other parsers keep the text as written, and streaming must not depend on chunking.

Grammar
-------
What a constraint must make the model write so that this parser accepts it (the V3.1 form; R1-style models accept
it as well, as their markers are the same tokens):

    <｜tool▁calls▁begin｜>  CALL+  <｜tool▁calls▁end｜>
    CALL := <｜tool▁call▁begin｜> NAME <｜tool▁sep｜> ARGS <｜tool▁call▁end｜>

- NAME is the tool's name exactly (whitespace around it is stripped, nothing else is); it must be an offered tool.
- ARGS is one JSON object (`json.loads` must accept it and give a dict; whitespace around it is allowed). It must
  not contain the text `<｜tool▁call▁end｜>`, which ends the call wherever it occurs.
- Between calls, and between the markers, only whitespace (the V3.1 template writes none).
- Text before `<｜tool▁calls▁begin｜>` is content; after `<｜tool▁calls▁end｜>` the model should end its turn.

Also accepted (not for a grammar to produce): the R1 body `function<｜tool▁sep｜>NAME` + newline + a fenced
```json block (fence optional) before `<｜tool▁call▁end｜>`, and DSML blocks:
`<｜DSML｜function_calls>` (`<｜DSML｜invoke name="NAME">` PARAM* `</｜DSML｜invoke>`)+ `</｜DSML｜function_calls>`,
PARAM := `<｜DSML｜parameter name="KEY" string="true">` raw text `</｜DSML｜parameter>` or `string="false">` JSON text,
with only whitespace between the tags.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from enum import Enum, auto

from herd.parsing.base import Delta, ParsedCall
from herd.parsing.jsoncalls import json_object
from herd.parsing.machine import CallEmitter, Output, StepParser
from herd.parsing.markers import find_from, split_at_marker
from herd.parsing.thinking import ThinkingParser
from herd.parsing.toolcalls import new_call_id
from herd.types import ToolDef

log = logging.getLogger(__name__)

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
TOOL_SEP = "<｜tool▁sep｜>"
DSML_BEGIN = "<｜DSML｜function_calls>"
DSML_END = "</｜DSML｜function_calls>"

_CONTENT_MARKERS = (CALLS_BEGIN, CALL_BEGIN, DSML_BEGIN)
_SECTION_MARKERS = (CALL_BEGIN, CALLS_END)

# R1's call body after the separator: the name on the first line, then the arguments, usually in a ```json fence.
_R1_BODY_RE = re.compile(r"(?P<name>[^\s`{]+)\s*(?:```[A-Za-z]*\s*(?P<fenced>.*?)\s*```|(?P<bare>.*?))\s*", re.DOTALL)
_DSML_INVOKE_RE = re.compile(r'\s*<｜DSML｜invoke\s+name="([^"]*)"\s*>(.*?)</｜DSML｜invoke>', re.DOTALL)
_DSML_PARAM_RE = re.compile(
    r'\s*<｜DSML｜parameter\s+name="([^"]*)"\s+string="(true|false)"\s*>(.*?)</｜DSML｜parameter>', re.DOTALL
)


class DeepSeekState(Enum):
    """Where the tool-call scanner is, in the content that the thinking parser lets through."""

    # Content streams out; a possible partial call marker at the end of the buffer is held back.
    CONTENT = auto()
    # Inside <｜tool▁calls▁begin｜>…<｜tool▁calls▁end｜>, between calls: whitespace is dropped.
    SECTION = auto()
    # Inside a section, text that is not a call: content, unchanged, up to the next marker.
    SECTION_TEXT = auto()
    # After <｜tool▁call▁begin｜>: the call's text accumulates until <｜tool▁call▁end｜>.
    CALL = auto()
    # After <｜DSML｜function_calls>: the block accumulates until </｜DSML｜function_calls>.
    DSML = auto()


class DeepSeekParser(StepParser, CallEmitter):
    """Incremental parser for one DeepSeek assistant turn: content, `<think>` reasoning and tool calls."""

    _family = "DeepSeek"
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
        self._thinking = ThinkingParser(prefilled=prefilled) if thinking else None
        self.state = DeepSeekState.CONTENT
        self._buf = ""
        self._pos = 0  # CALL / DSML: where the search for the end marker resumes
        self._in_section = False  # the current call sits inside <｜tool▁calls▁begin｜>
        self._eat_ws = False  # CONTENT: drop whitespace that follows a parsed call or a section end

    def feed(self, text: str) -> Delta:
        if not text:
            return Delta()
        if self._thinking is None:
            return self._run(text, final=False)
        split = self._thinking.feed(text)
        out = self._run(split.content, final=False)
        return Delta(out.content, split.thinking, out.tool_calls)

    def finish(self) -> Delta:
        split = self._thinking.finish() if self._thinking is not None else Delta()
        out = self._run(split.content, final=True)
        return Delta(out.content, split.thinking, out.tool_calls)

    # --- the state machine ----------------------------------------------------------------------------------

    def _step(self, out: Output) -> bool:
        """Consume what the buffer allows in the current state. True when another step can make progress."""
        state = self.state
        if state is DeepSeekState.CONTENT:
            return self._step_text(out, _CONTENT_MARKERS)
        if state is DeepSeekState.SECTION_TEXT:
            return self._step_text(out, _SECTION_MARKERS)
        if state is DeepSeekState.SECTION:
            buf = self._buf = self._buf.lstrip()
            if not buf:
                return False
            if buf.startswith(CALL_BEGIN):
                self._enter(DeepSeekState.CALL, buf[len(CALL_BEGIN) :], in_section=True)
                return True
            if buf.startswith(CALLS_END):
                self._buf = buf[len(CALLS_END) :]
                self.state = DeepSeekState.CONTENT
                self._in_section = False
                self._eat_ws = True
                return True
            if any(marker.startswith(buf) for marker in _SECTION_MARKERS):
                return False  # a marker may be arriving
            self.state = DeepSeekState.SECTION_TEXT
            return True
        end_marker = CALL_END if state is DeepSeekState.CALL else DSML_END
        i, self._pos = find_from(self._buf, end_marker, self._pos)
        if i < 0:
            return False
        body = self._buf[:i]
        self._buf = self._buf[i + len(end_marker) :]
        if state is DeepSeekState.CALL:
            ok = self._emit(self._parse_call(body), CALL_BEGIN + body + CALL_END, out)
            if self._in_section:
                self.state = DeepSeekState.SECTION
                return True
        else:
            ok = self._emit(self._parse_dsml(body), DSML_BEGIN + body + DSML_END, out)
        self.state = DeepSeekState.CONTENT
        self._eat_ws = ok
        return True

    def _step_text(self, out: Output, markers: tuple[str, ...]) -> bool:
        buf = self._buf
        if self._eat_ws:
            buf = buf.lstrip()
            if not buf:
                self._buf = ""
                return False
            self._eat_ws = False
        before, marker, rest = split_at_marker(buf, markers)
        out.content.append(before)
        if not marker:
            self._buf = rest  # a possible partial marker
            return False
        if self.state is DeepSeekState.SECTION_TEXT:
            self._buf = marker + rest  # SECTION takes the marker
            self.state = DeepSeekState.SECTION
        elif marker == CALLS_BEGIN:
            self._buf = rest
            self.state = DeepSeekState.SECTION
            self._in_section = True
        elif marker == CALL_BEGIN:
            self._enter(DeepSeekState.CALL, rest, in_section=False)
        else:
            self._enter(DeepSeekState.DSML, rest, in_section=False)
        return True

    def _enter(self, state: DeepSeekState, rest: str, in_section: bool) -> None:
        self.state = state
        self._buf = rest
        self._pos = 0
        self._in_section = in_section

    def _flush(self, out: Output) -> None:
        """End of output: nothing held back may be lost."""
        buf, self._buf = self._buf, ""
        state, self.state = self.state, DeepSeekState.CONTENT
        if state is DeepSeekState.CALL:
            log.warning("DeepSeek tool call never ended; given back as content: %.300r", buf)
            out.content.append(CALL_BEGIN + buf)
        elif state is DeepSeekState.DSML:
            log.warning("DeepSeek DSML tool-call block never ended; given back as content: %.300r", buf)
            out.content.append(DSML_BEGIN + buf)
        elif not (self._eat_ws and not buf.strip()):
            out.content.append(buf)  # a partial marker that never completed is ordinary text

    # --- call bodies ------------------------------------------------------------------------------------------

    def _parse_call(self, body: str) -> list[ParsedCall] | str:
        """One call between <｜tool▁call▁begin｜> and <｜tool▁call▁end｜>; a reason string when it is not one."""
        head, sep, tail = body.partition(TOOL_SEP)
        if not sep:
            return "no <｜tool▁sep｜>"
        head, tail = head.strip(), tail.strip()
        if not tail or tail.startswith("{"):
            name, args_text = head, tail  # V3.1: NAME<｜tool▁sep｜>{json}
        elif head == "function":
            m = _R1_BODY_RE.fullmatch(tail)  # R1 / V3: function<｜tool▁sep｜>NAME\n```json\n{json}\n```
            if m is None:
                return "unreadable R1-style call"
            name = m.group("name")
            args_text = m.group("fenced") if m.group("fenced") is not None else m.group("bare")
        else:
            return f"arguments of {head!r} are not a JSON object"
        if name not in self._names:
            return f"tool {name!r} was not offered"
        args = json_object(args_text)
        if args is None:
            return f"arguments of {name!r} are not a JSON object"
        return [(name, args)]

    def _parse_dsml(self, body: str) -> list[ParsedCall] | str:
        """A whole V3.2 DSML block: every invoke must parse, or the block is given back."""
        found: list[ParsedCall] = []
        pos = 0
        while body[pos:].strip():
            m = _DSML_INVOKE_RE.match(body, pos)
            if m is None:
                return "unreadable DSML block"
            name, inner = m.group(1), m.group(2)
            if name not in self._names:
                return f"tool {name!r} was not offered"
            args: dict[str, object] = {}
            ipos = 0
            while inner[ipos:].strip():
                p = _DSML_PARAM_RE.match(inner, ipos)
                if p is None:
                    return f"unreadable DSML parameters of {name!r}"
                key, is_string, value = p.group(1), p.group(2) == "true", p.group(3)
                if is_string:
                    args[key] = value
                else:
                    try:
                        args[key] = json.loads(value)
                    except (ValueError, RecursionError):
                        return f"parameter {key!r} of {name!r} is not JSON"
                ipos = p.end()
            found.append((name, args))
            pos = m.end()
        if not found:
            return "empty DSML block"
        return found
