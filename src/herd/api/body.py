"""Reading a JSON body the way Ollama's Go handlers do: empty is `missing request body`, bad JSON gets the
decoder's wording, oversized bodies are refused before they are parsed.

Go's `encoding/json` is also the model for text that is not valid Unicode: invalid UTF-8 bytes and lone surrogate
escapes (`"\\ud83d"`) are read as U+FFFD rather than refused, and `NaN`/`Infinity` literals, numbers too large for a
float64 and nesting past a depth limit are 400s (`exceeded max depth`, Go's words). herd's limit is MAX_DEPTH, not
Go's 10000: the services walk nested values (schemas into grammars, arguments into templates) recursively, and
Python's stack ends near 1000 frames, so a deeper body would fail there as a 500. Python's own decoder would keep
a lone surrogate in a `str` (which then fails to encode deep in tokenization, a 500), accept `NaN`, and read
`1e999` as infinity.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import NoReturn

from fastapi import Request

from herd.errors import InvalidRequest, LimitExceeded

# A `\uD800`-`\uDFFF` escape: only bodies that contain one can decode to a lone surrogate (valid pairs are joined by
# the decoder), so the walk that replaces them runs only then.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_INT64 = 1 << 63
MAX_DEPTH = 200  # arrays and objects inside one another; real schemas and tool arguments stay far below
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_THREAD_FROM = 1 << 20  # bodies from 1 MiB are decoded in a thread: about 0.2 s per 1 MiB here, too long for the loop


def too_large(limit: int, what: str = "request body") -> LimitExceeded:
    return LimitExceeded(f"{what} too large (limit {limit} bytes)")


def check_declared_length(request: Request, limit: int, what: str = "request body") -> None:
    """Refuse before reading when Content-Length already says the body is past the limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit, what)


def _no_constant(name: str) -> NoReturn:
    # NaN, Infinity and -Infinity are not JSON; Go stops at their first letter.
    if name.startswith("-"):
        raise InvalidRequest(f"invalid character '{name[1]}' in numeric literal")
    raise InvalidRequest(f"invalid character '{name[0]}' looking for beginning of value")


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        shown = text if len(text) <= 40 else text[:40] + "..."  # the message must not echo a megabyte number
        raise InvalidRequest(f"json: cannot unmarshal number {shown} into Go value of type float64")
    return value


def _int(text: str) -> int | float:
    # Go decodes a number into an `any` as a float64; past int64 herd does the same, so no field ever carries an
    # integer that native code (seeds, token ids, counts) cannot hold. Python also refuses to parse ints of more
    # than 4300 digits (a ValueError, not a JSONDecodeError).
    if len(text) < 19:
        return int(text)
    value = _float(text)
    if -_INT64 <= value < _INT64:
        return int(text)
    return value


def _clean(value: object) -> object:
    """Replace lone surrogates in every string, keys included, with U+FFFD (Go's decoder does this)."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    return value


def parse_json(raw: bytes) -> object:
    """Decode a request body (bytes) as Go's encoding/json would, with its error wording."""
    if not raw.strip():
        raise InvalidRequest("missing request body")
    # Decoded here rather than by json.loads(bytes): that would also accept UTF-16/32 and a BOM, which Go does not,
    # and fail on the first invalid byte instead of reading it as U+FFFD.
    text = raw.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text, parse_constant=_no_constant, parse_float=_float, parse_int=_int)
    except RecursionError:
        raise InvalidRequest("exceeded max depth") from None
    except json.JSONDecodeError as exc:
        _decode_error(exc)
    if _too_deep(raw):
        raise InvalidRequest("exceeded max depth")
    if _SURROGATE_ESCAPE.search(raw):
        doc = _clean(doc)
    return doc


def _too_deep(raw: bytes) -> bool:
    """Whether the (valid) JSON text nests deeper than MAX_DEPTH, in C-speed passes: a body with fewer brackets
    than the limit cannot be too deep; otherwise the brackets outside strings are summed up as +1/-1."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if len(brackets) <= 2 * MAX_DEPTH:
        return len(brackets) > 0 and _depth_small(brackets) > MAX_DEPTH
    import numpy as np

    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max()) > MAX_DEPTH


def _depth_small(brackets: bytes) -> int:
    depth = best = 0
    for b in brackets:
        depth += 1 if b in (0x5B, 0x7B) else -1
        best = max(best, depth)
    return best


def _decode_error(exc: json.JSONDecodeError) -> NoReturn:
    tail = exc.doc[exc.pos:].strip()
    if not tail:
        raise InvalidRequest("unexpected EOF") from None
    ch = "ï" if tail[0] == "\ufeff" else tail[0]  # Go reads a BOM's first byte as the character U+00EF
    if exc.msg.startswith("Expecting property name"):
        raise InvalidRequest(f"invalid character '{ch}' looking for beginning of object key string") from None
    if exc.msg.startswith("Extra data"):
        raise InvalidRequest(f"invalid character '{ch}' after top-level value") from None
    if exc.msg.startswith("Expecting ',' delimiter") or exc.msg.startswith("Expecting ':' delimiter"):
        raise InvalidRequest(f"invalid character '{ch}' after object key:value pair") from None
    raise InvalidRequest(f"invalid character '{ch}' looking for beginning of value") from None


async def read_json(request: Request, limit: int) -> object:
    check_declared_length(request, limit)
    chunks = []
    size = 0
    async for chunk in request.stream():  # chunked bodies have no Content-Length: count as they arrive
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if len(raw) >= _THREAD_FROM:
        return await asyncio.to_thread(parse_json, raw)
    return parse_json(raw)
