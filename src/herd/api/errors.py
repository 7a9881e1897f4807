"""Typed errors -> status code and body, in one place, per dialect (native Ollama, OpenAI and Anthropic)."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from herd.errors import (
    BlobNotFound,
    CapabilityMissing,
    EmptyPrompt,
    HerdError,
    InvalidFormat,
    InvalidRequest,
    ModelNotFound,
    NotImplementedFeature,
    PromptTooLong,
    RegistryError,
    RequestCancelled,
    ResponseNotFound,
    RpcWorkerFailed,
    RpcWorkerTimeout,
    RunnerFailed,
    ServerBusy,
    ShuttingDown,
    StorageFailed,
    UnsafePath,
)

_STATUS: tuple[tuple[type[HerdError], int], ...] = (
    (PromptTooLong, 400),
    (CapabilityMissing, 400),
    (EmptyPrompt, 400),
    (UnsafePath, 400),
    (NotImplementedFeature, 400),
    (InvalidRequest, 400),
    (ModelNotFound, 404),
    (ResponseNotFound, 404),  # OpenAI answers 400; a missing resource is a 404 on herd (issue 15)
    (InvalidFormat, 500),  # Ollama raises it at generation time, before output
    (ServerBusy, 503),
    (ShuttingDown, 503),
    (RequestCancelled, 499),
    (RpcWorkerTimeout, 504),  # before RpcWorkerFailed and RunnerFailed, its bases
    (RpcWorkerFailed, 502),
    (RunnerFailed, 500),
    (BlobNotFound, 404),
    (RegistryError, 500),  # Ollama's pull/push answer 500 when stream is false
    (StorageFailed, 500),
)


def status_of(exc: HerdError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


class OllamaJSON(JSONResponse):
    media_type = "application/json; charset=utf-8"

    def render(self, content: object) -> bytes:
        import json

        return json.dumps(content, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def ollama_error(exc: HerdError) -> OllamaJSON:
    return OllamaJSON({"error": exc.message}, status_code=status_of(exc))


def ollama_error_text(status: int, message: str) -> OllamaJSON:
    return OllamaJSON({"error": message}, status_code=status)


def openai_error_body(status: int, message: str, param: str | None = None, code: str | None = None,
                      kind: str | None = None) -> dict[str, object]:
    """`param`, `code` and `kind` (the error's `type`) are optional: by default the type follows the status and
    the others are null."""
    kind = kind or {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class OpenAIJSON(OllamaJSON):
    """The same compact JSON; Ollama's /v1 routes send a plain `application/json` content type."""

    media_type = "application/json"


def openai_error(exc: HerdError) -> OpenAIJSON:
    status = status_of(exc)
    return OpenAIJSON(openai_error_body(status, exc.message), status_code=status)


# Anthropic's error types by status (its API reference, "Errors"); 503 is how herd says the queue is full, which
# Anthropic calls overloaded (its own 529).
_ANTHROPIC_KIND = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                   503: "overloaded_error", 529: "overloaded_error"}


def anthropic_error_body(status: int, message: str) -> dict[str, object]:
    return {"type": "error", "error": {"type": _ANTHROPIC_KIND.get(status, "api_error"), "message": message}}


def anthropic_error(exc: HerdError) -> OpenAIJSON:
    """Anthropic's JSON is the same compact `application/json` as OpenAI's."""
    status = status_of(exc)
    return OpenAIJSON(anthropic_error_body(status, exc.message), status_code=status)
