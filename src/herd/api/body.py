"""Reading a JSON body the way Ollama's Go handlers do: empty is `missing request body`, bad JSON gets the
decoder's wording, oversized bodies are refused before they are parsed."""

from __future__ import annotations

import json

from fastapi import Request

from herd.errors import InvalidRequest, LimitExceeded


def too_large(limit: int, what: str = "request body") -> LimitExceeded:
    return LimitExceeded(f"{what} too large (limit {limit} bytes)")


def check_declared_length(request: Request, limit: int, what: str = "request body") -> None:
    """Refuse before reading when Content-Length already says the body is past the limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit, what)


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
    if not raw.strip():
        raise InvalidRequest("missing request body")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise InvalidRequest("invalid character in request body: not UTF-8") from None
    except json.JSONDecodeError as exc:
        text = exc.doc
        tail = text[exc.pos:].strip()
        if not tail:
            raise InvalidRequest("unexpected EOF") from None
        ch = tail[0]
        if exc.msg.startswith("Expecting property name"):
            raise InvalidRequest(f"invalid character '{ch}' looking for beginning of object key string") from None
        if exc.msg.startswith("Extra data"):
            raise InvalidRequest(f"invalid character '{ch}' after top-level value") from None
        if exc.msg.startswith("Expecting ',' delimiter") or exc.msg.startswith("Expecting ':' delimiter"):
            raise InvalidRequest(f"invalid character '{ch}' after object key:value pair") from None
        raise InvalidRequest(f"invalid character '{ch}' looking for beginning of value") from None
