"""/v1/* routes (spec 9): parse, call the native services through `translate`, encode as OpenAI does.

Errors use OpenAI's shape (`api.errors.openai_error`) with the native route's status codes. Streams are SSE
`data: {...}` events ending with `data: [DONE]`; an error after the stream began is one error event, then the
stream ends without `[DONE]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response

from herd.api.body import read_json
from herd.api.common import openapi_body, services
from herd.api.errors import OpenAIJSON, openai_error, openai_error_body, status_of
from herd.api.ollama.wire import decode
from herd.api.openai import translate as compat
from herd.api.openai import wire
from herd.api.streaming import dumps, stream_response, until_disconnect
from herd.errors import HerdError
from herd.registry.models import off_loop
from herd.services import choices
from herd.services.embed import EmbedService
from herd.services.generate import GenerateService

router = APIRouter()
T = TypeVar("T")
SSE = "text/event-stream"
DONE = "data: [DONE]\n\n"


def _sse(events: Callable[[T], list[dict[str, object]]]) -> Callable[[T], str | None]:
    def encode(chunk: T) -> str | None:
        return "".join(f"data: {dumps(doc)}\n\n" for doc in events(chunk)) or None

    return encode


def _sse_error(exc: Exception) -> str:
    if isinstance(exc, HerdError):
        body = openai_error_body(status_of(exc), exc.message)
    else:
        body = openai_error_body(500, f"internal error: {exc}")
    return f"data: {dumps(body)}\n\n"


@router.post("/v1/chat/completions", openapi_extra=openapi_body(wire.ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    svc = services(request)
    try:
        body = await read_json(request, svc.settings.max_body_bytes)
        req = decode(wire.ChatCompletionRequest, body, "ChatCompletionRequest")
        if svc.settings.allow_image_urls:
            await until_disconnect(request, compat.fetch_remote_images(req, svc.settings.max_image_bytes,
                                                                       svc.settings.max_images))
        turn = compat.chat_turn(req)
        n = compat.choice_count(req.n)
        streams = choices.start(svc.chat.chat, turn, n)
        images = sum(len(m.images) for m in turn.messages)
        if not req.stream:  # OpenAI's default is not to stream
            doc = await until_disconnect(request, compat.chat_completion(turn.model, streams, bool(turn.tools),
                                                                         images))
            return OpenAIJSON(doc)
    except HerdError as exc:
        return openai_error(exc)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    stream = compat.ChatStream(turn.model, include_usage, images, n)
    return await stream_response(choices.merged(streams), _sse(lambda item: stream.events(item[1], item[0])),
                                 _sse_error, SSE, trailer=DONE, on_error_before=openai_error)


@router.post("/v1/completions", openapi_extra=openapi_body(wire.CompletionRequest))
async def completions(request: Request) -> Response:
    svc = services(request)
    try:
        body = await read_json(request, svc.settings.max_body_bytes)
        req = decode(wire.CompletionRequest, body, "CompletionRequest")
        gen = compat.completion_request(req)
        n = compat.choice_count(req.n)
        streams = choices.start(GenerateService(svc.chat).generate, gen, n)
        if not req.stream:
            return OpenAIJSON(await until_disconnect(request, compat.completion(gen.model, streams)))
    except HerdError as exc:
        return openai_error(exc)
    stream = compat.CompletionStream(gen.model, bool(req.stream_options and req.stream_options.include_usage), n)
    return await stream_response(choices.merged(streams), _sse(lambda item: stream.events(item[1], item[0])),
                                 _sse_error, SSE, trailer=DONE, on_error_before=openai_error)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    return OpenAIJSON(await off_loop(compat.list_models, services(request).catalog))


@router.get("/v1/models/{model:path}")
async def get_model(request: Request, model: str) -> Response:
    try:
        return OpenAIJSON(await off_loop(compat.get_model, services(request).catalog, model))
    except HerdError as exc:
        return openai_error(exc)


@router.post("/v1/embeddings", openapi_extra=openapi_body(wire.EmbeddingRequest))
async def embeddings(request: Request) -> Response:
    svc = services(request)
    try:
        body = await read_json(request, svc.settings.max_body_bytes)
        req, encoding = compat.embed_request(decode(wire.EmbeddingRequest, body, "EmbedRequest"))
        result = await until_disconnect(request, EmbedService(svc.chat).embed(req))
        return OpenAIJSON(compat.embedding_list(req.model, result, encoding))
    except HerdError as exc:
        return openai_error(exc)
