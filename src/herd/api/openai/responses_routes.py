"""/v1/responses (OpenAI's Responses API, as Codex CLI and `client.responses.create` speak it): parse, translate
(`responses_request.py`), run the chat turn, encode (`responses_stream.py`).

Errors are OpenAI's shape with the native status codes; an unknown `previous_response_id` is a 404 with
`param` and `code` set. Streams are SSE `event: <type>` / `data: {...}` pairs, with no `[DONE]` (the Responses
stream ends after its `response.completed`, `response.incomplete` or `response.failed` event).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from herd.api.body import read_json
from herd.api.common import openapi_body, services
from herd.api.errors import OpenAIJSON, openai_error_body, status_of
from herd.api.openai import responses_request, responses_stream
from herd.api.openai import responses_wire as wire
from herd.api.streaming import stream_response, until_disconnect
from herd.errors import HerdError, ResponseNotFound
from herd.services.response_store import StoredResponse
from herd.services.wiring import Services
from herd.types import Message

router = APIRouter()
SSE = "text/event-stream"


def _error(exc: HerdError) -> Response:
    if isinstance(exc, ResponseNotFound):
        body = openai_error_body(404, exc.message, param="previous_response_id", code="previous_response_not_found",
                                 kind="invalid_request_error")
        return OpenAIJSON(body, status_code=404)
    status = status_of(exc)
    param = exc.param if isinstance(exc, wire.InvalidParam) else None
    return OpenAIJSON(openai_error_body(status, exc.message, param=param), status_code=status)


def _storer(svc: Services, plan: responses_request.ResponsePlan, response_id: str) -> responses_stream.OnDone | None:
    if not plan.store:
        return None

    def store(doc: dict[str, object], answer: Message) -> None:
        svc.responses.put(response_id, StoredResponse(plan.history + (answer,), doc))

    return store


@router.post("/v1/responses", openapi_extra=openapi_body(wire.ResponsesRequest))
async def create_response(request: Request) -> Response:
    svc = services(request)
    try:
        body = await read_json(request, svc.settings.max_body_bytes)
        req = wire.decode(wire.ResponsesRequest, {} if body is None else body)
        if svc.settings.allow_image_urls:
            await until_disconnect(request, responses_request.fetch_remote_images(req, svc.settings.max_image_bytes,
                                                                          svc.settings.max_images))
        earlier = svc.responses.get(req.previous_response_id).conversation if req.previous_response_id else ()
        plan = responses_request.plan(req, earlier)
        chunks = svc.chat.chat(plan.turn)
        stream = responses_stream.ResponseStream(plan)
        stream.on_done = _storer(svc, plan, stream.id)
        if not req.stream:  # OpenAI's default is not to stream
            return OpenAIJSON(await until_disconnect(request, responses_stream.collect(stream, chunks)))
    except HerdError as exc:
        return _error(exc)
    # The first chunk's events carry response.created and response.in_progress, so an error before the first
    # token is still a real status (stream_response awaits the first chunk before any header).
    return await stream_response(chunks, stream.encode, stream.encode_error, SSE, on_error_before=_error)


@router.get("/v1/responses/{response_id}")
async def get_response(request: Request, response_id: str) -> Response:
    try:
        return OpenAIJSON(services(request).responses.get(response_id).document)
    except HerdError as exc:
        return _error(exc)
