"""GLM-4.5 / 4.6 / 4.7 output parser: `<think>` reasoning, then content and `<arg_key>`/`<arg_value>` tool calls.

The call format, as the models' chat templates render a call they made (GLM-4.5's and GLM-4.6's
`chat_template.jinja`, as llama.cpp ships them in `models/templates/glm_4_5.jinja` and `GLM-4.6.jinja`; GLM-4.7 as
Ollama's `model/renderers/glm47.go` renders it):

    GLM-4.5 / 4.6                        GLM-4.7 (the same, without the newlines)
    <tool_call>get_weather               <tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>…
    <arg_key>city</arg_key>
    <arg_value>Paris</arg_value>
    <arg_key>days</arg_key>
    <arg_value>3</arg_value>
    </tool_call>

A string value is written raw, any other value as JSON (`tojson`). Reasoning is `<think>…</think>`: GLM-4.5/4.6
write the open tag themselves (the prompt ends `<|assistant|>`, or `<|assistant|>\\n<think></think>` with thinking
off); GLM-4.7's prompt ends with `<think>` when thinking is on, which is `prefilled=True` here.

Behaviour, following Ollama's `model/parsers/glm46.go` (and `glm47.go`, which only starts inside the reasoning):

- Reasoning is split off by herd's `ThinkingParser` (`thinking=True`, or `prefilled=True`). With neither, a
  `<think>` in the output is content.
- Content streams as it arrives; a possible partial `<tool_call>` and trailing whitespace are held back, because
  whitespace right before a call and right after its `</tool_call>` is dropped, as Ollama does. Whitespace at the
  very end of the output is released by `finish`.
- A call is parsed when `</tool_call>` arrives. The name is the text before the first tag, stripped; keys are
  stripped; values go through the same schema-typed conversion as Qwen3-Coder's (`parse_value`; Ollama uses the
  same function for both families), so `<arg_value>3</arg_value>` is 3 for an integer parameter and "3" for a
  string one.
- GLM models often drop one of the four inner tags. Inside a closed call these are repaired, as Ollama's
  `repairGLM46XML` does: a missing `</arg_value>` (before the next `<arg_key>` or at the end), a missing
  `<arg_value>` (the text after `</arg_key>` up to `</arg_value>` is the value), a missing `</arg_key>` (before
  `<arg_value>`), and a missing `<arg_key>` (after `</arg_value>`; for the first argument the text before
  `</arg_key>` is split at its first whitespace into name and key). A key without any value, or stray text
  between arguments, is not repaired.
- Output that ends inside a call gives the call only if nothing but `</tool_call>` is missing: no repair needed,
  the tool offered, every required argument present (Ollama's `validateFinalGLM46ToolCall`: repairing a truncated
  value could turn partial output into a call that changes something).
- A call that does not parse, or names a tool that was not offered, is returned as content exactly as written,
  with a logged warning. Ollama answers 500 for the first and returns the second as a call.

Grammar
-------
What a constraint must make the model write so that this parser returns it as calls (WS is any run of whitespace
as `str.isspace` defines it, possibly empty):

    turn  = [content] (WS call)* [WS content]   ; content: any text without "<tool_call>"
    call  = "<tool_call>" WS NAME (WS pair)* WS "</tool_call>"
    pair  = "<arg_key>" KEY "</arg_key>" WS "<arg_value>" VALUE "</arg_value>"

- NAME is exactly an offered tool's name (no surrounding whitespace needed; any is stripped) and contains none of
  the four argument tags. A call without arguments is `<tool_call>NAME</tool_call>`.
- KEY is the parameter name (stripped). VALUE contains none of "<arg_key>", "</arg_key>", "<arg_value>",
  "</arg_value>", "</tool_call>"; one leading and one trailing "\\n" are removed.
- VALUE is converted by the schema type of KEY exactly as in `herd.parsing.qwen3_coder` (its Grammar section;
  both use `herd.parsing.xmlcalls.parse_value`):
  `null` is None for any type, booleans `true`/`false`, integers, numbers, JSON arrays/objects, else the string.
- Canonical forms: GLM-4.5/4.6 `<tool_call>NAME\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>\\n</tool_call>`,
  GLM-4.7 the same with no newlines. Whitespace before `<tool_call>` and after `</tool_call>` is dropped.
- With thinking on, the reasoning comes first: `<think>` (left out when the prompt pre-opened it) … `</think>`.
- For output cut off before `</tool_call>` the call counts only if the last `</arg_value>` is there and all
  required arguments are present.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from enum import Enum, auto

from herd.parsing.base import ParsedCall
from herd.parsing.thinking import THINK_CLOSE, THINK_OPEN, ThinkingParser
from herd.parsing.xmlcalls import (
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

_KEY_OPEN = "<arg_key>"
_KEY_CLOSE = "</arg_key>"
_VALUE_OPEN = "<arg_value>"
_VALUE_CLOSE = "</arg_value>"
_ARG_TAG_RE = re.compile("(" + "|".join(re.escape(t) for t in (_KEY_OPEN, _KEY_CLOSE, _VALUE_OPEN, _VALUE_CLOSE)) + ")")


class _Phase(Enum):
    """Where the body walk is in the cycle name, <arg_key> key </arg_key>, <arg_value> value </arg_value>, …"""

    NAME = auto()  # before the first tag: the function name
    KEY = auto()  # after <arg_key>
    AFTER_KEY = auto()  # after </arg_key>, expecting <arg_value>
    VALUE = auto()  # after <arg_value>
    AFTER_VALUE = auto()  # after </arg_value>, expecting <arg_key> or the end


def _walk(body: str) -> tuple[str, list[tuple[str, str]], list[str]]:
    """Split a call body into name, (key, raw value) pairs and the repairs that were needed."""
    parts = _ARG_TAG_RE.split(body)
    phase = _Phase.NAME
    name = ""
    key = ""
    text = parts[0]  # the text since the last tag
    pairs: list[tuple[str, str]] = []
    repairs: list[str] = []
    for i in range(1, len(parts), 2):
        tag = parts[i]
        if tag == _KEY_OPEN:
            if phase is _Phase.NAME:
                name = text
            elif phase is _Phase.VALUE:
                repairs.append(f"missing {_VALUE_CLOSE}")
                pairs.append((key, text))
            elif phase is not _Phase.AFTER_VALUE or text.strip():
                raise CallError(f"unexpected {tag} after {phase.name.lower()} {text[:20]!r}")
            phase = _Phase.KEY
        elif tag == _KEY_CLOSE:
            if phase is _Phase.KEY:
                key = text
            elif phase is _Phase.NAME:
                words = text.split(None, 1)
                if len(words) != 2:
                    raise CallError(f"{tag} without {_KEY_OPEN} and no name before the key")
                repairs.append(f"missing {_KEY_OPEN}")
                name, key = words
            elif phase is _Phase.AFTER_VALUE:
                repairs.append(f"missing {_KEY_OPEN}")
                key = text
            else:
                raise CallError(f"unexpected {tag} after {phase.name.lower()}")
            phase = _Phase.AFTER_KEY
        elif tag == _VALUE_OPEN:
            if phase is _Phase.KEY:
                repairs.append(f"missing {_KEY_CLOSE}")
                key = text
            elif phase is not _Phase.AFTER_KEY or text.strip():
                raise CallError(f"unexpected {tag} after {phase.name.lower()} {text[:20]!r}")
            phase = _Phase.VALUE
        else:  # </arg_value>
            if phase is _Phase.AFTER_KEY:
                repairs.append(f"missing {_VALUE_OPEN}")
            elif phase is not _Phase.VALUE:
                raise CallError(f"unexpected {tag} after {phase.name.lower()}")
            pairs.append((key, text))
            phase = _Phase.AFTER_VALUE
        text = parts[i + 1]
    if phase is _Phase.NAME:
        name = text
    elif phase is _Phase.VALUE:
        repairs.append(f"missing {_VALUE_CLOSE} at the end")
        pairs.append((key, text))
    elif phase is not _Phase.AFTER_VALUE:
        raise CallError(f"argument {key.strip() or text.strip()!r} has no value")
    elif text.strip():
        raise CallError(f"unexpected text after the arguments: {text[:20]!r}")
    return name, pairs, repairs


def parse_glm_body(body: str, tools: Mapping[str, ToolDef], final: bool) -> list[ParsedCall]:
    """The call in one `<tool_call>` body; raises CallError when it is not one (see the module's Grammar)."""
    raw_name, pairs, repairs = _walk(body)
    if final and repairs:
        raise CallError(f"incomplete call ({', '.join(repairs)})")
    name = raw_name.strip()
    if not name:
        raise CallError("empty function name")
    tool = offered(tools, name)
    args: dict[str, object] = {}
    for raw_key, raw_value in pairs:
        key = raw_key.strip()
        if not key:
            raise CallError("empty argument name")
        args[key] = parse_value(raw_value, declared_types(tool, key))  # a repeated key: the last value wins
    if final:
        check_required(tool, args)
    return [(name, args)]


class GlmParser(XmlCallParser):
    """GLM-4.5/4.6/4.7 output: `<think>` reasoning when `thinking` (or `prefilled`: the prompt already ends with
    `<think>`, as GLM-4.7's does), then content and `<tool_call>NAME<arg_key>…` calls."""

    def __init__(self, tools: Sequence[ToolDef], thinking: bool = False, prefilled: bool = False) -> None:
        front = ThinkingParser(THINK_OPEN, THINK_CLOSE, prefilled=prefilled) if thinking or prefilled else None
        super().__init__(front, CallStage(tools, parse_glm_body, "glm", log))
