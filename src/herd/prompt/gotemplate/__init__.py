"""Go `text/template` chat templates, as Ollama runs them (spec 7.2, 7.3), in pure Python.

`GoTemplate(source)` parses a template (syntax errors raise `InvalidRequest("template error: ...")`) and
`render(data)` executes it. `render_chat` builds Ollama's data model (`.System`, `.Messages`, `.Tools`, `.Think`,
...) from a conversation and runs the template, including the legacy `.System/.Prompt/.Response` form.
`uses_tools`, `uses_suffix`, `uses_thinking`, `uses_messages` and `uses_response` read the parsed tree.

The language subset: text and actions with `{{-`/`-}}` trimming, comments, field chains on `.`, `$` and `$x`,
variables (`:=` and `=`), `if`/`else if`/`else`, `range` (lists, maps, ints; `$i, $v :=`; `else`; `break`,
`continue`), `with`/`else with`/`else`, `define`/`template`/`block`, pipelines, parentheses, literals, and the
functions `and or not eq ne lt le gt ge len index slice print printf println html js urlquery call` plus
Ollama's `json currentDate yesterdayDate toTypeScriptType`.

Differences from Go, on purpose: a missing key or field reads as nil and prints as "" (Go prints
"<no value>" or fails); comparisons of mixed number types compare the values; Python methods of the data are
never called (templates come from model files and are not trusted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from herd.errors import InvalidRequest
from herd.prompt.gotemplate.execute import _cut_list, _CutState, _Exec, _node_idents, _thinking_in_messages
from herd.prompt.gotemplate.syntax import _Action, _Cmd, _Field, _lex, _Parser, _Pipe, _Source
from herd.prompt.gotemplate.values import (
    _MAX_SOURCE_CHARS,
    _Break,
    _Continue,
    _JsonList,
    _JsonMap,
    _JsonView,
    _Struct,
    _TemplateError,
)

__all__ = [
    "GoTemplate",
    "MessageLike",
    "ToolCallLike",
    "ToolLike",
    "render_chat",
    "uses_messages",
    "uses_response",
    "uses_suffix",
    "uses_thinking",
    "uses_tools",
]


# --------------------------------------------------------------------------------------------------------------
# Input protocols


class ToolCallLike(Protocol):
    id: str
    index: int
    name: str
    arguments: dict


class MessageLike(Protocol):
    role: str
    content: str
    thinking: str
    images: tuple[bytes, ...]
    tool_calls: tuple[ToolCallLike, ...]
    tool_name: str
    tool_call_id: str


class ToolLike(Protocol):
    name: str
    description: str
    parameters: dict
    raw: dict


# --------------------------------------------------------------------------------------------------------------
# Public API


_RESPONSE_ACTION = _Action(_Pipe([], False, [_Cmd([_Field(("Response",))])]), 0)


class GoTemplate:
    """A parsed Go template. Syntax errors raise InvalidRequest("template error: ...")."""

    def __init__(self, source: str) -> None:
        self.source = source
        if len(source) > _MAX_SOURCE_CHARS:
            raise InvalidRequest("template error: template is too large")
        src = _Source(source)
        try:
            parser = _Parser(src, _lex(src))
            nodes = parser.parse()
        except _TemplateError as e:
            raise InvalidRequest(f"template error: {e}") from None
        except RecursionError:
            raise InvalidRequest("template error: template is nested too deeply") from None
        self._defines = parser.defines
        idents = list(_node_idents(nodes))
        for body in parser.defines.values():
            idents.extend(_node_idents(body))
        self._vars = frozenset(i.lower() for i in idents)
        self._thinking = _thinking_in_messages(nodes, False) or any(
            _thinking_in_messages(body, False) for body in parser.defines.values())
        if "messages" not in self._vars and "response" not in self._vars:
            nodes = [*nodes, _RESPONSE_ACTION]  # as Ollama does: the reply follows the prompt
        self._nodes = nodes
        self._legacy_last: list[object] | None = None

    def __repr__(self) -> str:
        return f"GoTemplate({self.source!r})"

    @property
    def identifiers(self) -> frozenset[str]:
        """Every field and variable name the template mentions, lowercased (Ollama's `Template.Vars`)."""
        return self._vars

    def render(self, data: Mapping[str, object]) -> str:
        return self._run(self._nodes, data)

    def _run(self, nodes: list[object], data: object) -> str:
        ex = _Exec(self._defines, data)
        try:
            ex.walk(nodes, data)
        except _TemplateError as e:
            raise InvalidRequest(f"template error: {e}") from None
        except (_Break, _Continue):  # pragma: no cover - the parser rejects these outside range
            raise InvalidRequest("template error: break or continue outside range") from None
        except RecursionError:
            raise InvalidRequest("template error: template is nested too deeply") from None
        except MemoryError:
            raise InvalidRequest("template error: out of memory") from None
        return "".join(ex.out)

    def _render_legacy_last(self, data: Mapping[str, object]) -> str:
        if self._legacy_last is None:
            self._legacy_last = _cut_list(self._nodes, _CutState())
        return self._run(self._legacy_last, data)


def uses_tools(t: GoTemplate) -> bool:
    return "tools" in t._vars


def uses_suffix(t: GoTemplate) -> bool:
    return "suffix" in t._vars


def uses_thinking(t: GoTemplate) -> bool:
    return t._thinking


def uses_messages(t: GoTemplate) -> bool:
    return "messages" in t._vars


def uses_response(t: GoTemplate) -> bool:
    return "response" in t._vars


@dataclass
class _Merged:
    role: str
    content: str
    thinking: str
    images: list[bytes] = field(default_factory=list)
    tool_calls: list[ToolCallLike] = field(default_factory=list)
    tool_name: str = ""
    tool_call_id: str = ""


def _collate(messages: Sequence[MessageLike]) -> tuple[str, list[_Merged]]:
    """Ollama's collate: all system contents joined, consecutive same-role messages merged (not tool)."""
    system: list[str] = []
    out: list[_Merged] = []
    for m in messages:
        role = m.role
        content = m.content or ""
        if role == "system":
            system.append(content)
        images = list(getattr(m, "images", ()) or ())
        calls = list(getattr(m, "tool_calls", ()) or ())
        thinking = getattr(m, "thinking", "") or ""
        if out and out[-1].role == role and role != "tool":
            prev = out[-1]
            prev.content += "\n\n" + content
            prev.images.extend(images)
            prev.tool_calls.extend(calls)
            if thinking:
                prev.thinking = prev.thinking + "\n\n" + thinking if prev.thinking else thinking
            continue
        out.append(_Merged(role, content, thinking, images, calls,
                           getattr(m, "tool_name", "") or "", getattr(m, "tool_call_id", "") or ""))
    return "\n\n".join(system), out


def _tool_call_value(c: ToolCallLike, position: int) -> _Struct:
    args = c.arguments
    arguments = _JsonMap(args) if isinstance(args, Mapping) else args
    index = getattr(c, "index", position)
    name = getattr(c, "name", "")
    call_id = getattr(c, "id", "") or ""
    fn_json = {"index": index, "name": name, "arguments": arguments}
    call_json: dict[str, object] = {"id": call_id} if call_id else {}
    call_json["function"] = fn_json
    fn = _Struct({"Index": index, "Name": name, "Arguments": arguments}, fn_json)
    return _Struct({"ID": call_id, "Function": fn}, call_json)


def _message_value(m: _Merged) -> _Struct:
    calls = [_tool_call_value(c, i) for i, c in enumerate(m.tool_calls)]
    js: dict[str, object] = {"role": m.role, "content": m.content}
    if m.thinking:
        js["thinking"] = m.thinking
    if m.images:
        js["images"] = m.images
    if calls:
        js["tool_calls"] = calls
    if m.tool_name:
        js["tool_name"] = m.tool_name
    if m.tool_call_id:
        js["tool_call_id"] = m.tool_call_id
    return _Struct({
        "Role": m.role,
        "Content": m.content,
        "Thinking": m.thinking,
        "Images": list(m.images),
        "ToolCalls": calls,
        "ToolName": m.tool_name,
        "ToolCallID": m.tool_call_id,
    }, js)


def _tool_value(t: ToolLike) -> _JsonView:
    raw = getattr(t, "raw", None)
    if not raw:
        raw = {"type": "function",
               "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
    return _JsonView(raw)


def render_chat(
    template: GoTemplate,
    messages: Sequence[MessageLike],
    tools: Sequence[ToolLike],
    *,
    think: bool | None = None,
    think_level: str = "",
) -> str:
    """Render a conversation with Ollama's Go-template data model (spec 7.2)."""
    system, merged = _collate(messages)
    thinking: dict[str, object] = {"Think": bool(think), "ThinkLevel": think_level, "IsThinkSet": think is not None}
    if uses_messages(template):
        data: dict[str, object] = {
            "System": system,
            "Messages": [_message_value(m) for m in merged],
            "Tools": _JsonList(_tool_value(t) for t in tools) if tools else None,
            "Response": "",
            **thinking,
        }
        return template.render(data)
    # Legacy form: one run per (system, user, assistant) turn; the last run stops right after .Response.
    parts: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        parts.append(template.render({**turn, **thinking}))
        turn.update(System="", Prompt="", Response="")

    for m in merged:
        if m.role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = m.content
        elif m.role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = m.content
        elif m.role == "assistant":
            turn["Response"] = m.content
    parts.append(template._render_legacy_last({**turn, **thinking}))
    return "".join(parts)
