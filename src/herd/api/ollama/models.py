"""Model management routes: /api/create, /api/blobs, /api/copy, /api/delete, /api/pull, /api/push (spec 5.8-5.12).

Parse, call a registry service, encode. The long operations stream `{"status":...}` lines; `stream:false` answers
with the last one. The first line is awaited before headers go out, so request errors keep their status code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from threading import Event

from fastapi import APIRouter, Request
from fastapi.responses import Response

from herd.api.body import check_declared_length, read_json
from herd.api.common import openapi_body, services
from herd.api.errors import OllamaJSON, ollama_error
from herd.api.ollama import models_wire as mwire
from herd.api.ollama import wire as wire
from herd.api.streaming import NDJSON, dumps, stream_response, until_disconnect
from herd.errors import HerdError
from herd.registry.models import off_loop
from herd.registry.progress import Progress, iterate_in_thread

router = APIRouter()




async def _body(request: Request) -> object:
    return await read_json(request, services(request).settings.max_body_bytes)


def _threaded(start: Callable[[Event], Iterator[Progress]]) -> AsyncIterator[Progress]:
    cancel = Event()
    return iterate_in_thread(start(cancel), cancel)


async def _last(steps: AsyncIterator[Progress]) -> Progress:
    last = Progress("success")
    try:
        async for step in steps:
            last = step
    finally:
        await steps.aclose()  # type: ignore[attr-defined]
    return last


def _line(step: Progress) -> str:
    return dumps(mwire.progress_json(step)) + "\n"


def _error_line(exc: Exception) -> str:
    message = exc.message if isinstance(exc, HerdError) else f"internal error: {exc}"
    return dumps({"error": message}) + "\n"


async def _progress_response(request: Request, steps: AsyncIterator[Progress], stream: bool | None) -> Response:
    if stream is False:
        try:
            return OllamaJSON(mwire.progress_json(await until_disconnect(request, _last(steps))))
        except HerdError as exc:
            return ollama_error(exc)
    return await stream_response(steps, _line, _error_line, NDJSON, on_error_before=ollama_error)


@router.post("/api/create", openapi_extra=openapi_body(mwire.CreateRequest))
async def create(request: Request) -> Response:
    try:
        req = wire.decode(mwire.CreateRequest, await _body(request), "CreateRequest")
        spec = mwire.to_create_spec(req)
    except HerdError as exc:
        return ollama_error(exc)
    creator = services(request).creator
    return await _progress_response(request, _threaded(lambda cancel: creator.create(spec, cancel)), req.stream)


@router.head("/api/blobs/{digest}")
async def blob_exists(request: Request, digest: str) -> Response:
    try:
        services(request).manager.check_blob(digest)
    except HerdError as exc:
        return ollama_error(exc)
    return Response(status_code=200)


@router.post("/api/blobs/{digest}")
async def blob_upload(request: Request, digest: str) -> Response:
    # Not max_body_bytes: a blob is model weights, often gigabytes. It streams to disk and is hashed on the way,
    # under its own limit (max_blob_bytes), checked on Content-Length first and counted as the bytes arrive.
    limit = services(request).settings.max_blob_bytes
    try:
        check_declared_length(request, limit, "blob")
        created = await services(request).manager.receive_blob(digest, request.stream(), limit)
    except HerdError as exc:
        return ollama_error(exc)
    return Response(status_code=201 if created else 200)


@router.post("/api/copy", openapi_extra=openapi_body(mwire.CopyRequest))
async def copy(request: Request) -> Response:
    try:
        req = wire.decode(mwire.CopyRequest, await _body(request), "CopyRequest")
        await off_loop(services(request).manager.copy, req.source or "", req.destination or "")
    except HerdError as exc:
        return ollama_error(exc)
    return Response(status_code=200)


@router.delete("/api/delete", openapi_extra=openapi_body(wire.ModelOnlyRequest))
async def delete(request: Request) -> Response:
    try:
        req = wire.decode(wire.ModelOnlyRequest, await _body(request), "DeleteRequest")
        # Off the loop: deleting prunes unused blobs, and unlinking a multi-gigabyte file takes a while.
        await off_loop(services(request).manager.delete, req.model or req.name or "")
    except HerdError as exc:
        return ollama_error(exc)
    return Response(status_code=200)


@router.post("/api/pull", openapi_extra=openapi_body(mwire.TransferRequest))
async def pull(request: Request) -> Response:
    try:
        req = wire.decode(mwire.TransferRequest, await _body(request), "PullRequest")
    except HerdError as exc:
        return ollama_error(exc)
    transfers, name, insecure = services(request).transfers, req.model or req.name or "", bool(req.insecure)
    return await _progress_response(request, _threaded(lambda c: transfers.pull(name, insecure, c)), req.stream)


@router.post("/api/push", openapi_extra=openapi_body(mwire.TransferRequest))
async def push(request: Request) -> Response:
    try:
        req = wire.decode(mwire.TransferRequest, await _body(request), "PushRequest")
    except HerdError as exc:
        return ollama_error(exc)
    transfers, name, insecure = services(request).transfers, req.model or req.name or "", bool(req.insecure)
    return await _progress_response(request, _threaded(lambda c: transfers.push(name, insecure, c)), req.stream)
