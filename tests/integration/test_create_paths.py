"""/api/create reads no file outside the model store, and refuses what herd cannot honour (issue 12, points 9, 10),
through a real server and the `herd` CLI.

A `from` path, a legacy Modelfile `FROM` or `ADAPTER` path and `files` may only name the store's own blobs; anything
else is a 400 before any file is opened, so no request can read a file (and push it to a registry). `herd create`
uploads the local files its Modelfile names through /api/blobs, as `ollama create` does. A RENDERER or PARSER herd
does not know is a 400 naming it, not a value stored and ignored.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herd.registry.names import ModelName
from herd.registry.store import LAYER_PREFIX, Layer, Manifest, Store
from tests.integration.conftest import MODEL
from tests.integration.fake_registry import write_tiny_gguf
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

FAST_ENV = {"HERD_NUM_PARALLEL": "1", "HERD_CONTEXT_LENGTH": "512", "HERD_NUM_THREAD": "1"}
OUTSIDE = "outside the model store"


@pytest.fixture(scope="module")
def srv() -> Iterator[HerdServer]:
    server = HerdServer(env=FAST_ENV).start()
    yield server
    server.stop()


@pytest.fixture()
def h(srv: HerdServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.lstat().st_size) for p in root.rglob("*"))


def herd_cli(server: HerdServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{server.port}"}
    env.pop("HERD_HOST", None)
    return subprocess.run([sys.executable, "-m", "herd.cli", *args], check=False, env=env, capture_output=True,
                          text=True, timeout=180)


def test_no_path_outside_the_store_is_read(srv: HerdServer, h: httpx.Client, tiny: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.gguf"
    secret.write_bytes(tiny.read_bytes())  # a valid GGUF: only the rule can refuse it
    link = tmp_path / "link.gguf"
    link.symlink_to("/etc/passwd")
    store = srv.models_dir
    before = tree(store)
    bodies = [{"from": p} for p in (str(secret), str(link), "/etc/passwd", "/dev/zero", "/proc/self/environ",
                                    "../../../../../../etc/passwd", f"{store}/blobs/../../../../etc/passwd",
                                    f"{store}/manifests", f"{store}/blobs", "./weights.gguf", "~/.ssh/id_rsa")]
    bodies += [{"modelfile": f"FROM {secret}\n"}, {"modelfile": "FROM /etc/passwd\n"}]
    for body in bodies:
        for stream in (False, True):
            resp = h.post("/api/create", json={"model": "stolen", "stream": stream, **body})
            assert resp.status_code == 400, (body, resp.text)
            assert OUTSIDE in resp.json()["error"]
            assert "root:" not in resp.text
    for body in ({"modelfile": f"FROM {MODEL}\nADAPTER ../x.gguf\n"}, {"from": MODEL, "adapters": {"/etc/passwd": ""}}):
        resp = h.post("/api/create", json={"model": "stolen", **body})
        assert resp.status_code == 400 and "adapters" in resp.json()["error"], resp.text
    assert tree(store) == before  # nothing was copied in
    assert "stolen:latest" not in {m["name"] for m in h.get("/api/tags").json()["models"]}


def test_a_blob_named_by_its_store_path_is_taken_without_a_copy(srv: HerdServer, h: httpx.Client,
                                                                tiny: Path) -> None:
    data = tiny.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert h.post(f"/api/blobs/{digest}", content=data).status_code in (200, 201)
    path = srv.models_dir / "blobs" / digest.replace(":", "-")
    blobs = sorted(p.name for p in (srv.models_dir / "blobs").iterdir())
    made = h.post("/api/create", json={"model": "byblobpath", "from": str(path), "stream": False})
    assert made.status_code == 200, made.text
    manifest = Store(srv.models_dir).find("byblobpath").manifest
    assert manifest.layer("model").digest == digest  # type: ignore[union-attr]
    new = {p.name for p in (srv.models_dir / "blobs").iterdir()} - set(blobs)
    assert sum((srv.models_dir / "blobs" / n).stat().st_size for n in new) < len(data)  # only the config is new
    assert h.request("DELETE", "/api/delete", json={"model": "byblobpath"}).status_code == 200


def test_cli_create_uploads_local_files_and_refuses_missing_ones(srv: HerdServer, h: httpx.Client, tiny: Path,
                                                                 tmp_path: Path) -> None:
    (tmp_path / "weights.gguf").write_bytes(tiny.read_bytes())
    (tmp_path / "Modelfile").write_text("FROM ./weights.gguf\nSYSTEM uploaded\n")
    made = herd_cli(srv, "create", "cli-uploaded", "-f", str(tmp_path / "Modelfile"))
    assert made.returncode == 0, made.stderr
    digest = "sha256:" + hashlib.sha256(tiny.read_bytes()).hexdigest()
    assert (srv.models_dir / "blobs" / digest.replace(":", "-")).is_file()
    # Again: the server has the blob (HEAD 200), so nothing is uploaded, and the create still works.
    again = herd_cli(srv, "create", "cli-uploaded2", "-f", str(tmp_path / "Modelfile"))
    assert again.returncode == 0, again.stderr
    (tmp_path / "Missing").write_text("FROM ./nothing-here.gguf\n")
    missing = herd_cli(srv, "create", "cli-missing", "-f", str(tmp_path / "Missing"))
    assert missing.returncode == 1 and "no such file" in missing.stderr, missing.stderr
    listed = {m["name"] for m in h.get("/api/tags").json()["models"]}
    assert {"cli-uploaded:latest", "cli-uploaded2:latest"} <= listed and "cli-missing:latest" not in listed
    for name in ("cli-uploaded", "cli-uploaded2"):
        assert h.request("DELETE", "/api/delete", json={"model": name}).status_code == 200


@pytest.mark.parametrize(("modelfile", "named"), [
    (f"FROM {MODEL}\nRENDERER olmo9\n", 'RENDERER "olmo9" is not supported'),
    (f"FROM {MODEL}\nPARSER frob\n", 'PARSER "frob" is not supported'),
])
def test_unknown_renderer_or_parser_is_a_clear_400(srv: HerdServer, h: httpx.Client, tmp_path: Path,
                                                  modelfile: str, named: str) -> None:
    resp = h.post("/api/create", json={"model": "withrenderer", "modelfile": modelfile})
    assert resp.status_code == 400 and named in resp.json()["error"], resp.text
    (tmp_path / "Modelfile").write_text(modelfile)
    cli = herd_cli(srv, "create", "withrenderer", "-f", str(tmp_path / "Modelfile"))
    assert cli.returncode == 1 and named in cli.stderr, cli.stderr
    assert "withrenderer:latest" not in {m["name"] for m in h.get("/api/tags").json()["models"]}


def test_options_ollama_ignores_are_still_accepted(h: httpx.Client) -> None:
    opts = {"num_predict": 1, "temperature": 0, "mirostat": 2, "mirostat_tau": 5.0, "mirostat_eta": 0.1,
            "tfs_z": 1.0, "penalize_newline": True}
    resp = h.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False, "options": opts})
    assert resp.status_code == 200, resp.text


def test_a_model_with_a_projector_herd_cannot_read_serves_text_and_refuses_images(srv: HerdServer,
                                                                                  h: httpx.Client) -> None:
    """A projector layer that is not a clip GGUF (a broken or foreign file) is left out: the model claims no
    vision, refuses images with 400, and still answers text (its runner loads without the projector)."""
    store = Store(srv.models_dir)
    base = store.find(MODEL).manifest
    projector = store.write_blob(b"a projector herd does not load")
    store.write_manifest(ModelName.parse("with-projector"), Manifest(base.config, (
        *base.layers, Layer(LAYER_PREFIX + "projector", projector.digest, projector.size))))
    try:
        shown = h.post("/api/show", json={"model": "with-projector"}).json()
        assert "vision" not in shown["capabilities"] and "projector_info" not in shown
        image = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
        chat = h.post("/api/chat", json={"model": "with-projector", "stream": False, "messages": [
            {"role": "user", "content": "what is this?", "images": [image]}]})
        assert chat.status_code == 400 and "does not support vision" in chat.json()["error"], chat.text
        text = h.post("/api/chat", json={"model": "with-projector", "stream": False, "options": {"num_predict": 3},
                                         "messages": [{"role": "user", "content": "hi"}]})
        assert text.status_code == 200 and text.json()["eval_count"] == 3, text.text
        h.post("/api/generate", json={"model": "with-projector", "keep_alive": 0})
    finally:
        h.request("DELETE", "/api/delete", json={"model": "with-projector"})
