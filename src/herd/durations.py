"""Go-style durations, as Ollama accepts them for `keep_alive`."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string; raises ValueError with Go's own message (`time: ...`)."""
    original = text
    sign = 1.0
    if text[:1] and text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f'time: invalid duration "{original}"')
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _PART.match(text, pos)
        if not m:
            if re.fullmatch(r"[\d.]+", text[pos:]):
                raise ValueError(f'time: missing unit in duration "{original}"')
            unit = re.match(r"[\d.]*([^\d.]*)", text[pos:])
            if unit and unit.group(1) and re.match(r"[\d.]", text[pos:]):
                raise ValueError(f'time: unknown unit "{unit.group(1)}" in duration "{original}"')
            raise ValueError(f'time: invalid duration "{original}"')
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def parse_keep_alive(value: object) -> float:
    """keep_alive in seconds: a number means seconds, a string a Go duration; negative means forever."""
    if isinstance(value, bool):
        raise ValueError("Unsupported type: 'bool'")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return parse_go_duration(value.strip())
    type_name = {list: "list", dict: "dict"}.get(type(value), type(value).__name__)
    raise ValueError(f"Unsupported type: '{type_name}'")
