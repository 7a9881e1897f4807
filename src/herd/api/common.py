"""What every route module needs: the app's services and an OpenAPI description of hand-read bodies."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from herd.api.openapi import request_body
from herd.services.wiring import Services


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def openapi_body(model: type[Any]) -> dict[str, Any]:
    """Describe the real body in the OpenAPI document (bodies are read by hand to keep Ollama's errors)."""
    return request_body(model)  # nested models' $refs point at components/schemas (api/openapi.py)
