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
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from herd.errors import HerdError, RequestCancelled

T = TypeVar("T")
NDJSON = "application/x-ndjson"


# One encoder, built once: json.dumps with options builds a new JSONEncoder per call, and this runs per token.
dumps: Callable[[object], str] = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


async def stream_response(
    chunks: AsyncIterator[T],
    encode: Callable[[T], str | None],
    on_error: Callable[[HerdError | Exception], str],
    media_type: str,
    trailer: str | None = None,
    on_error_before: Callable[[HerdError], Response] | None = None,
) -> Response:
    """`encode` turns a chunk into the text to send (a line or an SSE event), or None to skip it.

    Nothing is awaited here: the response itself waits for the first chunk, because only there is the client's
    disconnect visible. A client that leaves while its request waits in the queue, for a load, during prefill or
    while the parser holds text back (no chunk yet) is noticed at once, not after the first chunk."""
    return LineStream(chunks, encode, on_error, trailer, media_type, on_error_before)


class LineStream(Response):
    """Starlette's StreamingResponse with one layer less per chunk: each chunk is encoded and sent here, not passed
    through a generator of text first. The client's disconnect cancels the stream from the first moment: before
    the first chunk (then nothing is sent) as after it."""

    def __init__(self, chunks: AsyncIterator[T], encode: Callable[[T], str | None],
                 on_error: Callable[[HerdError | Exception], str], trailer: str | None, media_type: str,
                 on_error_before: Callable[[HerdError], Response] | None = None) -> None:
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(None)
        self._chunks, self._encode = chunks, encode
        self._on_error, self._trailer = on_error, trailer
        self._on_error_before = on_error_before

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self._stream(scope, receive, send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait((stream, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not stream.done():
                stream.cancel()  # the client went away (or we are cancelled): stop generating at once
            try:
                await stream
            except asyncio.CancelledError:
                pass
            except Exception:  # the client is gone: there is nobody left to tell
                pass

    async def _first(self) -> str | None:
        """The first text to send; None once the stream ended without any."""
        chunks, encode = self._chunks, self._encode
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return None
            text = encode(chunk)
            if text is not None:
                return text

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks, encode = self._chunks, self._encode
        try:
            first = await self._first()
        except Exception as exc:
            # Before any header: a real status code (spec 4).
            await _close(chunks)
            err = exc if isinstance(exc, HerdError) else HerdError(f"internal error: {exc}")
            if self._on_error_before is not None:
                response: Response = self._on_error_before(err)
            else:
                response = JSONResponse({"error": err.message}, status_code=500)
            await response(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            if first:
                await send({"type": "http.response.body", "body": first.encode(), "more_body": True})
            if first is not None:
                async for chunk in chunks:
                    text = encode(chunk)
                    if text:
                        await send({"type": "http.response.body", "body": text.encode(), "more_body": True})
            if self._trailer:
                await send({"type": "http.response.body", "body": self._trailer.encode(), "more_body": True})
        except Exception as exc:  # after headers: the error goes into the stream, and the stream ends
            await send({"type": "http.response.body", "body": self._on_error(exc).encode(), "more_body": True})
        finally:
            await _close(chunks)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


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
