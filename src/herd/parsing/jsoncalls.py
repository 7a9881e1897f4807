"""JSON in tool calls: where a bracketed value ends while it streams, and what a call object or arguments text says.

Shared by the parsers whose calls carry JSON (granite.py, gemma.py, deepseek.py, qwen3_coder.py, xmlcalls.py and the
generic toolcalls.py); each family decides where a value starts and what it must look like.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from herd.parsing.base import ParsedCall


class BracketScanner:
    """Finds where one bracketed value ({…} or […]) ends, fed a growing buffer piece by piece.

    Brackets count only outside strings; strings open with " or ' and close with the same quote, backslash escapes
    honoured. That is JSON's lexing and Python's too (for pythonic calls), so one scanner serves both; whether the
    text is valid is for the real parser to say.
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


def reject_constant(name: str) -> object:
    """`parse_constant` for strict JSON: NaN and Infinity would make the response invalid JSON."""
    raise ValueError(f"{name} is not JSON")


def strict_json(raw: str, kind: type) -> object | None:
    """`raw` as strict JSON (no NaN or Infinity) of type `kind`; None when it does not parse or is another type."""
    try:
        value = json.loads(raw, parse_constant=reject_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, kind) else None


def json_object(text: str) -> dict[str, object] | None:
    """Arguments text as a JSON object; an empty text is a call without arguments. None when not an object."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def call_from_object(item: object, names: frozenset[str]) -> ParsedCall | str:
    """{"name": NAME, "arguments" | "parameters": ARGS} as (name, arguments), or a reason string.

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
                args = json_object(args)
            if not isinstance(args, dict):
                return f"arguments of {name!r} are not a JSON object"
            return name, args
    return name, {}


def calls_from_objects(items: Sequence[object], names: frozenset[str]) -> list[ParsedCall] | str:
    """Every item as a call (`call_from_object`), all or none: the reason of the first that is not one."""
    found: list[ParsedCall] = []
    for item in items:
        call = call_from_object(item, names)
        if isinstance(call, str):
            return call
        found.append(call)
    return found
