"""A small OCI/Docker registry on loopback for pull and push tests (spec 5.12a), with switchable faults.

It serves manifests and blobs the way registry.ollama.ai does: `GET .../blobs/<digest>` answers 307 to a storage
URL on another host name (`localhost` instead of `127.0.0.1`), and storage honours `Range`. Faults:
- `drop_after` / `drops`: a storage response sends that many bytes and then the connection is cut, `drops` times;
- `fail_after_drop`: once a connection was cut, storage answers 503 (a pull gives up and keeps its partial file);
- `corrupt`: digests whose bytes are served with one byte flipped;
- `ignore_range`: storage answers a `Range` request with 200 and the whole blob, as some servers do;
- `token`: /v2/ requests need `Authorization: Bearer <token>`, got from the realm of a 401 challenge.
Push: `POST .../blobs/uploads/`, `PATCH` with `Content-Range`, `PUT ?digest=`, `PUT .../manifests/<tag>`.
Blobs are linked per repository, as in a real registry, so a push to a new repository uploads every blob.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
_SEND_CHUNK = 64 * 1024

_MANIFEST = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<tag>[^/]+)$")
_UPLOAD = re.compile(r"^/v2/(?P<repo>.+)/blobs/uploads/(?P<id>[^/]*)$")
_BLOB = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_STORAGE = re.compile(r"^/storage/(?P<digest>sha256:[0-9a-f]{64})$")


def write_tiny_gguf(path: Path) -> Path:
    """A valid 3 MB GGUF (a header and one tensor, not a runnable model): quick to pull, push and upload."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(16)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(768 * 1024, dtype=np.float32).reshape(1024, 768))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    auth: str | None = None


@dataclass
class FakeRegistry:
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fake-registry-")))
    blobs: dict[str, Path] = field(default_factory=dict)
    links: dict[str, set[str]] = field(default_factory=dict)  # repo -> digests it holds
    manifests: dict[tuple[str, str], bytes] = field(default_factory=dict)
    uploads: dict[str, Path] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    drop_after: int | None = None
    drops: int = 0
    fail_after_drop: bool = False
    dropped: bool = False
    corrupt: set[str] = field(default_factory=set)
    token: str | None = None
    ignore_range: bool = False
    chunk_delay: float = 0.0  # seconds between 64 KiB chunks of a blob: a slow download, to be interrupted
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        registry = self

        class Handler(_Handler):
            reg = registry

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def host(self) -> str:
        """The host part of a model name on this registry, e.g. `127.0.0.1:PORT/library/smol:latest`."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.root, ignore_errors=True)

    def reset_faults(self) -> None:
        self.drop_after, self.drops, self.fail_after_drop, self.dropped = None, 0, False, False
        self.corrupt.clear()
        self.seen.clear()
        self.token = None
        self.ignore_range = False
        self.chunk_delay = 0.0

    # ---- content -------------------------------------------------------------------------------------------
    def add_blob(self, data: bytes | Path) -> dict[str, object]:
        if isinstance(data, Path):
            h = hashlib.sha256()
            with open(data, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            digest, path = "sha256:" + h.hexdigest(), data
        else:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            path = self.root / digest.replace(":", "-")
            path.write_bytes(data)
        self.blobs[digest] = path
        return {"digest": digest, "size": path.stat().st_size}

    def add_model(self, repo: str, tag: str, config: dict[str, object],
                  layers: list[tuple[str, dict[str, object]]]) -> bytes:
        """`layers` are (kind, blob) pairs, kind as in `application/vnd.ollama.image.<kind>`."""
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, **config},
            "layers": [{"mediaType": f"application/vnd.ollama.image.{kind}", **blob} for kind, blob in layers],
        }
        raw = json.dumps(doc).encode()
        self.manifests[(repo, tag)] = raw
        self.links.setdefault(repo, set()).update([str(config["digest"])] + [str(b["digest"]) for _, b in layers])
        return raw

    def blob_bytes(self, digest: str) -> bytes:
        return self.blobs[digest].read_bytes()


class _Handler(BaseHTTPRequestHandler):
    reg: FakeRegistry
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    # ---- helpers -------------------------------------------------------------------------------------------
    def _record(self) -> bool:
        """Log the request; False (after answering 401) when it lacks the token the registry asks for."""
        auth = self.headers.get("Authorization")
        with self.reg.lock:
            self.reg.seen.append(Seen(self.command, self.path, self.headers.get("Range"), auth))
        if self.reg.token and self.path.startswith("/v2/") and auth != f"Bearer {self.reg.token}":
            self._body()
            realm = f"http://127.0.0.1:{self.reg.port}/token"
            self._reply(401, b"", {"WWW-Authenticate": f'Bearer realm="{realm}",service="fake",scope="x:pull"'})
            return False
        return True

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):  # a HEAD reply states the size of the body it leaves out
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str) -> None:
        body = json.dumps({"errors": [{"code": code, "message": code.lower().replace("_", " ")}]}).encode()
        self._reply(status, body, {"Content-Type": "application/json"})

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # ---- verbs ---------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        if not self._record():
            return
        path = urlsplit(self.path).path
        if m := _BLOB.match(path):
            digest = m["digest"]
            if digest in self.reg.links.get(m["repo"], set()) and digest in self.reg.blobs:
                self._reply(200, b"", {"Content-Length": str(self.reg.blobs[digest].stat().st_size)})
                return
            self._error(404, "BLOB_UNKNOWN")
            return
        self._error(404, "NOT_FOUND")

    def do_GET(self) -> None:
        if not self._record():
            return
        path = urlsplit(self.path).path
        if m := _MANIFEST.match(path):
            raw = self.reg.manifests.get((m["repo"], m["tag"]))
            if raw is None:
                self._error(404, "MANIFEST_UNKNOWN")
            else:
                self._reply(200, raw, {"Content-Type": MANIFEST_MEDIA_TYPE})
            return
        if m := _BLOB.match(path):
            if m["digest"] not in self.reg.links.get(m["repo"], set()):
                self._error(404, "BLOB_UNKNOWN")
                return
            # Like registry.ollama.ai: the bytes live on another host.
            self._reply(307, b"", {"Location": f"http://localhost:{self.reg.port}/storage/{m['digest']}"})
            return
        if m := _STORAGE.match(path):
            self._serve_storage(m["digest"])
            return
        if path == "/token" and self.reg.token:
            query = parse_qs(urlsplit(self.path).query)
            ok = query.get("service") == ["fake"] and query.get("scope") == ["x:pull"]
            self._reply(200 if ok else 400, json.dumps({"token": self.reg.token if ok else ""}).encode())
            return
        self._error(404, "NOT_FOUND")

    def _serve_storage(self, digest: str) -> None:
        reg = self.reg
        if digest not in reg.blobs:
            self._error(404, "BLOB_UNKNOWN")
            return
        if reg.fail_after_drop and reg.dropped:
            self._error(503, "UNAVAILABLE")
            return
        size = reg.blobs[digest].stat().st_size
        start = 0
        status = 200
        headers = {"Content-Type": "application/octet-stream"}
        rng = None if reg.ignore_range else re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
        if rng:
            start = int(rng.group(1))
            if start >= size:
                self._reply(416, b"", {"Content-Range": f"bytes */{size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        with reg.lock:
            drop = reg.drop_after if reg.drops > 0 else None
            if drop is not None:
                reg.drops -= 1
        sent = 0
        with open(reg.blobs[digest], "rb") as f:
            f.seek(start)
            first = True
            while chunk := f.read(_SEND_CHUNK):
                if digest in reg.corrupt and first:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                first = False
                if drop is not None and sent + len(chunk) >= drop:
                    self.wfile.write(chunk[: drop - sent])
                    self.wfile.flush()
                    reg.dropped = True
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # cut mid-body: the client sees a short read
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
                if reg.chunk_delay:
                    time.sleep(reg.chunk_delay)

    def do_POST(self) -> None:
        if not self._record():
            return
        self._body()
        path = urlsplit(self.path).path
        if (m := _UPLOAD.match(path)) and not m["id"]:
            upload_id = uuid.uuid4().hex
            self.reg.uploads[upload_id] = self.reg.root / f"upload-{upload_id}"
            self.reg.uploads[upload_id].write_bytes(b"")
            # A relative Location, as the Docker spec allows: the client must resolve it.
            self._reply(202, b"", {"Location": f"/v2/{m['repo']}/blobs/uploads/{upload_id}",
                                   "Docker-Upload-UUID": upload_id})
            return
        self._error(404, "NOT_FOUND")

    def do_PATCH(self) -> None:
        if not self._record():
            return
        data = self._body()
        m = _UPLOAD.match(urlsplit(self.path).path)
        if not m or m["id"] not in self.reg.uploads:
            self._error(404, "BLOB_UPLOAD_UNKNOWN")
            return
        target = self.reg.uploads[m["id"]]
        have = target.stat().st_size
        rng = re.match(r"(\d+)-(\d+)$", self.headers.get("Content-Range", ""))
        if rng and int(rng.group(1)) != have:
            self._error(416, "BLOB_UPLOAD_INVALID")
            return
        with open(target, "ab") as f:
            f.write(data)
        self._reply(202, b"", {"Location": self.path, "Range": f"0-{have + len(data) - 1}"})

    def do_PUT(self) -> None:
        if not self._record():
            return
        data = self._body()
        url = urlsplit(self.path)
        if m := _MANIFEST.match(url.path):
            doc = json.loads(data)
            missing = [x["digest"] for x in [doc["config"], *doc["layers"]]
                       if x["digest"] not in self.reg.links.get(m["repo"], set())]
            if missing:
                self._error(400, "BLOB_UNKNOWN")
                return
            self.reg.manifests[(m["repo"], m["tag"])] = data
            self._reply(201)
            return
        if (m := _UPLOAD.match(url.path)) and m["id"] in self.reg.uploads:
            digest = parse_qs(url.query).get("digest", [""])[0]
            target = self.reg.uploads.pop(m["id"])
            with open(target, "ab") as f:
                f.write(data)
            got = "sha256:" + hashlib.sha256(target.read_bytes()).hexdigest()
            if got != digest:
                self._error(400, "DIGEST_INVALID")
                return
            self.reg.blobs[digest] = target
            self.reg.links.setdefault(m["repo"], set()).add(digest)
            self._reply(201, b"", {"Docker-Content-Digest": digest})
            return
        self._error(404, "NOT_FOUND")
