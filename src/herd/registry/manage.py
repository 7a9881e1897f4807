"""Blob uploads, copy and delete: the small store operations behind /api/blobs, /api/copy and /api/delete.

Messages follow Ollama's handlers (spec 5.9-5.11), including which of them quote with Go's %q (double quotes)
and which with single quotes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from herd.errors import BlobNotFound, DigestMismatch, InvalidRequest, LimitExceeded, ModelNotFound, StorageFailed
from herd.registry.models import off_loop
from herd.registry.names import InvalidName, ModelName, is_valid_digest
from herd.registry.store import Store

# Upload bytes are written in slices of this size, each in a registry thread (models.off_loop): large enough that the
# thread hop costs nothing next to the write, small enough that memory stays flat for multi-gigabyte blobs.
_WRITE_SLICE = 4 << 20


def normalize_digest(digest: str) -> str:
    """`sha256:<hex>` with lower-case hex. Ollama accepts `sha256-` and upper case in URLs; the store must not keep
    two files for one blob, so every digest is normalised before it names a path."""
    if not is_valid_digest(digest):
        raise InvalidRequest("invalid digest format")
    return "sha256:" + digest[7:].lower()


def go_quote(text: str) -> str:
    """Go's %q for the strings in Ollama's messages (close enough: JSON escaping of a str)."""
    return json.dumps(text, ensure_ascii=False)


class ModelManager:
    def __init__(self, store: Store) -> None:
        self.store = store

    # ---- blobs (spec 5.9) ------------------------------------------------------------------------------------
    def check_blob(self, digest: str) -> None:
        digest = normalize_digest(digest)
        if not self.store.has_blob(digest):
            raise BlobNotFound(f"blob {go_quote(digest)} not found")

    def has_blob(self, digest: str) -> bool:
        return self.store.has_blob(normalize_digest(digest))

    async def receive_blob(self, digest: str, body: AsyncIterator[bytes], limit: int | None = None) -> bool:
        """Store an uploaded blob; True if it was created, False if the store already had it (the body is then
        not read, as in Ollama, which answers 200 at once). The bytes go to a temporary file in the blobs folder
        and are renamed into place only once their sha256 matches, so a half or wrong upload is never a blob."""
        digest = normalize_digest(digest)
        target = self.store.blob_path(digest)
        if target.exists():
            return False
        try:
            fd, tmp_name = tempfile.mkstemp(dir=self.store.blobs, prefix=".tmp-upload-")
        except OSError as exc:
            raise StorageFailed(f"cannot write blob: {exc.strerror or exc}") from None
        tmp = Path(tmp_name)
        hasher = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as f:
                buf = bytearray()
                received = 0
                async for chunk in body:
                    received += len(chunk)
                    if limit is not None and received > limit:
                        raise LimitExceeded(f"blob too large (limit {limit} bytes)")
                    buf += chunk
                    if len(buf) >= _WRITE_SLICE:
                        await off_loop(_write_and_hash, f, hasher, bytes(buf))
                        buf.clear()
                if buf:
                    await off_loop(_write_and_hash, f, hasher, bytes(buf))
                await off_loop(os.fsync, f.fileno())
            got = "sha256:" + hasher.hexdigest()
            if got != digest:
                raise DigestMismatch(f"digest mismatch, expected {go_quote(digest)}, got {go_quote(got)}")
            os.replace(tmp, target)
            return True
        except OSError as exc:
            raise StorageFailed(f"cannot write blob: {exc.strerror or exc}") from None
        finally:
            # In a thread: after a mismatch or a cut upload the file may be gigabytes, and unlinking it takes a while.
            await off_loop(tmp.unlink, missing_ok=True)

    # ---- copy (spec 5.10) --------------------------------------------------------------------------------
    def copy(self, source: str, destination: str) -> None:
        try:
            ModelName.parse(source)
        except InvalidName:
            raise InvalidRequest(f"source {go_quote(source)} is invalid") from None
        try:
            dest = ModelName.parse(destination)
        except InvalidName:
            raise InvalidRequest(f"destination {go_quote(destination)} is invalid") from None
        try:
            self.store.copy(source, dest)
        except ModelNotFound:
            raise ModelNotFound(f"model {go_quote(source)} not found") from None
        except OSError as exc:
            raise StorageFailed(f"cannot write manifest: {exc.strerror or exc}") from None

    # ---- delete (spec 5.11) ------------------------------------------------------------------------------
    def delete(self, name: str) -> None:
        """Remove the manifest, then every blob no other manifest names (Store.delete prunes), so layers shared
        with another model survive."""
        try:
            ModelName.parse(name)
        except InvalidName:
            raise InvalidRequest(f"name {go_quote(name)} is invalid") from None
        try:
            self.store.delete(name)
        except OSError as exc:
            raise StorageFailed(f"cannot delete model: {exc.strerror or exc}") from None


def _write_and_hash(f: BinaryIO, hasher: hashlib._Hash, data: bytes) -> None:
    f.write(data)
    hasher.update(data)
