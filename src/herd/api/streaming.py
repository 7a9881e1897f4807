"""NDJSON and SSE responses over one chunk stream.

The first chunk is awaited before any header goes out, so a failure before the first token still gets a real status
code (spec 4). After that an error is one final `{"error": ...}` line. A client that disconnects cancels the
stream, which cancels the sequence in the runner and frees its slot.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from herd.errors import HerdError, RequestCancelled

T = TypeVar("T")
NDJSON = "application/x-ndjson"


def dumps(doc: object) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


async def stream_response(
    chunks: AsyncIterator[T],
    encode: Callable[[T], str | None],
    on_error: Callable[[HerdError | Exception], str],
    media_type: str,
    trailer: str | None = None,
    on_error_before: Callable[[HerdError], Response] | None = None,
) -> Response:
    """`encode` turns a chunk into the text to send (a line or an SSE event), or None to skip it."""
    first: str | None = None
    try:
        while first is None:
            chunk = await chunks.__anext__()
            first = encode(chunk)
    except StopAsyncIteration:
        first = ""
        chunks = _empty()
    except HerdError as exc:
        await _close(chunks)
        if on_error_before is not None:
            return on_error_before(exc)
        raise

    async def body() -> AsyncIterator[str]:
        try:
            if first:
                yield first
            async for chunk in chunks:
                text = encode(chunk)
                if text:
                    yield text
            if trailer:
                yield trailer
        except Exception as exc:  # after headers: the error goes into the stream, and the stream ends
            yield on_error(exc)
        finally:
            await _close(chunks)

    return StreamingResponse(body(), media_type=media_type)


async def _empty() -> AsyncIterator[T]:  # type: ignore[misc]
    return
    yield  # pragma: no cover


async def _close(it: AsyncIterator[object]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run a non-streaming request, but cancel it at once if the client goes away (frees its slot)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass
        raise RequestCancelled("request canceled")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
