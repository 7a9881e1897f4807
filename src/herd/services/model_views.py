"""What /api/tags, /api/show and /api/ps report about stored and loaded models."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from herd.errors import ModelNotFound
from herd.registry.gguf_info import read_gguf_full, read_gguf_info
from herd.registry.models import ModelCatalog, ResolvedModel
from herd.scheduler.scheduler import Scheduler


def rfc3339_local(dt: datetime) -> str:
    """File times in the local offset with nanoseconds, trailing zeros trimmed (Go's RFC3339Nano)."""
    text = dt.isoformat(timespec="microseconds")
    head, _, rest = text.partition(".")
    frac = rest[:6].rstrip("0")
    offset = rest[6:]
    if offset in ("+00:00", ""):
        offset = "Z"
    return f"{head}.{frac}{offset}" if frac else f"{head}{offset}"


class ModelViews:
    """`tags` and `show` read the store and GGUF headers (the first time a blob is seen): they block, so the
    handlers run them in a worker thread. `ps` reads only the scheduler's state, which lives on the event loop."""

    def __init__(self, catalog: ModelCatalog, scheduler: Scheduler) -> None:
        self.catalog = catalog
        self.scheduler = scheduler

    def _details(self, model: ResolvedModel, with_lengths: bool) -> dict[str, object]:
        details = dict(model.details)
        if with_lengths:
            try:
                if model.gguf.context_length:
                    details["context_length"] = model.gguf.context_length
                if model.gguf.embedding_length:
                    details["embedding_length"] = model.gguf.embedding_length
            except Exception:
                pass
        return details

    def tags(self) -> list[dict[str, object]]:
        out = []
        for model in self.catalog.list():
            try:
                caps = list(model.capabilities)
                details = self._details(model, True)
            except Exception:
                continue  # a model whose weights are missing or broken is not listed as runnable
            out.append({
                "name": model.name,
                "model": model.name,
                "modified_at": rfc3339_local(model.stored.modified_at),
                "size": model.size,
                "digest": model.digest,
                "details": details,
                "capabilities": caps,
            })
        return out

    def show(self, name: str, verbose: bool, system: str | None) -> dict[str, object]:
        from herd.errors import InvalidRequest
        from herd.registry.names import ModelName

        if not name.strip():
            raise InvalidRequest("model is required")
        sent = name.strip()
        ModelName.parse(sent)  # an invalid name is a 400 before the lookup
        try:
            model = self.catalog.resolve(sent)
        except ModelNotFound:
            # The name as the client wrote it (host, namespace and case kept), with the tag Ollama fills in.
            shown = sent if sent.rfind(":") > sent.rfind("/") else sent + ":latest"
            raise ModelNotFound(f"model '{shown}' not found") from None
        from herd.registry import modelfile

        _, template = model.template
        params = model.parameters
        doc: dict[str, object] = {
            "modelfile": modelfile.render_modelfile(
                name=model.name, model_path=str(model.model_path), template=template,
                system=system if system is not None else model.system, parameters=_param_items(params),
                messages=tuple((m.role, m.content) for m in model.messages),
                license=(model.license,) if model.license else (),
                draft=str(model.draft_path) if model.draft_path is not None else None,
            ),
            "parameters": modelfile.format_parameters(_param_items(params)),
            "template": template,
        }
        if system or model.system:
            doc["system"] = system if system is not None else model.system
        if model.license:
            doc["license"] = model.license
        doc["details"] = self._details(model, False)
        if model.messages:  # Ollama's ShowResponse puts the MESSAGE history here, after details
            doc["messages"] = [{"role": m.role, "content": m.content} for m in model.messages]
        if verbose:
            # The lean cached header has no long arrays and no tensors; a verbose show reads them afresh, once.
            full = read_gguf_full(model.model_path)
            doc["model_info"] = full.model_info(True)
            doc["tensors"] = [{"name": t.name, "type": t.type, "shape": list(t.shape)} for t in full.tensors]
        else:
            doc["model_info"] = model.gguf.model_info(False)
        if model.vision_projector is not None:
            # Ollama's projector_info: the projector GGUF's metadata, shown by model_info's rules.
            path = model.vision_projector
            doc["projector_info"] = (read_gguf_full(path) if verbose else read_gguf_info(path)).model_info(verbose)
        doc["capabilities"] = list(model.capabilities)
        doc["modified_at"] = rfc3339_local(model.stored.modified_at)
        # herd's own: where a loaded model's layers are (list(): this runs on a thread, the loop owns the dict)
        loaded = getattr(self.scheduler, "loaded", {})  # no scheduler in some tests of the store alone
        entry = next((e for e in list(loaded.values()) if e.key == model.stored.name.key
                      and not e.spec.embedding and not e.stopping), None)
        if entry is not None:
            doc["placement"] = placement_json(entry.runner)
        return doc

    def ps(self) -> list[dict[str, object]]:
        out = []
        now = datetime.now(UTC)
        for entry, remaining in self.scheduler.snapshot():
            # A keep_alive past any date (1e308 s) reads as forever, like a negative one; timedelta cannot hold it.
            forever = remaining == float("inf") or remaining > 200 * 365 * 86400
            expires = now + timedelta(days=365 * 200) if forever else now + timedelta(
                seconds=remaining)
            vram = int(getattr(entry.runner, "vram_bytes", 0))
            out.append({
                "name": entry.name,
                "model": entry.name,
                "size": max(entry.size, vram),
                "digest": entry.digest,
                "details": entry.details,
                "expires_at": rfc3339_local(expires.astimezone()),
                "size_vram": vram,  # 0 on the CPU; llama.cpp's GPU buffers as the runner's load log listed them
                "context_length": entry.spec.num_ctx,
                "num_parallel": entry.spec.num_parallel,  # herd's: the slots (conversations at once) it got
                "placement": placement_json(entry.runner),  # herd's: layers per device, and whose device
            })
        return out


def placement_json(runner: object) -> list[dict[str, object]]:
    """Layers per device as the runner reported them at load: `where` is "local" or an RPC worker's host:port."""
    rows: tuple[tuple[str, str, int], ...] = getattr(runner, "placement", ())
    return [{"device": device, "where": where, "layers": layers} for device, where, layers in rows]


def _param_items(params: dict[str, object]) -> tuple[tuple[str, object], ...]:
    items: list[tuple[str, object]] = []
    for key, value in params.items():
        if isinstance(value, (list, tuple)):
            items.extend((key, v) for v in value)
        else:
            items.append((key, value))
    return tuple(items)


_ = time
