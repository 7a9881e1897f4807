"""A stored model resolved into what serving needs: weights path, template, system, parameters, capabilities."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from herd.errors import ModelNotFound
from herd.registry.gguf_info import GGUFInfo, read_gguf_info
from herd.registry.store import Store, StoredModel


class TemplateKind:
    JINJA = "jinja"
    GO = "go"


_JINJA_MARKERS = re.compile(r"\{%|\{\{-?\s*(messages|message\[|bos_token|raise_exception|add_generation_prompt)")


def is_jinja(template: str) -> bool:
    """A Modelfile TEMPLATE may be Go (Ollama) or Jinja (HF). Go actions start with a dot, a keyword or a
    variable; Jinja has `{%` statements or names such as `messages` without a dot."""
    return bool(_JINJA_MARKERS.search(template))


@dataclass(frozen=True)
class ChatMessageSeed:
    role: str
    content: str


@dataclass
class ResolvedModel:
    stored: StoredModel
    store: Store

    @property
    def name(self) -> str:
        return self.stored.name.display

    @property
    def fully_qualified(self) -> str:
        return self.stored.name.fully_qualified

    @property
    def digest(self) -> str:
        return self.stored.digest

    @property
    def size(self) -> int:
        return self.stored.manifest.total_size

    @cached_property
    def model_path(self) -> Path:
        layer = self.stored.manifest.layer("model")
        if layer is None:
            raise ModelNotFound(f'model "{self.name}" not found, try pulling it first')
        path = self.store.blob_path(layer.digest)
        if not path.exists():
            raise ModelNotFound(f'model "{self.name}" not found, try pulling it first')
        return path

    @cached_property
    def projector_path(self) -> Path | None:
        layer = self.stored.manifest.layer("projector")
        return self.store.blob_path(layer.digest) if layer else None

    @cached_property
    def gguf(self) -> GGUFInfo:
        return read_gguf_info(self.model_path)

    @cached_property
    def config(self) -> dict[str, object]:
        return self.store.config_of(self.stored)

    def _text_layer(self, kind: str) -> str | None:
        layer = self.stored.manifest.layer(kind)
        if layer is None:
            return None
        try:
            return self.store.read_blob(layer.digest).decode("utf-8")
        except OSError:
            return None

    @cached_property
    def template_override(self) -> str | None:
        return self._text_layer("template")

    @cached_property
    def template(self) -> tuple[str, str]:
        """(kind, source). A TEMPLATE layer wins over the GGUF's Jinja template, as in Ollama."""
        override = self.template_override
        if override is not None:
            return (TemplateKind.JINJA if is_jinja(override) else TemplateKind.GO, override)
        jinja = self.gguf.chat_template
        if jinja:
            return TemplateKind.JINJA, jinja
        return TemplateKind.GO, "{{ .Prompt }}"

    @cached_property
    def system(self) -> str | None:
        return self._text_layer("system")

    @cached_property
    def license(self) -> str | None:
        """Every LICENSE layer (a Modelfile may have several), joined by a newline as Ollama's /api/show does."""
        texts = []
        for layer in self.stored.manifest.layers:
            if layer.kind == "license":
                try:
                    texts.append(self.store.read_blob(layer.digest).decode("utf-8"))
                except OSError:
                    continue
        return "\n".join(texts) if texts else None

    @cached_property
    def parameters(self) -> dict[str, object]:
        raw = self._text_layer("params")
        if not raw:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    @cached_property
    def messages(self) -> tuple[ChatMessageSeed, ...]:
        raw = self._text_layer("messages")
        if not raw:
            return ()
        try:
            return tuple(ChatMessageSeed(str(m.get("role", "")), str(m.get("content", ""))) for m in json.loads(raw))
        except (ValueError, AttributeError, TypeError):
            return ()

    @cached_property
    def capabilities(self) -> tuple[str, ...]:
        """Spec 7.3: from the GGUF (completion/embedding/vision) and the template (tools/insert/thinking)."""
        caps: list[str] = []
        info = self.gguf
        caps.append("embedding" if info.has_pooling else "completion")
        kind, source = self.template
        if kind == TemplateKind.GO:
            from herd.prompt import gotemplate

            try:
                tmpl = gotemplate.GoTemplate(source)
                if gotemplate.uses_tools(tmpl):
                    caps.append("tools")
                if gotemplate.uses_suffix(tmpl):
                    caps.append("insert")
                if gotemplate.uses_thinking(tmpl):
                    caps.append("thinking")
            except Exception:
                pass
        else:
            if "tools" in source or "tool_call" in source:
                caps.append("tools")
            if ("<think>" in source and "</think>" in source) or "</think>" in source:
                caps.append("thinking")
        if info.has_vision or self.projector_path is not None:
            caps.append("vision")
        return tuple(caps)

    @property
    def details(self) -> dict[str, object]:
        cfg = self.config
        family = str(cfg.get("model_family") or self.gguf.architecture)
        families = cfg.get("model_families") or [family]
        return {
            "parent_model": "",
            "format": str(cfg.get("model_format") or "gguf"),
            "family": family,
            "families": families,
            "parameter_size": str(cfg.get("model_type") or self.gguf.parameter_size),
            "quantization_level": str(cfg.get("file_type") or self.gguf.file_type),
        }


class ModelCatalog:
    """Name -> ResolvedModel, cached per manifest digest so template parsing and GGUF reads happen once."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[tuple[str, str], ResolvedModel] = {}

    def resolve(self, name: str) -> ResolvedModel:
        stored = self.store.find(name)
        key = (stored.name.key, stored.digest)
        model = self._cache.get(key)
        if model is None:
            model = ResolvedModel(stored, self.store)
            self._cache[key] = model
        return model

    def list(self) -> list[ResolvedModel]:
        out = []
        for stored in self.store.list():
            key = (stored.name.key, stored.digest)
            model = self._cache.get(key)
            if model is None:
                model = ResolvedModel(stored, self.store)
                self._cache[key] = model
            out.append(model)
        return out
