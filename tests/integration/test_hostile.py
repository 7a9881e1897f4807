"""Hostile input through real servers: the Host check and CORS (spec 1), hostile templates, names and paths that try
to leave the model store, and malformed GGUF files.

Every request names its Host and Origin explicitly; every server listens on loopback only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import struct
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herd.registry.default_model import DEFAULT_MODEL
from herd.registry.names import ModelName
from herd.registry.store import LAYER_PREFIX, Layer, Manifest, Store
from tests.integration.conftest import MODEL
from tests.integration.custom_models import add_model
from tests.integration.fake_registry import write_tiny_gguf
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

FAST_ENV = {"HERD_NUM_PARALLEL": "1", "HERD_CONTEXT_LENGTH": "1024", "HERD_NUM_THREAD": "1"}
SHORT = {"num_predict": 2, "temperature": 0}
HI = [{"role": "user", "content": "hi"}]


def client(server: HerdServer, timeout: float = 60) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=timeout)


# ---- 1. Host check (DNS rebinding) ---------------------------------------------------------------------------

ROUTES = [("GET", "/"), ("GET", "/api/tags"), ("POST", "/api/chat"), ("GET", "/v1/models"), ("OPTIONS", "/api/chat")]


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:11434", "8.8.8.8", "8.8.8.8:80",
                                  "localhost.evil.com", "rebind.attacker.net:11434", "[2001:4860::8888]:1"])
def test_foreign_host_gets_403_with_empty_body(http: httpx.Client, host: str) -> None:
    for method, path in ROUTES:
        resp = http.request(method, path, headers={"Host": host}, content=b'{"model":"x"}')
        assert resp.status_code == 403, (method, path)
        assert resp.content == b""


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost", "LocalHost:8080", "[::1]:11434", "0.0.0.0",
                                  "10.1.2.3", "192.168.0.10:8080", "172.16.5.4", "app.localhost", "printer.local",
                                  "db.internal:5000", socket.gethostname()])
def test_local_hosts_are_served(http: httpx.Client, server: HerdServer, host: str) -> None:
    host = host.format(port=server.port)
    resp = http.get("/", headers={"Host": host})
    assert resp.status_code == 200 and resp.text == "Ollama is running"
    options = http.options("/api/tags", headers={"Host": host})
    assert options.status_code == 204 and options.content == b""


def test_host_check_is_off_when_not_listening_on_loopback() -> None:
    # Checked in process: the tests never bind a public interface.
    import asyncio

    from herd.api.guard import GuardMiddleware, is_loopback_host

    async def ok(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    async def call(check_host: bool) -> int:
        transport = httpx.ASGITransport(app=GuardMiddleware(ok, check_host=check_host))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
            return (await c.get("/", headers={"Host": "evil.example.com"})).status_code

    assert asyncio.run(call(False)) == 200
    assert asyncio.run(call(True)) == 403
    assert [is_loopback_host(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "192.168.1.2")] == [
        True, True, True, False, False]


# ---- 1. CORS ---------------------------------------------------------------------------------------------------

ALLOWED = ["http://localhost", "https://localhost:3000", "http://127.0.0.1:8080", "http://0.0.0.0:5173",
           "app://obsidian.md", "file://", "tauri://localhost", "vscode-webview://abc123", "vscode-file://vscode-app",
           "chrome-extension://abcdefghijklmnop", "moz-extension://1234-5678", "safari-extension://x",
           "ms-browser-extension://x"]
REFUSED = ["https://evil.example.com", "http://localhost.evil.com", "null", "http://127.0.0.2",
           "https://localhostx", "http://192.168.1.5"]


def preflight(http: httpx.Client, origin: str, headers: str = "content-type") -> httpx.Response:
    return http.options("/api/chat", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": headers})


@pytest.mark.parametrize("origin", ALLOWED)
def test_default_origins_are_allowed(http: httpx.Client, origin: str) -> None:
    resp = http.get("/api/version", headers={"Origin": origin})
    assert resp.status_code == 200 and resp.json()["version"]
    assert resp.headers["access-control-allow-origin"] == origin
    assert "Origin" in resp.headers["vary"]
    pre = preflight(http, origin, "content-type, authorization, x-stainless-os, x-stainless-brand-new")
    assert pre.status_code == 204 and pre.content == b""
    assert pre.headers["access-control-allow-origin"] == origin
    assert "POST" in pre.headers["access-control-allow-methods"].split(",")
    allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "user-agent", "accept", "x-requested-with", "openai-beta",
            "x-stainless-os", "x-stainless-retry-count", "x-stainless-brand-new"} <= allowed


@pytest.mark.parametrize("origin", REFUSED)
def test_foreign_origins_get_403_with_empty_body(http: httpx.Client, origin: str) -> None:
    for resp in (http.get("/api/version", headers={"Origin": origin}), preflight(http, origin),
                 http.post("/api/chat", headers={"Origin": origin}, json={"model": MODEL, "messages": HI})):
        assert resp.status_code == 403 and resp.content == b""
        assert "access-control-allow-origin" not in resp.headers


def test_same_origin_request_is_not_cors(http: httpx.Client, server: HerdServer) -> None:
    # gin-contrib/cors: an Origin naming the server itself (the page it served) is not a cross-origin request.
    resp = http.get("/api/version", headers={"Host": "printer.local", "Origin": "http://printer.local"})
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers


def test_cors_headers_on_a_stream_that_is_not_buffered(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": HI, "options": {"num_predict": 8, "temperature": 0}}
    with http.stream("POST", "/api/chat", json=body, headers={"Origin": "http://localhost:3000"}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-ndjson"
        assert resp.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "content-length" not in resp.headers  # chunked: the guard passes the stream through
        lines = [json.loads(line) for line in resp.iter_lines() if line.strip()]
    assert len(lines) >= 2 and lines[-1]["done"] is True


@pytest.fixture(scope="module")
def origins_server() -> Iterator[HerdServer]:
    env = {"HERD_NO_DEFAULT_MODEL": "1", "OLLAMA_ORIGINS": " https://*.example.com , http://app.test,"}
    srv = HerdServer(env=env).start()
    yield srv
    srv.stop()
    shutil.rmtree(srv.models_dir, ignore_errors=True)


def test_ollama_origins_adds_exact_and_wildcard_origins(origins_server: HerdServer) -> None:
    with client(origins_server) as h:
        for origin in ("https://a.example.com", "https://deep.sub.example.com", "http://app.test", "http://localhost"):
            resp = h.get("/api/tags", headers={"Origin": origin})
            assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == origin, origin
            assert preflight(h, origin).status_code == 204
        for origin in ("http://a.example.com", "https://example.org", "https://a.example.com.evil.org",
                       "http://app.test.evil.org"):
            resp = h.get("/api/tags", headers={"Origin": origin})
            assert resp.status_code == 403 and resp.content == b"", origin


def test_star_allows_every_origin() -> None:
    srv = HerdServer(env={"HERD_NO_DEFAULT_MODEL": "1", "HERD_ORIGINS": "*"}).start()
    try:
        with client(srv) as h:
            resp = h.get("/api/tags", headers={"Origin": "https://anything.example"})
            assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == "*"
            # The Host check still applies: an allowed Origin does not make a foreign Host local.
            assert h.get("/api/tags", headers={"Origin": "https://a.example", "Host": "evil.com"}).status_code == 403
    finally:
        srv.stop()
        shutil.rmtree(srv.models_dir, ignore_errors=True)


# ---- 2. hostile templates ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_server() -> Iterator[HerdServer]:
    srv = HerdServer(env=FAST_ENV).start()
    yield srv
    srv.stop()
    shutil.rmtree(srv.models_dir, ignore_errors=True)


HOSTILE_TEMPLATES = {
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler-globals": "{{ cycler.__init__.__globals__.os.popen('touch /tmp/herd-pwned').read() }}",
    "lipsum-globals": "{{ lipsum.__globals__['os'].popen('touch /tmp/herd-pwned').read() }}",
    "open": "{{ joiner.__init__.__globals__.__builtins__.open('/etc/passwd').read() }}",
    "range-billion": "{% for i in range(10**9) %}x{% endfor %}{{ messages[0].content }}",
    "string-times-billion": "{{ 'a' * 10**9 }}",
    "loop-time": "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
    "go-range-billion": "{{ range 1000000000 }}x{{ end }}{{ .Prompt }}",
    "go-printf-width": '{{ printf "%999999999d" 1 }}{{ .Prompt }}',
}


@pytest.mark.parametrize("kind", HOSTILE_TEMPLATES, ids=HOSTILE_TEMPLATES.keys())
def test_hostile_template_is_a_quick_400_and_the_server_keeps_serving(model_server: HerdServer, kind: str) -> None:
    name = add_model(model_server.models_dir, f"hostile-{kind}", template=HOSTILE_TEMPLATES[kind])
    with client(model_server) as h:
        t0 = time.monotonic()
        resp = h.post("/api/chat", json={"model": name, "messages": HI, "stream": False, "keep_alive": 0,
                                         "options": SHORT})
        elapsed = time.monotonic() - t0
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"].startswith("template error: ")
        assert elapsed < 8, f"{elapsed:.1f}s"
        openai = h.post("/v1/chat/completions", json={"model": name, "messages": HI, "max_tokens": 2})
        assert openai.status_code == 400 and openai.json()["error"]["message"].startswith("template error: ")
        assert h.post("/api/show", json={"model": name}).status_code == 200  # describing it renders nothing
        ok = h.post("/api/chat", json={"model": MODEL, "messages": HI, "stream": False, "options": SHORT})
        assert ok.status_code == 200 and ok.json()["done"] is True
    assert not Path("/tmp/herd-pwned").exists()


# ---- 2. names and paths that try to leave the store --------------------------------------------------------------

ESCAPES = ["../../../../etc/passwd", "/etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e/%2e%2e/x", "a/../../b", "..",
           "registry.ollama.ai/../../x:latest", "x:../../y", "..\\..\\windows", "model\x00name", "./x", "~/x",
           "registry.ollama.ai/library/../../../../tmp/x"]


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): (p.lstat().st_size if not p.is_dir() else -1) for p in root.rglob("*")}


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A folder outside the store with a file that must never be read, changed or removed."""
    (tmp_path / "secret").write_text("do not touch")
    return tmp_path


@pytest.mark.parametrize("name", ESCAPES)
def test_names_that_escape_the_store_are_refused(model_server: HerdServer, name: str) -> None:
    before = tree(model_server.models_dir)
    with client(model_server) as h:
        assert h.post("/api/show", json={"model": name}).status_code in (400, 404)
        assert h.request("DELETE", "/api/delete", json={"model": name}).status_code in (400, 404)
        assert h.post("/api/copy", json={"source": MODEL, "destination": name}).status_code == 400
        assert h.post("/api/copy", json={"source": name, "destination": "fine"}).status_code in (400, 404)
        assert h.post("/api/create", json={"model": name, "from": MODEL}).status_code == 400
        assert h.post("/api/chat", json={"model": name, "messages": HI}).status_code in (400, 404)
        assert h.get(f"/v1/models/{urllib.parse.quote(name, safe='')}").status_code in (400, 404)
    assert tree(model_server.models_dir) == before


@pytest.mark.parametrize("digest", ["sha256:../../../etc/passwd", "sha256:..%2F..%2Fetc%2Fpasswd",
                                    "..%2F..%2F..%2Fetc%2Fpasswd", "sha256-" + "a" * 63 + "g", "%2e%2e",
                                    "sha256:" + "a" * 64 + "%00"])
def test_blob_digests_that_escape_the_store_are_refused(model_server: HerdServer, digest: str) -> None:
    before = tree(model_server.models_dir)
    with client(model_server) as h:
        assert h.head(f"/api/blobs/{digest}").status_code in (400, 404)
        assert h.post(f"/api/blobs/{digest}", content=b"x").status_code in (400, 404)
        files = h.post("/api/create", json={"model": "x", "files": {"m.gguf": digest}})
        assert files.status_code == 400
    assert tree(model_server.models_dir) == before


def test_create_from_a_path_outside_reads_no_secret(model_server: HerdServer, outside: Path) -> None:
    link = outside / "link.gguf"
    link.symlink_to("/etc/passwd")
    before = tree(model_server.models_dir)
    with client(model_server) as h:
        for source in ("../../../../../../etc/passwd", str(link), str(outside / "secret"), str(outside)):
            resp = h.post("/api/create", json={"model": "fromoutside", "from": source})
            assert resp.status_code == 400, resp.text
            assert "root:" not in resp.text and "do not touch" not in resp.text
    assert tree(model_server.models_dir) == before
    assert (outside / "secret").read_text() == "do not touch"


def test_symlinks_out_of_the_store_are_neither_followed_nor_touched(model_server: HerdServer,
                                                                    outside: Path) -> None:
    store = Store(model_server.models_dir)
    manifest = store.find(MODEL).manifest
    # A manifest folder and a manifest file that are symlinks to outside the store.
    (outside / "latest").write_bytes(manifest.to_bytes())
    library = model_server.models_dir / "manifests" / "registry.ollama.ai" / "library"
    (library / "evildir").symlink_to(outside, target_is_directory=True)
    (library / "evilfile").mkdir()
    (library / "evilfile" / "latest").symlink_to(outside / "latest")
    # A blob that is a symlink to a file outside (as the default model's blob legitimately is), named by a model.
    payload = b"outside blob"
    (outside / "blob").write_bytes(payload)
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    (model_server.models_dir / "blobs" / digest.replace(":", "-")).symlink_to(outside / "blob")
    store.write_manifest(ModelName.parse("linked"), Manifest(manifest.config, (
        *manifest.layers, Layer(LAYER_PREFIX + "license", digest, len(payload)))))
    try:
        with client(model_server) as h:
            for name in ("evildir", "evilfile"):
                assert h.post("/api/show", json={"model": name}).status_code == 400
                assert h.request("DELETE", "/api/delete", json={"model": name}).status_code == 400
                assert h.post("/api/copy", json={"source": name, "destination": "stolen"}).status_code == 400
            listed = {m["name"] for m in h.get("/api/tags").json()["models"]}
            assert "evildir:latest" not in listed and "evilfile:latest" not in listed
            assert h.request("DELETE", "/api/delete", json={"model": "linked"}).status_code == 200
        assert (outside / "latest").read_bytes() == manifest.to_bytes()
        assert (outside / "blob").read_bytes() == payload  # pruning removed the link, not the file it names
        assert (outside / "secret").read_text() == "do not touch"
    finally:
        (library / "evildir").unlink()
        shutil.rmtree(library / "evilfile")


# ---- 2. malformed GGUF files ------------------------------------------------------------------------------------


def _array_bomb() -> bytes:
    key = b"tokenizer.ggml.tokens"
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    return head + struct.pack("<IIQ", 9, 8, 1 << 40) + b"\0" * 64


@pytest.fixture(scope="module")
def bad_ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    good = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").read_bytes()
    return {
        "empty": b"",
        "wrong-magic": b"GGML" + good[4:4096],
        "truncated-header": good[:20],
        "truncated-keys": good[:40],
        "truncated-tensor-data": good[: len(good) // 2],
        "bad-version": good[:4] + struct.pack("<I", 99) + good[8:4096],
        "absurd-tensor-count": good[:8] + struct.pack("<Q", 1 << 60) + good[16:],
        "absurd-key-count": good[:16] + struct.pack("<Q", 1 << 60) + good[24:],
        "absurd-string-length": good[:24] + struct.pack("<Q", 1 << 62) + good[32:],
        "absurd-array-length": _array_bomb(),
    }


def test_malformed_gguf_is_refused_quickly(model_server: HerdServer, bad_ggufs: dict[str, bytes]) -> None:
    store = Store(model_server.models_dir)
    base = store.find(DEFAULT_MODEL).manifest
    with client(model_server) as h:
        for kind, data in bad_ggufs.items():
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            assert h.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201), kind
            t0 = time.monotonic()
            resp = h.post("/api/create", json={"model": f"bad-{kind}", "files": {"m.gguf": digest}})
            assert resp.status_code == 400, (kind, resp.text)
            assert "GGUF" in resp.json()["error"], (kind, resp.text)
            assert time.monotonic() - t0 < 5, kind
            # The same file put straight into a manifest (a pull from a hostile registry, a damaged disk).
            name = f"placed-{kind}"
            store.write_manifest(ModelName.parse(name), Manifest(base.config, (
                Layer(LAYER_PREFIX + "model", digest, len(data)),)))
            t0 = time.monotonic()
            chat = h.post("/api/chat", json={"model": name, "messages": HI, "stream": False})
            assert 400 <= chat.status_code < 500, (kind, chat.text)
            assert "error" in chat.json()
            assert 400 <= h.post("/api/show", json={"model": name}).status_code < 500, kind
            assert time.monotonic() - t0 < 5, kind
            assert h.request("DELETE", "/api/delete", json={"model": name}).status_code == 200
        assert h.get("/api/tags").status_code == 200
        ok = h.post("/api/chat", json={"model": MODEL, "messages": HI, "stream": False, "options": SHORT})
        assert ok.status_code == 200

