"""Tool-call parser: finds JSON tool calls in streamed model output (spec 2.9 and 7.4).

Follows Ollama's generic parser (`tools/tools.go`): text before the tool-call tag streams as content, text after it
is accumulated until a complete JSON value names an offered tool. One parser covers the common JSON families; the
family only decides the tag and a few shapes of the JSON around it.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable, Sequence
from enum import Enum, auto

from herd.parsing.base import Delta, ToolCall
from herd.parsing.jsoncalls import json_object
from herd.parsing.markers import partial_len


class ToolFormat(Enum):
    HERMES = "hermes"  # Qwen, Hermes: <tool_call>{"name": ..., "arguments": {...}}</tool_call>, repeated
    LLAMA3 = "llama3"  # <|python_tag|>{...}, or bare {"name": ..., "parameters": {...}} as the whole output
    MISTRAL = "mistral"  # [TOOL_CALLS][{"name": ..., "arguments": {...}}], or objects, or name[ARGS]{...}
    GENERIC = "generic"  # spec 7.4: a tag taken from the template; "{" (bare JSON) when it has none


DEFAULT_TAGS: dict[ToolFormat, str] = {
    ToolFormat.HERMES: "<tool_call>",
    ToolFormat.LLAMA3: "<|python_tag|>",
    ToolFormat.MISTRAL: "[TOOL_CALLS]",
    ToolFormat.GENERIC: "{",
}

_BRACKETS = ("{", "[")
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_call_id() -> str:
    """Ollama's id shape: "call_" and 8 characters of [a-z0-9]."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


class ToolCallState(Enum):
    """States of the parser; the last three are Ollama's `toolsState` values (tools/tools.go)."""

    # Only whitespace so far. Used when a bracket can open a call (a "{" or "[" tag, or Llama 3's bare JSON):
    # Ollama parses bracket calls only when the bracket is the first visible character, so ordinary answers
    # that contain JSON later on stay content.
    LEADING = auto()
    # toolsState_LookingForTag: content streams out; a possible partial tag at the chunk end is held back.
    LOOKING_FOR_TAG = auto()
    # toolsState_ToolCalling: after the tag; text accumulates until complete JSON values can be examined.
    TOOL_CALLING = auto()
    # toolsState_Done: tool parsing gave up (no bracket first, or the first bracketed value was not a call);
    # everything is content.
    DONE = auto()


# Mistral's newer tokenizers write `[TOOL_CALLS]name[ARGS]{...}` (optionally with `[CALL_ID]id`) instead of JSON
# that carries the name.
_MISTRAL_ARGS_RE = re.compile(r"([A-Za-z_][\w.\-]*)\s*(?:\[CALL_ID\]\s*\w+\s*)?\[ARGS\]\s*$")


# Where a call object names its tool: "name" almost everywhere; Command R writes "tool_name"; some fine-tunes
# write {"function": "name", ...}.
_NAME_KEYS = ("name", "tool_name", "function")


def _as_object(value: object) -> dict[str, object] | None:
    """Arguments as a JSON object: an object, a string holding one, or nothing at all. None if not an object."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        return json_object(value)
    return None


def _find_calls(value: object, names: frozenset[str]) -> list[tuple[str, dict[str, object]]]:
    """Calls in a decoded JSON value, in document order. Nested objects and arrays are searched (spec 7.4 rule 3),
    which also covers OpenAI's {"type": "function", "function": {...}} wrapper and lists of calls."""
    if isinstance(value, list):
        return [call for item in value for call in _find_calls(item, names)]
    if not isinstance(value, dict):
        return []
    name = next((v for key in _NAME_KEYS if isinstance(v := value.get(key), str)), None)
    if name is not None:
        if name not in names:
            # A named object for a tool that was not offered: its arguments are not ours to reinterpret.
            return []
        for key in ("arguments", "parameters", name):
            if key in value:
                args = _as_object(value[key])
                return [] if args is None else [(name, args)]
        return [(name, {})]  # a call without arguments, for tools that take none
    for key, inner in value.items():
        if key in names:  # {"get_weather": {"city": "Paris"}}: the key is the name, the value the arguments
            args = _as_object(inner)
            if args is not None:
                return [(key, args)]
    return [call for inner in value.values() for call in _find_calls(inner, names)]


class ToolCallParser:
    """Incremental tool-call parser for one assistant turn.

    `tag` overrides the family's default tag (for GENERIC it is the tag found by `detect_tool_format`).
    `unparsed_as_content`: at finish, if no call was parsed, text from a non-bracket tag onwards (for example a
    call to a tool that was not offered) becomes content. Ollama drops it (spec 7.4 rule 4); herd keeps it by
    default so the user can see what the model wrote. Bracket tags always give it back, as in Ollama.

    A delta that carries calls carries no content from after the tag; content in it is only text that preceded
    the tag within the same `feed` call.
    """

    def __init__(
        self,
        tool_names: Sequence[str],
        family: ToolFormat,
        tag: str | None = None,
        *,
        unparsed_as_content: bool = True,
        new_id: Callable[[], str] = new_call_id,
    ) -> None:
        self.family = family
        self.tag = tag if tag else DEFAULT_TAGS[family]
        self._names = frozenset(n for n in tool_names if n)
        self._unparsed_as_content = unparsed_as_content
        self._new_id = new_id
        self._bracket_tag = self.tag in _BRACKETS
        # Values may be arrays only where a family writes arrays; elsewhere a stray "[" in the text after a
        # call must not swallow the calls that follow it.
        self._arrays = family in (ToolFormat.MISTRAL, ToolFormat.GENERIC)
        if not self._names:
            self.state = ToolCallState.DONE  # nothing could ever be a call
        elif self._bracket_tag or family is ToolFormat.LLAMA3:
            self.state = ToolCallState.LEADING
        else:
            self.state = ToolCallState.LOOKING_FOR_TAG
        self._n = 0  # calls parsed so far: the next call's index
        self._held = ""  # LOOKING_FOR_TAG: a suffix that may be the start of the tag
        # TOOL_CALLING: the text from the tag (or opening bracket) on, while no call is parsed; after a call, only
        # what follows the last complete value, since text after calls is discarded.
        self._buf = ""
        self._bracketed = False  # calling was entered at a bracket: the first value decides call or content
        self._pos = 0  # next index of _buf to scan
        # Start of the text since the tag or the last call. Mistral's name[ARGS]{...} form needs the name that
        # precedes a value; "[ARGS]" itself scans as a (failed) value, so failed values do not move this.
        self._gap = 0
        self._depth = 0  # bracket depth inside the current value; 0 between values
        self._start = 0  # start of the current value
        self._in_str = False
        self._escaped = False

    @property
    def calls_parsed(self) -> int:
        return self._n

    def feed(self, text: str) -> Delta:
        if not text:
            return Delta()
        if self.state is ToolCallState.DONE:
            return Delta(content=text)
        content = ""
        if self.state is ToolCallState.LEADING:
            visible = text.lstrip()
            if not visible:
                return Delta(content=text)
            # Leading whitespace is content whichever way the first visible character decides, as in Ollama.
            content = text[: len(text) - len(visible)]
            text = visible
            if text[0] == self.tag or (not self._bracket_tag and text[0] == "{"):
                self._begin_calling(text, scan_from=0, bracketed=True)
                text = ""
            elif self._bracket_tag:
                self.state = ToolCallState.DONE
                return Delta(content=content + text)
            else:
                self.state = ToolCallState.LOOKING_FOR_TAG
        if self.state is ToolCallState.LOOKING_FOR_TAG:
            buf = self._held + text
            i = buf.find(self.tag)
            if i < 0:
                keep = partial_len(buf, (self.tag,))
                self._held = buf[len(buf) - keep :]
                return Delta(content=content + buf[: len(buf) - keep])
            self._held = ""
            content += buf[:i]
            self._begin_calling(buf[i:], scan_from=len(self.tag), bracketed=False)
        else:
            self._buf += text
        flushed, calls = self._scan()
        return Delta(content=content + flushed, tool_calls=tuple(calls))

    def finish(self) -> Delta:
        state, self.state = self.state, ToolCallState.DONE
        if state is ToolCallState.LOOKING_FOR_TAG:
            held, self._held = self._held, ""
            return Delta(content=held)  # a partial tag that never completed is ordinary text
        if state is ToolCallState.TOOL_CALLING:
            buf, self._buf = self._buf, ""
            if self._n == 0 and (self._bracketed or self._unparsed_as_content):
                return Delta(content=buf)
        return Delta()  # after a call, what is left over is discarded

    def _begin_calling(self, buf: str, scan_from: int, bracketed: bool) -> None:
        self.state = ToolCallState.TOOL_CALLING
        self._bracketed = bracketed
        self._buf = buf
        self._pos = scan_from
        self._gap = scan_from

    def _scan(self) -> tuple[str, list[ToolCall]]:
        """Advance the JSON scanner over new text. Returns content to flush (bracket mode, no call) and the calls.

        Brackets are matched outside strings only, so braces inside argument strings do not end a value.
        """
        calls: list[ToolCall] = []
        buf = self._buf
        i = self._pos
        while i < len(buf):
            c = buf[i]
            i += 1
            if self._depth == 0:
                if c == "{" or (c == "[" and self._arrays):
                    self._depth = 1
                    self._start = i - 1
                continue
            if self._in_str:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_str = False
                continue
            if c == '"':
                self._in_str = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    found = self._value_calls(buf[self._gap : self._start], buf[self._start : i])
                    if found:
                        for name, args in found:
                            calls.append(
                                ToolCall(name=name, arguments=args, index=self._n, id=self._new_id())
                            )
                            self._n += 1
                        buf = buf[i:]
                        i = 0
                        self._gap = 0
                    elif self._bracketed and self._n == 0:
                        # Ollama's done(): the bracket opened ordinary JSON, not a call. Give it all back.
                        self.state = ToolCallState.DONE
                        self._buf = ""
                        return buf, calls
        self._buf = buf
        self._pos = i
        return "", calls

    def _value_calls(self, gap: str, raw: str) -> list[tuple[str, dict[str, object]]]:
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            return []
        try:
            found = _find_calls(value, self._names)
        except RecursionError:
            return []
        if not found and self.family is ToolFormat.MISTRAL and isinstance(value, dict):
            m = _MISTRAL_ARGS_RE.search(gap)
            if m and m.group(1) in self._names:
                found = [(m.group(1), value)]
        return found


# `{{ if .ToolCalls }}`, with trim markers, `else if` and `$.` variants, as Go templates write it.
_GO_IF_TOOLCALLS_RE = re.compile(r"\{\{-?\s*(?:else\s+)?if\s+\$?\.ToolCalls\s*-?\}\}")
_GO_ACTION_RE = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_GO_OPENS_BLOCK = ("if", "range", "with", "block", "define")


def _go_tool_tag(template_text: str) -> str:
    """Spec 7.4 rule 1: the first non-blank literal text inside the `{{ if .ToolCalls }}` block, cut before the
    first "{" and trimmed; "" when there is none."""
    m = _GO_IF_TOOLCALLS_RE.search(template_text)
    if not m:
        return ""
    depth = 0
    pos = m.end()
    for action in _GO_ACTION_RE.finditer(template_text, pos):
        literal = template_text[pos : action.start()]
        if literal.strip():
            return literal.split("{", 1)[0].strip()
        pos = action.end()
        words = action.group(0).strip("{}").strip("-").split()
        keyword = words[0] if words else ""
        if keyword in _GO_OPENS_BLOCK:
            depth += 1
        elif keyword == "end" or (keyword == "else" and depth == 0):
            if depth == 0:
                return ""  # the block ended without literal text
            depth -= 1
    literal = template_text[pos:]
    return literal.split("{", 1)[0].strip()


def detect_tool_format(template_text: str) -> tuple[ToolFormat, str]:
    """Guess the tool-call family and tag from a chat template's source (Jinja or Go)."""
    if "<tool_call>" in template_text:
        return ToolFormat.HERMES, DEFAULT_TAGS[ToolFormat.HERMES]
    if "<|python_tag|>" in template_text or (
        "<|start_header_id|>" in template_text and "tools" in template_text.lower()
    ):
        return ToolFormat.LLAMA3, DEFAULT_TAGS[ToolFormat.LLAMA3]
    if "[TOOL_CALLS]" in template_text:
        return ToolFormat.MISTRAL, DEFAULT_TAGS[ToolFormat.MISTRAL]
    tag = _go_tool_tag(template_text) if ".ToolCalls" in template_text else ""
    return ToolFormat.GENERIC, tag or "{"
