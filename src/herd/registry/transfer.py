"""Pull and push over the OCI/Docker registry protocol that Ollama's registry and Hugging Face speak (spec 5.12a).

Pull: manifest, then every blob the store lacks, then the manifest is written last, so a model is listed only once
all its blobs are in place. A blob downloads into `blobs/sha256-<hex>-partial`; a dropped connection continues
from the last byte on disk with a `Range` request, within the same pull (a few retries while bytes keep coming) and
across pulls (the partial file stays). The sha256 is computed while the bytes arrive (the resumed prefix is hashed
from disk) and checked before the partial file is renamed into the store; a mismatch deletes the partial file.

Push: each blob the registry lacks goes up through `POST .../blobs/uploads/`, `PATCH` slices with `Content-Range`,
and `PUT ?digest=`; then the manifest.

Both run as blocking generators (one short step per yield) that `progress.iterate_in_thread` drives from the server.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from herd import __version__
from herd.errors import InvalidRequest, RegistryError, StorageFailed
from herd.registry.manage import normalize_digest
from herd.registry.names import ModelName, blob_filename
from herd.registry.progress import Progress, check_cancel
from herd.registry.store import MANIFEST_MEDIA_TYPE, Layer, Manifest, Store

_MANIFEST_LIMIT = 4 << 20  # a manifest is a few hundred bytes; refuse to buffer a hostile endless body
_READ_CHUNK = 1 << 20
_UPLOAD_SLICE = 16 << 20  # one PATCH per slice: progress lines per slice, bounded memory
_PROGRESS_INTERVAL = 0.1  # seconds between progress lines of one blob (the last byte always gets one)
_AUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Repository:
    """Where a model name lives: `[scheme://]host/namespace/model:tag` -> `scheme://host/v2/namespace/model/...`."""

    base: str
    host: str
    path: str
    tag: str

    @classmethod
    def of(cls, name: ModelName, insecure: bool) -> Repository:
        scheme = (name.scheme or ("http" if insecure else "https")).lower()
        if scheme not in ("http", "https"):
            raise InvalidRequest(f"unsupported scheme {scheme!r}: use https, or http with insecure")
        return cls(f"{scheme}://{name.host}", name.host, f"{name.namespace}/{name.model}", name.tag)

    def url(self, *parts: str) -> str:
        return f"{self.base}/v2/{self.path}/" + "/".join(parts)


class _Partial:
    """The partial file of one blob being downloaded, with the running sha256 of everything in it."""

    def __init__(self, f: BinaryIO, hasher: hashlib._Hash, offset: int) -> None:
        self.file = f
        self.hasher = hasher
        self.offset = offset

    def append(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.hasher.update(chunk)
        self.offset += len(chunk)

    def restart(self) -> None:
        self.file.truncate(0)  # opened for append: the next write lands at the new end, byte 0
        self.hasher = hashlib.sha256()
        self.offset = 0


class _Retry(Exception):
    """A failure worth retrying: the connection dropped or the registry answered 5xx."""


class _Registry:
    """One registry session: requests with a Bearer token once a 401 challenge asked for one."""

    def __init__(self, http: httpx.Client, repo: Repository) -> None:
        self.http = http
        self.repo = repo
        self.token: str | None = None

    @contextmanager
    def open(self, method: str, url: str, headers: dict[str, str] | None = None,
             content: bytes | None = None) -> Iterator[httpx.Response]:
        """A streamed request. A 401 with `WWW-Authenticate: Bearer realm=...` gets a token from the realm and is
        retried once (public models need none). The token goes only to the registry's own host, never to the
        storage host a blob redirect points at (httpx also drops it on a cross-origin redirect)."""
        for attempt in (0, 1):
            sent = dict(headers or {})
            if self.token and httpx.URL(url).host == httpx.URL(self.repo.base).host:
                sent["Authorization"] = f"Bearer {self.token}"
            request = self.http.build_request(method, url, headers=sent, content=content)
            response = self.http.send(request, stream=True)
            try:
                if response.status_code == 401 and attempt == 0 and self._authenticate(response):
                    continue
                yield response
                return
            finally:
                response.close()

    def _authenticate(self, response: httpx.Response) -> bool:
        challenge = response.headers.get("www-authenticate", "")
        if not challenge.lower().startswith("bearer "):
            return False
        params = dict(_AUTH_PARAM.findall(challenge))
        realm = params.pop("realm", "")
        if not realm.startswith(("https://", "http://")):
            return False
        try:
            reply = self.http.get(realm, params=params)
            doc = reply.json() if reply.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return False
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            return False
        self.token = token
        return True


def registry_error_text(response: httpx.Response) -> str:
    """`<status> <reason>: <first registry error message>`, from the registry's `{"errors":[...]}` if it sent one."""
    try:
        response.read()
        doc = response.json()
        errors = doc.get("errors") if isinstance(doc, dict) else None
        detail = str(errors[0].get("message") or errors[0].get("code")) if errors else ""
    except (ValueError, AttributeError, IndexError, httpx.HTTPError):
        detail = ""
    text = f"{response.status_code} {response.reason_phrase}".strip()
    return f"{text}: {detail[:200]}" if detail else text


def _parse_manifest(raw: bytes) -> Manifest:
    """A registry's manifest, with every digest checked and normalised: a digest names a file in the store, so a
    hostile registry must not be able to point one outside it."""
    try:
        manifest = Manifest.from_bytes(raw)

        def clean(layer: Layer) -> Layer:
            if layer.size < 0:
                raise ValueError("negative size")
            return Layer(layer.media_type, normalize_digest(layer.digest), layer.size)

        return Manifest(config=clean(manifest.config), layers=tuple(clean(x) for x in manifest.layers))
    except (ValueError, KeyError, TypeError, AttributeError, InvalidRequest):
        raise RegistryError("pull model manifest: invalid manifest") from None


class Transfers:
    def __init__(self, store: Store, retries: int = 4, backoff_s: float = 0.1, timeout_s: float = 60.0) -> None:
        self.store = store
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _client(self) -> httpx.Client:
        return httpx.Client(follow_redirects=True, timeout=httpx.Timeout(self.timeout_s, connect=15.0),
                            headers={"User-Agent": f"herd/{__version__} (ollama compatible)"})

    @contextmanager
    def _blob_lock(self, digest: str, cancel: threading.Event | None) -> Iterator[None]:
        """Two pulls of one blob (two models sharing a layer, or the same pull twice) must not append to the same
        partial file: the second waits, then finds the blob in the store."""
        with self._locks_guard:
            lock = self._locks.setdefault(digest, threading.Lock())
        while not lock.acquire(timeout=0.2):
            check_cancel(cancel)
        try:
            yield
        finally:
            lock.release()

    # ---- pull ------------------------------------------------------------------------------------------------
    def pull(self, text: str, insecure: bool = False, cancel: threading.Event | None = None) -> Iterator[Progress]:
        name = ModelName.parse(text)  # 400 invalid model name, before the first line
        repo = Repository.of(name, insecure)
        yield Progress("pulling manifest")
        try:
            with self._client() as http:
                registry = _Registry(http, repo)
                manifest = _parse_manifest(self._fetch_manifest(registry))
                blobs = (*manifest.layers, manifest.config)
                with self.store.pinned(x.digest for x in blobs):  # no manifest names them until the last step
                    for layer in blobs:
                        yield from self._pull_blob(registry, layer, cancel)
                    yield Progress("verifying sha256 digest")  # each blob was checked as it completed
                    yield Progress("writing manifest")
                    self.store.write_manifest(name, manifest)
        except httpx.HTTPError as exc:  # transport errors are retried in _download; this is anything else
            raise RegistryError(f"pull: {_describe(exc)}") from None
        except OSError as exc:
            raise StorageFailed(f"cannot write to the model store: {exc.strerror or exc}") from None
        yield Progress("success")

    def _fetch_manifest(self, registry: _Registry) -> bytes:
        repo = registry.repo
        try:
            with registry.open("GET", repo.url("manifests", repo.tag),
                               headers={"Accept": MANIFEST_MEDIA_TYPE}) as response:
                if response.status_code == 404:
                    raise RegistryError("pull model manifest: file does not exist")
                if response.status_code >= 400:
                    raise RegistryError(f"pull model manifest: {registry_error_text(response)}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > _MANIFEST_LIMIT:
                        raise RegistryError("pull model manifest: manifest is too large")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise RegistryError(f"pull model manifest: {_describe(exc)}") from None

    def _pull_blob(self, registry: _Registry, layer: Layer, cancel: threading.Event | None) -> Iterator[Progress]:
        digest = layer.digest
        status = f"pulling {digest[7:19]}"
        total = layer.size or None
        if self.store.has_blob(digest):
            yield Progress(status, digest, total, total)
            return
        with self._blob_lock(digest, cancel):
            if self.store.has_blob(digest):
                yield Progress(status, digest, total, total)
                return
            partial = self.store.blobs / (blob_filename(digest) + "-partial")
            hasher = hashlib.sha256()
            offset = 0
            if partial.exists():
                offset = partial.stat().st_size
                if total is not None and offset > total:
                    partial.unlink()  # longer than the blob: not a prefix of it
                    offset = 0
                else:
                    _hash_prefix(partial, hasher, cancel)
            yield Progress(status, digest, total, offset or None)
            try:
                with open(partial, "ab") as f:
                    state = _Partial(f, hasher, offset)
                    yield from self._download(registry, layer, state, status, cancel)
                    f.flush()
                    os.fsync(f.fileno())
                    size = state.offset
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    # A full disk: a partial file that cannot grow is no use to resume, and it holds the space
                    # every other write needs.
                    partial.unlink(missing_ok=True)
                    raise StorageFailed(f"cannot write to the model store: {os.strerror(exc.errno)}") from None
                raise
            got = "sha256:" + state.hasher.hexdigest()
            if got != digest or (total is not None and size != total):
                partial.unlink(missing_ok=True)
                raise RegistryError(f"digest mismatch, file must be downloaded again: want {digest}, got {got}")
            os.replace(partial, self.store.blob_path(digest))

    def _download(self, registry: _Registry, layer: Layer, state: _Partial, status: str,
                  cancel: threading.Event | None) -> Iterator[Progress]:
        """Append the rest of the blob from `state.offset`, resuming with `Range` after a dropped connection.
        Gives up after `retries` attempts in a row that brought no new byte."""
        digest = layer.digest
        total = layer.size or None
        url = registry.repo.url("blobs", digest)
        failures = 0
        last_line = time.monotonic()
        while True:
            check_cancel(cancel)
            start = state.offset
            error: str | None = None
            finished = False
            try:
                # identity: offsets and the digest are over the stored bytes, not a compressed transfer of them.
                headers = {"Accept-Encoding": "identity"}
                if state.offset:
                    headers["Range"] = f"bytes={state.offset}-"
                # The registry answers 307 to its storage host (or 200 with the body); httpx follows, keeping Range.
                with registry.open("GET", url, headers=headers) as response:
                    code = response.status_code
                    if code == 416 and state.offset and total is None:
                        finished = True  # nothing after the offset: the blob is complete
                    elif code == 416:
                        state.restart()  # the partial file is not a prefix the registry can continue
                        raise _Retry(registry_error_text(response))
                    elif code >= 500 or code == 429:
                        raise _Retry(registry_error_text(response))
                    elif code >= 400:
                        raise RegistryError(f"pull blob {digest[7:19]}: {registry_error_text(response)}")
                    else:
                        if state.offset and code != 206:
                            state.restart()  # the server ignored Range and sends the whole blob
                        elif code == 206 and _range_start(response) not in (None, state.offset):
                            raise RegistryError(f"pull blob {digest[7:19]}: registry sent the wrong range")
                        if total is None and response.headers.get("content-length", "").isdigit():
                            total = state.offset + int(response.headers["content-length"])
                        # No chunk_size: a buffered chunker would lose what arrived before a dropped connection.
                        for chunk in response.iter_bytes():
                            check_cancel(cancel)
                            state.append(chunk)
                            if total is not None and state.offset > total:
                                return  # more bytes than the manifest says: the caller reports the mismatch
                            if time.monotonic() - last_line >= _PROGRESS_INTERVAL:
                                last_line = time.monotonic()
                                yield Progress(status, digest, total, state.offset)
                        finished = total is None or state.offset >= total
            except _Retry as exc:
                error = str(exc)
            except httpx.TransportError as exc:  # dropped connection, timeout, refused: resume from the offset
                error = _describe(exc)
            if finished:
                yield Progress(status, digest, total, state.offset)
                return
            failures = 0 if state.offset > start else failures + 1
            if failures > self.retries:
                # The partial file stays: the next pull continues where this one stopped.
                raise RegistryError(f"pull blob {digest[7:19]}: {error or 'download incomplete'}")
            state.file.flush()
            _sleep(self.backoff_s * (2 ** max(failures - 1, 0)), cancel)

    # ---- push ------------------------------------------------------------------------------------------------
    def push(self, text: str, insecure: bool = False, cancel: threading.Event | None = None) -> Iterator[Progress]:
        name = ModelName.parse(text)
        stored = self.store.find(text)  # 404 model 'NAME' not found
        target = ModelName(stored.name.host, stored.name.namespace, stored.name.model, stored.name.tag,
                           scheme=name.scheme)
        repo = Repository.of(target, insecure)
        yield Progress("retrieving manifest")
        try:
            with self._client() as http:
                registry = _Registry(http, repo)
                for layer in (*stored.manifest.layers, stored.manifest.config):
                    yield from self._push_blob(registry, layer, cancel)
                yield Progress("pushing manifest")
                with registry.open("PUT", repo.url("manifests", repo.tag), content=stored.manifest.to_bytes(),
                                   headers={"Content-Type": MANIFEST_MEDIA_TYPE}) as response:
                    if response.status_code >= 400:
                        raise RegistryError(f"push manifest: {registry_error_text(response)}")
        except httpx.HTTPError as exc:
            raise RegistryError(f"push: {_describe(exc)}") from None
        except OSError as exc:
            raise StorageFailed(f"cannot read from the model store: {exc.strerror or exc}") from None
        yield Progress("success")

    def _push_blob(self, registry: _Registry, layer: Layer, cancel: threading.Event | None) -> Iterator[Progress]:
        digest = normalize_digest(layer.digest)
        short = digest[7:19]
        status = f"pushing {short}"
        path = self.store.blob_path(digest)
        if not path.exists():
            raise RegistryError(f"push blob {short}: the blob is missing from the local store")
        size = path.stat().st_size
        repo = registry.repo
        with registry.open("HEAD", repo.url("blobs", digest)) as response:
            if response.status_code == 200:
                yield Progress(status, digest, size, size)  # the registry already has it
                return
        yield Progress(status, digest, size, 0)
        with registry.open("POST", repo.url("blobs", "uploads") + "/", content=b"") as response:
            if response.status_code == 201:
                yield Progress(status, digest, size, size)  # mounted from another repository
                return
            if response.status_code != 202:
                raise RegistryError(f"push blob {short}: {registry_error_text(response)}")
            location = _upload_location(response)
        sent = 0
        with open(path, "rb") as f:
            while sent < size:
                check_cancel(cancel)
                data = f.read(_UPLOAD_SLICE)
                if not data:
                    break
                headers = {"Content-Type": "application/octet-stream",
                           "Content-Range": f"{sent}-{sent + len(data) - 1}"}
                with registry.open("PATCH", location, headers=headers, content=data) as response:
                    if response.status_code >= 300:
                        raise RegistryError(f"push blob {short}: {registry_error_text(response)}")
                    location = _upload_location(response, location)
                sent += len(data)
                yield Progress(status, digest, size, sent)
        finish = str(httpx.URL(location).copy_merge_params({"digest": digest}))
        with registry.open("PUT", finish, content=b"") as response:
            if response.status_code >= 300:
                raise RegistryError(f"push blob {short}: {registry_error_text(response)}")


def _upload_location(response: httpx.Response, current: str | None = None) -> str:
    """The next upload URL (`Docker-Upload-Location` or `Location`, possibly relative); keep `current` if none."""
    location = response.headers.get("docker-upload-location") or response.headers.get("location")
    if not location:
        if current is None:
            raise RegistryError("push blob: the registry gave no upload location")
        return current
    return str(response.url.join(location))


def _range_start(response: httpx.Response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("content-range", ""))
    return int(match.group(1)) if match else None


def _hash_prefix(path: Path, hasher: hashlib._Hash, cancel: threading.Event | None) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_READ_CHUNK), b""):
            check_cancel(cancel)
            hasher.update(chunk)


def _sleep(seconds: float, cancel: threading.Event | None) -> None:
    if cancel is not None:
        if cancel.wait(seconds):
            check_cancel(cancel)
    else:
        time.sleep(seconds)


def _describe(exc: Exception) -> str:
    text = str(exc)
    return text if text else type(exc).__name__

