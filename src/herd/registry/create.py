"""`/api/create`: a new model from an existing one, from uploaded GGUF blobs, or from a GGUF blob already in the
store, with TEMPLATE, SYSTEM, PARAMETER, MESSAGE and LICENSE layers on top (spec 5.8), and a DRAFT model beside
it (registry/draft.py).

No request reads a file outside the model store: a `from` (or Modelfile `FROM`) that is a path must name one of the
store's blobs, and `files` name blobs by digest. Local files go up through `/api/blobs` first, which is what
`herd create` and `ollama create` do; otherwise a request could make the server read any file it can (and then
push it to a registry).

Matches Ollama's `server/create.go`: every check that can fail on the request runs before the first status line, so
it gets a real status code; layers that replace a base layer (template, system, params, messages) are removed and
appended, LICENSE layers are appended, parameters merge over the base model's, and the manifest is written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

from herd.errors import HerdError, InvalidRequest, NotImplementedFeature, StorageFailed, UnsafePath
from herd.families import BY_NAME
from herd.options import BOOL_OPTIONS, FLOAT_OPTIONS, INT_OPTIONS, LIST_OPTIONS, STRING_OPTIONS, validate_options
from herd.registry.default_model import config_blob
from herd.registry.draft import with_draft
from herd.registry.gguf_info import GGUF_MAGIC, GGUFInfo, read_gguf_info
from herd.registry.manage import go_quote, normalize_digest
from herd.registry.modelfile import MESSAGE_ROLES, parse_modelfile, typed_parameter
from herd.registry.models import is_jinja
from herd.registry.names import ModelName, is_valid_name
from herd.registry.progress import Progress, check_cancel
from herd.registry.store import CONFIG_MEDIA_TYPE, LAYER_PREFIX, Layer, Manifest, Store

# Layers a new value replaces (Ollama's removeLayer + append). LICENSE is not here: Ollama appends licenses.
_REPLACED = ("template", "system", "params", "messages")

# Ollama's RENDERER and PARSER name built-in code per model family (qwen3-coder, harmony, ...); herd honours the
# families of families.py by those names. Any other value is refused rather than stored and ignored, which would
# give a model that silently behaves otherwise.
KNOWN_RENDERERS: frozenset[str] = frozenset(BY_NAME)
KNOWN_PARSERS: frozenset[str] = frozenset(BY_NAME)

_BLOB_NAME = re.compile(r"sha256-[0-9a-f]{64}")
OUTSIDE_STORE = ('"from" names a file outside the model store; upload the file with POST /api/blobs/<digest> and '
                 'name it in "files" (herd create does this)')


@dataclass(frozen=True)
class CreateSpec:
    """A create request, already decoded from the wire (schemas/ollama_models.py)."""

    model: str
    from_: str | None = None
    files: tuple[tuple[str, str], ...] = ()
    adapters: tuple[tuple[str, str], ...] = ()
    template: str | None = None
    system: str | None = None
    license: tuple[str, ...] = ()
    parameters: Mapping[str, object] = field(default_factory=dict)
    messages: tuple[tuple[str, str], ...] = ()
    quantize: str | None = None
    renderer: str | None = None
    parser: str | None = None
    # DRAFT: a model name or a store blob path (`draft`, as `from`), or uploaded blobs (Ollama's `draft_files`)
    draft: str | None = None
    draft_files: tuple[tuple[str, str], ...] = ()
    modelfile: str | None = None  # legacy clients send the Modelfile text instead of the fields


@dataclass(frozen=True)
class _Base:
    """What the new model starts from: its layers and config, and the GGUF file to read if it is new."""

    layers: tuple[Layer, ...]
    config: Layer | None  # None: build it from `gguf_path`
    gguf_path: Path | None = None


def typed_parameters(params: Mapping[str, object]) -> dict[str, object]:
    """PARAMETER values typed like `options` (spec 3). Strings are accepted and converted, since a Modelfile's
    values are text; `stop` may be one string or a list and is stored as a list, as Ollama does."""
    out: dict[str, object] = {}
    for key, value in params.items():
        if value is None:
            continue
        if key == "stop":
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str) for v in values):
                raise InvalidRequest('option "stop" must be of an array of strings')
            if values:
                out["stop"] = list(values)
        elif key in LIST_OPTIONS and isinstance(value, list):  # kept as the Modelfile's text form, `a,b`
            out[key] = typed_parameter(key, ",".join(str(v) for v in value))
        elif key in INT_OPTIONS or key in FLOAT_OPTIONS or key in BOOL_OPTIONS or key in STRING_OPTIONS or \
                key in LIST_OPTIONS:
            out[key] = typed_parameter(key, value) if isinstance(value, str) else validate_options({key: value})[key]
        else:
            raise InvalidRequest(f"unknown parameter '{key}'")
    return out


def check_template(source: str) -> None:
    """Refuse a template that does not parse (400 `template error: ...`), Jinja or Go (`is_jinja` decides)."""
    if is_jinja(source):
        from herd.prompt.jinja import check_template as check_jinja

        check_jinja(source)  # raises InvalidRequest("template error: ...")
        return
    try:
        from herd.prompt import gotemplate  # type: ignore[attr-defined]
    except ImportError:
        return  # the Go template engine is not installed in this build; it will be checked when rendered
    try:
        gotemplate.GoTemplate(source)
    except Exception as exc:
        message = exc.message if isinstance(exc, HerdError) else str(exc)
        raise InvalidRequest("template error: " + message.removeprefix("template error: ")) from None


def _checked_messages(messages: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    for role, _ in messages:
        if role not in MESSAGE_ROLES:
            raise InvalidRequest('message role must be one of "system", "user", "assistant" or "tool"')
    return tuple(messages)


def _is_relative_file_name(name: str) -> bool:
    """Ollama's check for `files` keys: no absolute path and no `..`, in either path flavour."""
    for flavour in (PurePosixPath(name), PureWindowsPath(name)):
        if flavour.is_absolute() or flavour.anchor or ".." in flavour.parts:
            return False
    return bool(name)


def _looks_like_path(text: str) -> bool:
    """`from` names a server file when it is written like one (`./x.gguf`, `/srv/x.gguf`, `~/x.gguf`) or is not a
    model name at all; anything that parses as a name is a model, as in Ollama."""
    return text.startswith(("/", "./", "../", "~")) or text.lower().endswith(".gguf") or not is_valid_name(text)


def _gguf_header(path: Path) -> GGUFInfo:
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise InvalidRequest("supplied file was not in GGUF format")
    return read_gguf_info(path)


class ModelCreator:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, spec: CreateSpec, cancel: threading.Event | None = None) -> Iterator[Progress]:
        """Validate everything, then yield the status lines while layers and the manifest are written."""
        spec = _merge_legacy_modelfile(spec)
        name = ModelName.parse(spec.model)  # 400 invalid model name
        if spec.quantize:
            raise InvalidRequest(
                f"quantization to {spec.quantize!r} is not supported by herd: create from a GGUF file that is "
                "already quantized"
            )
        if spec.adapters:
            raise InvalidRequest("adapters (LoRA) are not supported by herd")
        _check_renderer_parser(spec)
        template = spec.template or None
        if template is not None:
            check_template(template)
        params = typed_parameters(spec.parameters)
        messages = _checked_messages(spec.messages)
        licenses = tuple(text for text in spec.license if text)

        if spec.from_:
            base = self._base_from(spec.from_)
        elif spec.files:
            base = self._base_from_files(spec.files)
        else:
            raise InvalidRequest("neither 'from' or 'files' was specified")
        if spec.draft or spec.draft_files:
            base = self._with_draft(base, spec)

        try:
            with contextlib.ExitStack() as pins:
                yield from self._write(name, base, spec, template, params, messages, licenses, cancel, pins)
        except OSError as exc:
            raise StorageFailed(f"cannot write model: {exc.strerror or exc}") from None

    # ---- the base model ------------------------------------------------------------------------------------
    def _base_from(self, text: str) -> _Base:
        if _looks_like_path(text):
            return self._base_from_path(text)
        stored = self.store.find(text)  # 404 model 'NAME' not found
        return _Base(layers=stored.manifest.layers, config=stored.manifest.config)

    def _base_from_path(self, text: str) -> _Base:
        """A `from` written as a path (`FROM /models/blobs/sha256-...`, what `show --modelfile` prints). Only a blob of
        this store is taken; the path is judged before anything is opened, so a request learns nothing about other
        files, not even whether they exist."""
        digest = self._blob_digest_of(text)
        path = self.store.blob_path(digest)
        if not path.exists():
            raise InvalidRequest(f"blob {go_quote(digest)} not found; upload it with POST /api/blobs/{digest}")
        try:
            _gguf_header(path)
            size = path.stat().st_size
        except OSError as exc:
            raise InvalidRequest(f"cannot read {text}: {exc.strerror or exc}") from None
        return _Base(layers=(Layer(LAYER_PREFIX + "model", digest, size),), config=None, gguf_path=path)

    def _blob_digest_of(self, text: str) -> str:
        """The digest a path names when it is `<store>/blobs/sha256-<hex>`, else UnsafePath. The folder is compared
        resolved (the store may be reached through a symlink); the file name must be a blob's, and is not resolved:
        the default model's blob is the store's own symlink to the installed package."""
        if "\0" in text:
            raise UnsafePath(OUTSIDE_STORE)
        path = os.path.abspath(os.path.expanduser(text))  # lexical: `..` is folded before the folder is compared
        folder, name = os.path.split(path)
        if not _BLOB_NAME.fullmatch(name) or os.path.realpath(folder) != os.path.realpath(self.store.blobs):
            raise UnsafePath(OUTSIDE_STORE)
        return "sha256:" + name[len("sha256-"):]

    def _base_from_files(self, files: Sequence[tuple[str, str]]) -> _Base:
        if any(file_name.lower().endswith(".safetensors") for file_name, _ in files):
            return self._base_from_safetensors(files)
        model: Layer | None = None
        projector: Layer | None = None
        for file_name, digest in files:
            if not _is_relative_file_name(file_name):
                raise InvalidRequest("file path must be relative")
            digest = normalize_digest(digest)  # empty or malformed: 400 invalid digest format
            path = self.store.blob_path(digest)
            if not path.exists():
                raise InvalidRequest(f"blob {go_quote(digest)} not found; upload it with POST /api/blobs/{digest}")
            if file_name.lower().endswith((".bin", ".pt", ".pth")):
                raise InvalidRequest("herd creates models from GGUF files and BERT safetensors folders only "
                                     "(convert others with llama.cpp's convert_hf_to_gguf.py first)")
            info = _gguf_header(path)
            layer = Layer(LAYER_PREFIX + "model", digest, path.stat().st_size)
            if info.architecture == "clip":  # a vision projector travels next to the model, as in Ollama
                projector = Layer(LAYER_PREFIX + "projector", digest, layer.size)
            elif model is None:
                model = layer
            else:
                raise InvalidRequest("more than one model GGUF was supplied")
        if model is None:
            raise InvalidRequest("no files provided to convert")
        layers = (model,) if projector is None else (model, projector)
        return _Base(layers=layers, config=None, gguf_path=self.store.blob_path(model.digest))

    def _base_from_safetensors(self, files: Sequence[tuple[str, str]]) -> _Base:
        """A safetensors folder, uploaded file by file under its relative names (as `ollama create` sends it), is
        converted to one GGUF (registry/convert.py: BERT embedding models)."""
        from herd.registry.convert import convert_into_store

        paths: dict[str, Path] = {}
        for file_name, digest in files:
            if not _is_relative_file_name(file_name):
                raise InvalidRequest("file path must be relative")
            digest = normalize_digest(digest)
            path = self.store.blob_path(digest)
            if not path.exists():
                raise InvalidRequest(f"blob {go_quote(digest)} not found; upload it with POST /api/blobs/{digest}")
            paths[PurePosixPath(file_name.replace("\\", "/")).as_posix()] = path
        digest, size = convert_into_store(self.store, paths)
        layer = Layer(LAYER_PREFIX + "model", digest, size)
        return _Base(layers=(layer,), config=None, gguf_path=self.store.blob_path(digest))

    def _with_draft(self, base: _Base, spec: CreateSpec) -> _Base:
        """The draft resolves as a base does (a model, a store blob, uploads); only its GGUF is kept."""
        if spec.draft and spec.draft_files:
            raise InvalidRequest('"draft" and "draft_files" name two drafts; give one')
        source = self._base_from(spec.draft) if spec.draft else self._base_from_files(spec.draft_files)
        named = spec.draft or ", ".join(file_name for file_name, _ in spec.draft_files)
        return replace(base, layers=with_draft(self.store, base.layers, base.gguf_path, source.layers, named))

    # ---- writing ---------------------------------------------------------------------------------------------
    def _write(
        self,
        name: ModelName,
        base: _Base,
        spec: CreateSpec,
        template: str | None,
        params: dict[str, object],
        messages: tuple[tuple[str, str], ...],
        licenses: tuple[str, ...],
        cancel: threading.Event | None,
        pins: contextlib.ExitStack,
    ) -> Iterator[Progress]:
        # Every blob of the new model is pinned before it is written: until the manifest exists nothing names it,
        # and a delete running meanwhile would prune it.
        pins.enter_context(self.store.pinned(x.digest for x in base.layers))
        if base.config is not None:
            pins.enter_context(self.store.pinned([base.config.digest]))
        layers = list(base.layers)
        if base.gguf_path is not None:
            yield Progress("parsing GGUF")

        new_digests: set[str] = set()

        def text_layer(kind: str, data: bytes) -> Layer:
            digest = _digest_of(data)
            pins.enter_context(self.store.pinned([digest]))
            existed = self.store.has_blob(digest)
            blob = self.store.write_blob(data)
            if not existed:
                new_digests.add(blob.digest)
            return Layer(LAYER_PREFIX + kind, blob.digest, blob.size)

        def replace(kind: str, layer: Layer) -> None:
            layers[:] = [x for x in layers if x.kind != kind]
            layers.append(layer)

        if template is not None:
            replace("template", text_layer("template", template.encode()))
        if spec.system:
            replace("system", text_layer("system", spec.system.encode()))
        for text in licenses:
            layers.append(text_layer("license", text.encode()))
        merged = {**self._base_params(layers), **params}
        if params and merged:
            replace("params", text_layer("params", json.dumps(merged, separators=(",", ":")).encode()))
        if messages:
            doc = [{"role": role, "content": content} for role, content in messages]
            replace("messages", text_layer("messages", json.dumps(doc, separators=(",", ":")).encode()))

        config = self._config(base, spec)
        pins.enter_context(self.store.pinned([config.digest]))
        for layer in layers:
            verb = "creating new" if layer.digest in new_digests else "using existing"
            yield Progress(f"{verb} layer {layer.digest}")
        check_cancel(cancel)
        yield Progress("writing manifest")
        self.store.write_manifest(name, Manifest(config=config, layers=tuple(layers)))
        yield Progress("success")

    def _base_params(self, layers: Sequence[Layer]) -> dict[str, object]:
        for layer in layers:
            if layer.kind == "params":
                try:
                    doc = json.loads(self.store.read_blob(layer.digest))
                except (OSError, ValueError):
                    return {}
                return doc if isinstance(doc, dict) else {}
        return {}

    def _config(self, base: _Base, spec: CreateSpec) -> Layer:
        """A new GGUF gets a config like the default model's; a model made from another keeps its config, with a
        requested renderer or parser set in it (Ollama's ConfigV2 fields)."""
        if base.config is None:
            assert base.gguf_path is not None and base.layers
            config = config_blob(self.store, base.gguf_path, base.layers[0].digest)
        else:
            config = base.config
        if not (spec.renderer or spec.parser):
            return config
        try:
            doc = json.loads(self.store.read_blob(config.digest))
        except (OSError, ValueError):
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        if spec.renderer:
            doc["renderer"] = spec.renderer
        if spec.parser:
            doc["parser"] = spec.parser
        blob = self.store.write_blob(json.dumps(doc, separators=(",", ":")).encode())
        return Layer(CONFIG_MEDIA_TYPE, blob.digest, blob.size)


def _check_renderer_parser(spec: CreateSpec) -> None:
    if spec.renderer and spec.renderer.strip().lower() not in KNOWN_RENDERERS:
        raise NotImplementedFeature(f'RENDERER "{spec.renderer}" is not supported by herd (known: '
                                    f"{', '.join(sorted(KNOWN_RENDERERS))})")
    if spec.parser and spec.parser.strip().lower() not in KNOWN_PARSERS:
        raise NotImplementedFeature(f'PARSER "{spec.parser}" is not supported by herd (known: '
                                    f"{', '.join(sorted(KNOWN_PARSERS))})")


def _digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _merge_legacy_modelfile(spec: CreateSpec) -> CreateSpec:
    """Older clients (ollama-python < 0.4, scripts) send `modelfile` text; its instructions fill the fields that the
    request does not set itself."""
    if not spec.modelfile:
        return spec
    mf = parse_modelfile(spec.modelfile)
    params = {**mf.parameter_dict(), **spec.parameters}
    return CreateSpec(
        model=spec.model,
        from_=spec.from_ or (mf.from_ if not spec.files else None),
        files=spec.files,
        adapters=spec.adapters or tuple((a, "") for a in mf.adapters),
        template=spec.template if spec.template is not None else mf.template,
        system=spec.system if spec.system is not None else mf.system,
        license=spec.license or mf.license,
        parameters=params,
        messages=spec.messages or mf.messages,
        quantize=spec.quantize,
        renderer=spec.renderer or mf.renderer,
        parser=spec.parser or mf.parser,
        draft=spec.draft or (mf.draft if not spec.draft_files else None),
        draft_files=spec.draft_files,
    )
