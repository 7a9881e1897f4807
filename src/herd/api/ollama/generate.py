"""/api/generate, /api/embed and /api/embeddings: parse, call the service, encode (spec 5.1, 5.6, 5.7)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from herd.api.body import read_json
from herd.api.common import openapi_body, services
from herd.api.errors import OllamaJSON, ollama_error
from herd.api.ollama import wire as wire
from herd.api.streaming import NDJSON, dumps, stream_response, until_disconnect
from herd.errors import HerdError
from herd.services.chat import ChatChunk, drain
from herd.services.embed import EmbedResult, EmbedService
from herd.services.generate import GenerateService

router = APIRouter()




# ---- /api/generate -----------------------------------------------------------------------------------------


def generate_chunk_json(model: str, chunk: ChatChunk) -> dict[str, object]:
    """Ollama's GenerateResponse field order; `response` is always present, empty optional fields are left out."""
    doc: dict[str, object] = {"model": model, "created_at": wire.now_rfc3339(), "response": chunk.content}
    if chunk.thinking:
        doc["thinking"] = chunk.thinking
    doc["done"] = chunk.done
    if chunk.done_reason:
        doc["done_reason"] = chunk.done_reason
    if chunk.context:
        doc["context"] = list(chunk.context)
    doc.update(wire.metrics_json(chunk.metrics))
    if chunk.tool_calls:
        doc["tool_calls"] = [wire.tool_call_json(c) for c in chunk.tool_calls]
    if chunk.logprobs:
        doc["logprobs"] = [wire.logprob_json(lp) for lp in chunk.logprobs]
    return doc


def generate_debug_json(model: str, chunk: ChatChunk, image_count: int) -> dict[str, object]:
    return {"model": model, "created_at": wire.now_rfc3339(), "response": "", "done": False,
            "_debug_info": {"rendered_template": chunk.debug_prompt, "image_count": image_count}}


async def aggregate_generate(model: str, chunks: AsyncIterator[ChatChunk], image_count: int) -> dict[str, object]:
    """stream:false: the same stream, drained."""
    merged = await drain(chunks)
    if merged.debug_prompt is not None:
        return generate_debug_json(model, merged, image_count)
    return generate_chunk_json(model, merged)


@router.post("/api/generate", openapi_extra=openapi_body(wire.GenerateRequest))
async def generate(request: Request) -> Response:
    svc = services(request)
    try:
        body = await read_json(request, svc.settings.max_body_bytes)
        req = wire.decode(wire.GenerateRequest, body, "GenerateRequest")
        gen = wire.to_generate_request(req)
        chunks = GenerateService(svc.chat).generate(gen)
        image_count = 0 if gen.raw else len(gen.images)
        # An empty prompt only loads or unloads: Ollama answers that with one JSON object even when streaming.
        if req.stream is False or not gen.prompt:
            return OllamaJSON(await until_disconnect(request, aggregate_generate(gen.model, chunks, image_count)))
    except HerdError as exc:
        return ollama_error(exc)

    def encode(chunk: ChatChunk) -> str | None:
        if chunk.debug_prompt is not None:
            return dumps(generate_debug_json(gen.model, chunk, image_count)) + "\n"
        if not (chunk.done or chunk.content or chunk.thinking or chunk.tool_calls or chunk.logprobs):
            return None  # Ollama suppresses chunks that carry nothing
        return dumps(generate_chunk_json(gen.model, chunk)) + "\n"

    return await stream_response(chunks, encode, _error_line, NDJSON, on_error_before=ollama_error)


def _error_line(exc: Exception) -> str:
    message = exc.message if isinstance(exc, HerdError) else f"internal error: {exc}"
    return dumps({"error": message}) + "\n"


# ---- /api/embed, /api/embeddings ---------------------------------------------------------------------------


def embed_json(model: str, result: EmbedResult) -> dict[str, object]:
    doc: dict[str, object] = {"model": model, "embeddings": [list(v) for v in result.vectors]}
    for key in ("total_duration", "load_duration"):
        value = getattr(result, key)
        if value and result.vectors:  # a load-only reply is just model and [] (Ollama)
            doc[key] = value
    if result.prompt_tokens:
        doc["prompt_eval_count"] = result.prompt_tokens
    return doc


@router.post("/api/embed", openapi_extra=openapi_body(wire.EmbedRequest))
async def embed(request: Request) -> Response:
    svc = services(request)
    try:
        body = await read_json(request, svc.settings.max_body_bytes)
        req = wire.to_embed_request(wire.decode(wire.EmbedRequest, body, "EmbedRequest"))
        result = await until_disconnect(request, EmbedService(svc.chat).embed(req))
        return OllamaJSON(embed_json(req.model, result))
    except HerdError as exc:
        return ollama_error(exc)


@router.post("/api/embeddings", openapi_extra=openapi_body(wire.EmbeddingsRequest))
async def embeddings(request: Request) -> Response:
    svc = services(request)
    try:
        body = await read_json(request, svc.settings.max_body_bytes)
        req = wire.to_embeddings_request(wire.decode(wire.EmbeddingsRequest, body, "EmbeddingRequest"))
        result = await until_disconnect(request, EmbedService(svc.chat).embed(req))
        # One raw vector, not normalised, and no metrics (spec 5.7); an empty prompt only loads the model.
        return OllamaJSON({"embedding": list(result.vectors[0]) if result.vectors else []})
    except HerdError as exc:
        return ollama_error(exc)
