"""/api/* routes: parse, call a service, encode. No branching on business rules here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from herd import __version__
from herd.api.body import read_json
from herd.api.common import openapi_body, services
from herd.api.errors import OllamaJSON, ollama_error
from herd.api.ollama import wire as wire
from herd.api.streaming import NDJSON, dumps, stream_response, until_disconnect
from herd.errors import HerdError, InvalidRequest
from herd.registry.models import off_loop
from herd.services.chat import ChatChunk, drain

router = APIRouter()




@router.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse)
async def root() -> PlainTextResponse:
    return PlainTextResponse("Ollama is running", media_type="text/plain; charset=utf-8")


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version() -> Response:
    return OllamaJSON({"version": __version__})


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(request: Request) -> Response:
    # Off the loop: listing reads every manifest and, for a model not seen before, its GGUF header.
    return OllamaJSON({"models": await off_loop(services(request).models.tags)})


@router.get("/api/ps")
async def ps(request: Request) -> Response:
    return OllamaJSON({"models": services(request).models.ps()})


@router.get("/api/herd/runners")
async def runners(request: Request) -> Response:
    from herd.scheduler.views import runner_view

    return OllamaJSON({"runners": await runner_view(services(request).scheduler)})


@router.post("/api/show", openapi_extra=openapi_body(wire.ShowRequest))
async def show(request: Request) -> Response:
    try:
        body = await read_json(request, services(request).settings.max_body_bytes)
        req = wire.decode(wire.ShowRequest, body, "ShowRequest")
        models = services(request).models
        return OllamaJSON(await off_loop(models.show, req.model or req.name or "", bool(req.verbose), req.system))
    except HerdError as exc:
        return ollama_error(exc)


# ---- /api/chat ---------------------------------------------------------------------------------------------


def chat_chunk_json(model: str, chunk: ChatChunk) -> dict[str, object]:
    message: dict[str, object] = {"role": "assistant", "content": chunk.content}
    if chunk.thinking:
        message["thinking"] = chunk.thinking
    if chunk.tool_calls:
        message["tool_calls"] = [wire.tool_call_json(c) for c in chunk.tool_calls]
    doc: dict[str, object] = {"model": model, "created_at": wire.now_rfc3339(), "message": message,
                              "done": chunk.done}
    if chunk.done_reason:
        doc["done_reason"] = chunk.done_reason
    if chunk.logprobs:
        doc["logprobs"] = [wire.logprob_json(lp) for lp in chunk.logprobs]
    doc.update(wire.metrics_json(chunk.metrics))
    return doc


def debug_json(model: str, chunk: ChatChunk) -> dict[str, object]:
    return {"model": model, "created_at": wire.now_rfc3339(), "message": {"role": "", "content": ""},
            "done": False, "_debug_info": {"rendered_template": chunk.debug_prompt,
                                           "image_count": chunk.image_count}}


async def aggregate_chat(model: str, chunks: AsyncIterator[ChatChunk], with_tools: bool) -> dict[str, object]:
    """stream:false: tool_calls appear only if the request had tools (spec 2.5)."""
    merged = await drain(chunks)
    if merged.debug_prompt is not None:
        return debug_json(model, merged)
    return chat_chunk_json(model, replace(merged, tool_calls=merged.tool_calls if with_tools else ()))


@router.post("/api/chat", openapi_extra=openapi_body(wire.ChatRequest))
async def chat(request: Request) -> Response:
    svc = services(request)
    try:
        body = await read_json(request, svc.settings.max_body_bytes)
        req = wire.decode(wire.ChatRequest, body, "ChatRequest")
        turn = wire.to_chat_turn(req)
        chunks = svc.chat.chat(turn)
        if req.stream is False:
            doc = await until_disconnect(request, aggregate_chat(turn.model, chunks, bool(turn.tools)))
            return OllamaJSON(doc)
    except HerdError as exc:
        return ollama_error(exc)

    head = '{"model":' + dumps(turn.model) + ',"created_at":"'

    def encode(chunk: ChatChunk) -> str | None:
        if not (chunk.done or chunk.thinking or chunk.tool_calls or chunk.logprobs or chunk.debug_prompt is not None):
            if not chunk.content:
                return None  # Ollama suppresses chunks that carry nothing
            # The common chunk, one per token, written directly: same bytes as chat_chunk_json gives.
            return (head + wire.now_rfc3339() + '","message":{"role":"assistant","content":' + dumps(chunk.content)
                    + '},"done":false}\n')
        if chunk.debug_prompt is not None:
            return dumps(debug_json(turn.model, chunk)) + "\n"
        if not (chunk.done or chunk.content or chunk.thinking or chunk.tool_calls or chunk.logprobs):
            return None  # Ollama suppresses chunks that carry nothing
        return dumps(chat_chunk_json(turn.model, chunk)) + "\n"

    return await stream_response(chunks, encode, _error_line, NDJSON, on_error_before=ollama_error)


def _error_line(exc: Exception) -> str:
    message = exc.message if isinstance(exc, HerdError) else f"internal error: {exc}"
    return dumps({"error": message}) + "\n"


__all__ = ["InvalidRequest", "router"]
