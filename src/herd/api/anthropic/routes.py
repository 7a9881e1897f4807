"""Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens` (Claude Code and the
`anthropic` SDK can use herd as their ANTHROPIC_BASE_URL).

Bodies are read by hand, so every error, FastAPI's validation included, has Anthropic's shape
`{"type":"error","error":{"type":...,"message":...}}` with the status `api.errors.status_of` gives. The query string
(`?beta=true`) and the `anthropic-version`, `anthropic-beta` and `x-api-key` headers are accepted and not read: herd
has one API version and no keys. A stream is SSE (`event: <type>` / `data: {...}`); an error after it began is one
`event: error`, then the stream ends.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from herd.api.anthropic import translate, wire
from herd.api.body import read_json
from herd.api.common import openapi_body, services
from herd.api.errors import OpenAIJSON, anthropic_error, anthropic_error_body, status_of
from herd.api.streaming import stream_response, until_disconnect
from herd.errors import HerdError
from herd.services.wiring import Services
from herd.types import ChatTurn

router = APIRouter()
SSE = "text/event-stream"


def _sse_error(exc: Exception) -> str:
    if isinstance(exc, HerdError):
        return translate.sse(anthropic_error_body(status_of(exc), exc.message))
    return translate.sse(anthropic_error_body(500, f"internal error: {exc}"))


async def _turn(request: Request, svc: Services, model: type[wire.CountTokensRequest]
                ) -> tuple[wire.CountTokensRequest, ChatTurn]:
    body = await read_json(request, svc.settings.max_body_bytes)
    req = wire.decode(model, body)
    fetched: dict[str, bytes] = {}
    if svc.settings.allow_image_urls:
        fetched = await until_disconnect(request, translate.fetch_remote_images(
            req, svc.settings.max_image_bytes, svc.settings.max_images))
    return req, translate.chat_turn(req, fetched)


@router.post("/v1/messages", openapi_extra=openapi_body(wire.MessagesRequest))
async def messages(request: Request) -> Response:
    svc = services(request)
    try:
        req, turn = await _turn(request, svc, wire.MessagesRequest)
        assert isinstance(req, wire.MessagesRequest)
        chunks = svc.chat.chat(turn)
        if not req.stream:  # Anthropic's default is not to stream
            doc = await until_disconnect(request, translate.message(turn.model, chunks, translate.thinking_shown(req)))
            return OpenAIJSON(doc)
    except HerdError as exc:
        return anthropic_error(exc)
    stream = translate.MessageStream(turn.model, translate.thinking_shown(req))
    return await stream_response(chunks, stream.encode, _sse_error, SSE, on_error_before=anthropic_error)


@router.post("/v1/messages/count_tokens", openapi_extra=openapi_body(wire.CountTokensRequest))
async def count_tokens(request: Request) -> Response:
    """The prompt's length as /v1/messages would render it for the same body, without generating."""
    svc = services(request)
    try:
        _, turn = await _turn(request, svc, wire.CountTokensRequest)
        return OpenAIJSON({"input_tokens": await until_disconnect(request, svc.chat.count_prompt_tokens(turn))})
    except HerdError as exc:
        return anthropic_error(exc)
