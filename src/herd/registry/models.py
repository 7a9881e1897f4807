"""A stored model resolved into what serving needs: weights path, template, system, parameters, capabilities."""

from __future__ import annotations

import asyncio
import builtins
import functools
import json
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

from herd.errors import ModelNotFound
from herd.families import Family, detect_family
from herd.registry.gguf_info import GGUFInfo, read_gguf_info
from herd.registry.store import Store, StoredModel

T = TypeVar("T")
P = ParamSpec("P")

# The store's blocking work (header reads, manifest listing, copy, delete, blob writes) runs here, not in asyncio's
# default executor: that one also holds threads that wait for a runner to load or for the tokenizer, and under load
# they can all be busy, which would make /api/tags wait for a model load. Four threads: the work is disk-bound.
_REGISTRY_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="herd-registry")


async def off_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking registry call in the registry's threads; the event loop goes on meanwhile."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_REGISTRY_POOL, functools.partial(fn, *args, **kwargs))


log = logging.getLogger(__name__)


class cached_property(Generic[T]):
    """functools.cached_property without Python 3.11's lock, which is one lock per property for every instance: while
    a worker thread reads a 256k-token vocabulary for one model, the event loop asking any other model's uncached
    `gguf` would wait for it. Without the lock two threads may compute a value twice; read_gguf_info and the
    template parses are idempotent, so that costs only time, and read_gguf_info lets one parse per blob run."""

    def __init__(self, fn: Callable[[Any], T]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> cached_property[T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> T | cached_property[T]:
        if obj is None:
            return self
        value = self.fn(obj)
        obj.__dict__[self.name] = value  # a non-data descriptor: the instance attribute wins from now on
        return value


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
    def vision_projector(self) -> Path | None:
        """The projector the runner loads with mtmd: the projector layer, if its header reads as a `clip` GGUF.
        A layer that does not (a broken or foreign file) is left out, so the model still serves text, and it
        does not claim vision."""
        path = self.projector_path
        if path is None:
            return None
        try:
            info = read_gguf_info(path)
        except Exception:
            info = None
        if info is None or info.architecture != "clip":
            log.warning("model %s: projector layer %s is not a clip GGUF; images are refused", self.name, path)
            return None
        return path

    @cached_property
    def draft_path(self) -> Path | None:
        """The draft GGUF (Modelfile DRAFT) the runner loads beside the model for speculative decoding. A layer
        whose blob is gone leaves it out: the model still serves, without a draft."""
        layer = self.stored.manifest.layer("draft")
        if layer is None:
            return None
        path = self.store.blob_path(layer.digest)
        if not path.exists():
            log.warning("model %s: draft layer %s is missing; serving without a draft", self.name, path)
            return None
        return path

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
    def family(self) -> Family:
        """The format of the model's thinking and tool calls (families.py)."""
        cfg = self.config
        return detect_family(str(cfg.get("parser") or ""), str(cfg.get("renderer") or ""), self.gguf.architecture,
                             self.template[1])

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
        if caps[0] == "completion":
            # A built-in parser that reads tool calls or thinking adds what it reads (spec 7.3). Named in the
            # config, the family's parser decides; detected from the template, the template already said.
            family = self.family
            named = bool(self.config.get("parser") or self.config.get("renderer"))
            if family.parser and family.tools and "tools" not in caps and (named or kind == TemplateKind.JINJA):
                caps.append("tools")
            if family.thinks and "thinking" not in caps and (named or family.renderer):
                caps.append("thinking")
        if self.vision_projector is not None:
            # The runner loads the projector with mtmd next to the model (engine/vision.py). A GGUF that only says
            # vision.block_count, with no projector to encode images, cannot see them here: no "vision" for it.
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

    def prepare(self) -> ResolvedModel:
        """Compute every cached fact (the GGUF header, templates, capabilities, the text layers) now, so that later
        uses on the event loop are attribute reads. Blocking: run it in a worker thread. Errors are left for the
        caller's own use of the property to raise, with the wording its endpoint wants."""
        for name in ("gguf", "vision_projector", "draft_path", "config", "template", "family", "capabilities", "system",
                     "license", "parameters", "messages"):
            try:
                getattr(self, name)
            except Exception:  # a broken model is reported where it is used
                continue
        return self


class ModelCatalog:
    """Name -> ResolvedModel, cached per manifest digest so template parsing and GGUF reads happen once.

    `resolve` and `list` read the store (and a first use reads the GGUF header): they block. On the event loop, use
    `aresolve` and `alist`, which do that work, and compute every cached fact, in a worker thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[tuple[str, str], ResolvedModel] = {}

    def _model(self, stored: StoredModel) -> ResolvedModel:
        key = (stored.name.key, stored.digest)
        model = self._cache.get(key)
        if model is None:
            # setdefault: two threads resolving one new model keep one object (and so one set of cached facts).
            model = self._cache.setdefault(key, ResolvedModel(stored, self.store))
        return model

    def resolve(self, name: str) -> ResolvedModel:
        return self._model(self.store.find(name))

    def list(self) -> list[ResolvedModel]:
        out = [self._model(stored) for stored in self.store.list()]
        # Forget models that are gone (deleted, or re-created under a new digest), so churn does not grow the cache.
        live = {(m.stored.name.key, m.digest) for m in out}
        for key in [k for k in list(self._cache) if k not in live]:  # list(): other threads add keys
            self._cache.pop(key, None)
        return out

    def warm(self, name: str) -> None:
        """Resolve and prepare a model, ignoring every error: a request's own resolve raises them with its wording."""
        try:
            self.resolve(name).prepare()
        except Exception:
            pass

    async def aresolve(self, name: str) -> ResolvedModel:
        return await off_loop(lambda: self.resolve(name).prepare())

    async def alist(self) -> builtins.list[ResolvedModel]:
        return await off_loop(lambda: [m.prepare() for m in self.list()])
