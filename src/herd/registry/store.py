"""The model store, in Ollama's on-disk layout: `manifests/<host>/<ns>/<model>/<tag>` and `blobs/sha256-<hex>`.

Every write goes to a temporary file in the same folder and is renamed into place, so a crash leaves either the old
file or the new one. Manifests are written last, so a model is only listed once all its blobs exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from herd.errors import InvalidRequest, ModelNotFound
from herd.registry.names import ModelName, blob_filename, is_valid_digest

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_PREFIX = "application/vnd.ollama.image."


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int

    @property
    def kind(self) -> str:
        """model, template, system, params, messages, license, projector, adapter."""
        return self.media_type.removeprefix(LAYER_PREFIX)

    def to_json(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    config: Layer
    layers: tuple[Layer, ...]

    def to_bytes(self) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        doc = json.loads(data)
        cfg = doc["config"]
        return cls(
            config=Layer(cfg.get("mediaType", CONFIG_MEDIA_TYPE), cfg["digest"], int(cfg.get("size", 0))),
            layers=tuple(Layer(x["mediaType"], x["digest"], int(x.get("size", 0))) for x in doc.get("layers", [])),
        )

    def layer(self, kind: str) -> Layer | None:
        for layer in self.layers:
            if layer.kind == kind:
                return layer
        return None

    @property
    def total_size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class StoredModel:
    name: ModelName
    manifest: Manifest
    digest: str  # sha256 hex of the manifest bytes
    modified_at: datetime


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.manifests = self.root / "manifests"
        self.blobs = self.root / "blobs"
        self._lock = threading.RLock()
        self._aliases: dict[str, ModelName] = {}
        self._pinned: Counter[str] = Counter()  # blob file names that prune must keep (see pinned())
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.blobs.mkdir(parents=True, exist_ok=True)

    # ---- blobs -------------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        if not is_valid_digest(digest):
            raise InvalidRequest("invalid digest format")
        return self.blobs / blob_filename(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def write_blob(self, data: bytes) -> Layer:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            atomic_write(path, data)
        return Layer("", digest, len(data))

    def add_blob_file(self, src: Path, digest: str | None = None, link: bool = False) -> tuple[str, int]:
        """Put a file into the store by content; `link` makes a symlink instead of a copy (used for the default
        model, which is read in place from site-packages)."""
        digest = digest or "sha256:" + sha256_file(src)
        path = self.blob_path(digest)
        size = src.stat().st_size
        with self._lock:
            if path.exists():
                return digest, size
            fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".tmp-")
            os.close(fd)
            try:
                if link:
                    os.unlink(tmp)
                    os.symlink(src.resolve(), tmp)
                else:
                    shutil.copyfile(src, tmp)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return digest, size

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    # ---- manifests ---------------------------------------------------------------------------------------
    def _manifest_file(self, name: ModelName) -> Path:
        path = self.manifests / name.manifest_relpath
        # Names are validated, but check containment anyway: no request may address a path outside the store.
        if not path.resolve().is_relative_to(self.manifests.resolve()):
            raise InvalidRequest("invalid model name")
        return path

    def add_alias(self, alias: str, target: ModelName) -> None:
        self._aliases[ModelName.parse(alias).key] = target

    def _iter_manifest_files(self) -> Iterator[Path]:
        root = self.manifests.resolve()
        # os.walk, not rglob: listing runs in worker threads now, beside a delete that removes folders, and os.walk
        # skips a folder that vanishes under it where rglob raises FileNotFoundError.
        for folder, _, files in os.walk(self.manifests):
            for file_name in files:
                path = Path(folder) / file_name
                if file_name.startswith(".tmp-") or not path.is_file():
                    continue
                # A symlink that leads out of the store is not a model: listing it would read a file outside the
                # store, and find() refuses it anyway (_manifest_file).
                if path.is_symlink() and not path.resolve().is_relative_to(root):
                    continue
                yield path

    def list(self) -> list[StoredModel]:
        models = []
        for path in self._iter_manifest_files():
            rel = path.relative_to(self.manifests).parts
            if len(rel) != 4:
                continue
            try:
                name = ModelName(host=rel[0], namespace=rel[1], model=rel[2], tag=rel[3])
                models.append(self._load(name, path))
            except (ValueError, KeyError, OSError, InvalidRequest):
                continue  # a foreign or half-written file is not a model
        models.sort(key=lambda m: m.modified_at, reverse=True)
        return models

    def _load(self, name: ModelName, path: Path) -> StoredModel:
        data = path.read_bytes()
        manifest = Manifest.from_bytes(data)
        mtime = datetime.fromtimestamp(path.stat().st_mtime).astimezone()
        return StoredModel(name, manifest, hashlib.sha256(data).hexdigest(), mtime)

    def find(self, text: str) -> StoredModel:
        """Case-insensitive lookup; raises ModelNotFound (the caller words the message per endpoint)."""
        name = ModelName.parse(text)
        path = self._manifest_file(name)
        if path.exists():
            return self._load(name, path)
        for model in self.list():
            if model.name.key == name.key:
                return model
        target = self._aliases.get(name.key)
        if target is not None and target.key != name.key:
            return self.find(target.fully_qualified)
        raise ModelNotFound(f"model '{text}' not found")

    def write_manifest(self, name: ModelName, manifest: Manifest) -> None:
        for layer in (manifest.config, *manifest.layers):
            if not self.has_blob(layer.digest):
                raise InvalidRequest(f"blob {layer.digest} is missing")
        with self._lock:
            existing = self._find_exact_case(name)
            atomic_write(self._manifest_file(existing or name), manifest.to_bytes())

    def _find_exact_case(self, name: ModelName) -> ModelName | None:
        for model in self.list():
            if model.name.key == name.key:
                return model.name
        return None

    def delete(self, text: str) -> None:
        with self._lock:
            model = self.find(text)
            self._manifest_file(model.name).unlink()
            self._prune_dirs(self._manifest_file(model.name).parent)
            # Only this model's own layers, as Ollama's delete does: a blob uploaded through /api/blobs for a
            # create that has not run yet is named by no manifest, and must survive a delete of another model.
            self.prune_blobs({layer.digest for layer in (model.manifest.config, *model.manifest.layers)})

    def _prune_dirs(self, folder: Path) -> None:
        while folder != self.manifests and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent

    @contextlib.contextmanager
    def pinned(self, digests: Iterable[str]) -> Iterator[None]:
        """Keep these blobs through any prune while a pull or create is writing the model that will name them:
        until its manifest exists, nothing references them, and a concurrent delete would otherwise take them."""
        names = [blob_filename(d) for d in digests]
        with self._lock:
            self._pinned.update(names)
        try:
            yield
        finally:
            with self._lock:
                self._pinned.subtract(names)
                self._pinned += Counter()  # drop the zero counts

    def prune_blobs(self, only: set[str] | None = None) -> None:
        """Remove blobs no manifest names (of `only`, when given: those digests): shared blobs survive deleting
        one of their models."""
        with self._lock:
            used = set()
            for model in self.list():
                for layer in (model.manifest.config, *model.manifest.layers):
                    used.add(blob_filename(layer.digest))
            wanted = None if only is None else {blob_filename(d) for d in only}
            for blob in self.blobs.iterdir():
                if (wanted is not None and blob.name not in wanted) or blob.name in used or self._pinned[blob.name] > 0:
                    continue
                # `sha256-<hex>-partial` is an interrupted pull kept for resuming (registry/transfer.py), not a blob.
                if blob.name.startswith("sha256-") and not blob.name.endswith("-partial"):
                    blob.unlink(missing_ok=True)

    def copy(self, source: str, destination: ModelName) -> None:
        model = self.find(source)
        self.write_manifest(destination, model.manifest)

    def config_of(self, model: StoredModel) -> dict[str, object]:
        try:
            doc = json.loads(self.read_blob(model.manifest.config.digest))
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError, InvalidRequest):
            return {}
