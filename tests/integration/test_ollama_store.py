"""An existing Ollama models folder (Go template, params layer) is listed and served in place."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx
import pytest

from herd.registry.default_model import default_model_file
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

CHATML_GO = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
             "<|im_start|>assistant\n")


def _blob(root: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_ollama_store(root: Path) -> None:
    """The layout `ollama pull smollm2:135m` leaves: manifest, GGUF, Go template and params blobs."""
    (root / "blobs").mkdir(parents=True)
    gguf = default_model_file()
    assert gguf is not None
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    os.symlink(gguf, root / "blobs" / f"sha256-{digest}")
    layers = [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": gguf.stat().st_size},
        {"mediaType": "application/vnd.ollama.image.template", **_blob(root, CHATML_GO.encode())},
        {"mediaType": "application/vnd.ollama.image.params",
         **_blob(root, json.dumps({"stop": ["<|im_start|>", "<|im_end|>"]}).encode())},
    ]
    config = {"mediaType": "application/vnd.docker.container.image.v1+json",
              **_blob(root, json.dumps({"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
                                        "model_type": "134.52M", "file_type": "Q4_1"}).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": config, "layers": layers}
    path = root / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))


def test_serves_an_ollama_store_in_place(tmp_path: Path) -> None:
    make_ollama_store(tmp_path)
    before = sorted(p.name for p in (tmp_path / "blobs").iterdir())
    server = HerdServer(models_dir=tmp_path, env={"HERD_NO_DEFAULT_MODEL": "1"}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            models = c.get("/api/tags").json()["models"]
            assert [m["name"] for m in models] == ["smollm2:135m"]
            show = c.post("/api/show", json={"model": "smollm2:135m"}).json()
            assert show["template"] == CHATML_GO
            assert show["parameters"] == 'stop                           "<|im_start|>"\nstop                           "<|im_end|>"'
            body = {"model": "smollm2:135m", "stream": False,
                    "messages": [{"role": "user", "content": "Why is the sky blue? Answer in one short sentence."}]}
            rendered = c.post("/api/chat", json={**body, "_debug_render_only": True}).json()["_debug_info"][
                "rendered_template"]
            assert rendered == ("<|im_start|>user\nWhy is the sky blue? Answer in one short sentence.<|im_end|>\n"
                                "<|im_start|>assistant\n")
            doc = c.post("/api/chat", json={**body, "options": {"temperature": 0, "num_predict": 48}}).json()
            # The same prompt as Ollama's transcript 02 on this model, greedy: the same answer.
            assert doc["message"]["content"] == ("The sky blue is a result of the Earth's atmosphere scattering "
                                                 "sunlight, specifically blue light, allowing it to reach our "
                                                 "planet's surface.")
            assert doc["prompt_eval_count"] == 21 and doc["eval_count"] == 28
    finally:
        server.stop()
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == before  # nothing copied or removed
