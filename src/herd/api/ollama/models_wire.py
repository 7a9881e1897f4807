"""Ollama wire types for model management: /api/create, /api/copy, /api/delete, /api/pull, /api/push, and the
progress lines they stream (spec 5.8-5.12). Decoded with `schemas.ollama.decode`, so type errors read like Go's."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from herd.api.ollama.wire import MessageIn
from herd.registry.create import CreateSpec
from herd.registry.progress import Progress

# Same decoding rules as the chat types: strict types, unknown fields ignored (Ollama ignores them too).
_STRICT = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class CreateRequest(BaseModel):
    model_config = _STRICT
    model: str | None = None
    name: str | None = None  # legacy spelling of `model`
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[MessageIn] | None = None
    quantize: str | None = None
    quantization: str | None = None  # legacy spelling of `quantize`
    renderer: str | None = None
    parser: str | None = None
    draft: str | None = None  # herd's: a draft model by name or store blob path, as `from`
    draft_files: dict[str, str] | None = None  # Ollama's: uploaded draft GGUF blobs, as `files`
    modelfile: str | None = None  # legacy: the Modelfile text itself
    stream: bool | None = None


class CopyRequest(BaseModel):
    model_config = _STRICT
    source: str | None = None
    destination: str | None = None


class TransferRequest(BaseModel):
    """/api/pull and /api/push. `username` and `password` are accepted and ignored, as in Ollama."""

    model_config = _STRICT
    model: str | None = None
    name: str | None = None
    insecure: bool | None = None
    stream: bool | None = None
    username: str | None = None
    password: str | None = None


def to_create_spec(req: CreateRequest) -> CreateSpec:
    license_ = (req.license,) if isinstance(req.license, str) else tuple(req.license or ())
    return CreateSpec(
        model=req.model or req.name or "",
        from_=req.from_ or None,
        files=tuple((req.files or {}).items()),
        adapters=tuple((req.adapters or {}).items()),
        template=req.template,
        system=req.system,
        license=license_,
        parameters=dict(req.parameters or {}),
        messages=tuple((m.role, m.content or "") for m in req.messages or ()),
        quantize=req.quantize or req.quantization or None,
        renderer=req.renderer or None,
        parser=req.parser or None,
        draft=req.draft or None,
        draft_files=tuple((req.draft_files or {}).items()),
        modelfile=req.modelfile or None,
    )


def progress_json(p: Progress) -> dict[str, object]:
    """`{"status", "digest", "total", "completed"}` in Ollama's order, leaving out what is not known yet."""
    doc: dict[str, object] = {"status": p.status}
    if p.digest:
        doc["digest"] = p.digest
    if p.total is not None:
        doc["total"] = p.total
    if p.completed is not None:
        doc["completed"] = p.completed
    return doc
