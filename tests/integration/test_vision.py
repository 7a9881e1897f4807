"""Vision through real servers: images on /api/chat, /api/generate and /v1/chat/completions reach the model through
llama.cpp's mtmd, for a model whose manifest has a projector layer.

No real vision model can be fetched here, so the projector is the synthetic LLaVA-style "mlp" GGUF of
`tests/vision_fixture.py` (random weights, output width 576 = SmolLM2-135M's), next to the default model's weights.
Every image becomes exactly IMAGE_TOKENS (16) embedding positions in the text model, with no wrapper tokens.

What these tests prove: an image's pixels reach the text model (different pixels give a different greedy text, the
same pixels the same text, whatever the format or the API), the image tokens are counted and cached by the image's
content, limits and bad input are refused before any runner work, and vision models are made by /api/create and
served from an Ollama store. What they cannot prove: anything about answer quality (the projector's weights are
noise), nor anything about projector types other than "mlp" (no image begin/end tokens, tiling or M-RoPE). Every
check is greedy (temperature 0, a fixed seed, a few tokens) and compares texts between requests, never with an
expected answer.

One module server of its own (the shared session server gets no extra model) with small image limits; a second,
short-lived one serves an Ollama-layout store in place and fetches image URLs (HERD_ALLOW_IMAGE_URLS=1).
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import io
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from herd.api.openai.translate import IMAGE_URLS_REFUSED
from herd.images import MAX_PIXELS
from herd.registry.default_model import default_model_file
from herd.registry.store import Store
from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer
from tests.vision_fixture import IMAGE_TOKENS, encode, image, image_bytes, png_bytes, write_projector

pytestmark = pytest.mark.integration

MAX_IMAGES = 3
MAX_IMAGE_BYTES = 64 * 1024
ENV = {"HERD_NUM_PARALLEL": "2", "HERD_CONTEXT_LENGTH": "2048", "HERD_MAX_IMAGES": str(MAX_IMAGES),
       "HERD_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES)}
VISION = "smolvision:latest"  # made through /api/create in the `vision` fixture
STORE_VISION = "smolvision-store:latest"  # in the second server's Ollama-layout store
OPTS = {"temperature": 0, "seed": 7, "num_predict": 10}
QUESTION = "What is in this picture?"
CHATML_GO = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
             "<|im_start|>assistant\n")

RED = png_bytes(32, 32, (200, 30, 30))
BLUE = png_bytes(32, 32, (30, 30, 200))
NOISE = png_bytes(32, 32, 11)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


# ---- servers and models ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def projector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_projector(tmp_path_factory.mktemp("projector") / "mmproj.gguf")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HerdServer]:
    server = HerdServer(models_dir=tmp_path_factory.mktemp("vision-models"), env=ENV).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def c(srv: HerdServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=120) as client:
        yield client


def upload_blob(c: httpx.Client, data: bytes) -> tuple[str, list[int]]:
    """As `ollama create` does: HEAD the blob, POST it only when the server lacks it. The statuses seen, in order."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    statuses = [c.head(f"/api/blobs/{digest}").status_code]
    if statuses[0] != 200:
        statuses.append(c.post(f"/api/blobs/{digest}", content=data).status_code)
        statuses.append(c.head(f"/api/blobs/{digest}").status_code)
    return digest, statuses


@pytest.fixture(scope="module")
def vision(c: httpx.Client, projector: Path) -> dict[str, Any]:
    """The vision model every test here uses, made the way a client makes one: the SmolLM2 GGUF and the projector
    uploaded as blobs, then /api/create with both in `files`."""
    gguf = default_model_file()
    assert gguf is not None
    weights, weights_statuses = upload_blob(c, gguf.read_bytes())
    mmproj, mmproj_statuses = upload_blob(c, projector.read_bytes())
    made = c.post("/api/create", json={"model": VISION, "stream": False,
                                       "files": {"model.gguf": weights, "mmproj.gguf": mmproj}})
    assert made.status_code == 200 and made.json() == {"status": "success"}, made.text
    return {"weights": weights, "projector": mmproj, "weights_statuses": weights_statuses,
            "projector_statuses": mmproj_statuses}


def chat(c: httpx.Client, messages: list[dict[str, Any]], model: str = VISION, **extra: Any) -> dict[str, Any]:
    resp = c.post("/api/chat", json={"model": model, "stream": False, "messages": messages, "options": OPTS,
                                     **extra})
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def ask(c: httpx.Client, *images: bytes, text: str = QUESTION, model: str = VISION) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "user", "content": text}
    if images:
        msg["images"] = [b64(i) for i in images]
    return chat(c, [msg], model=model)


def chat_stream(c: httpx.Client, messages: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The joined text of a streamed /api/chat, and its last line."""
    parts: list[str] = []
    last: dict[str, Any] = {}
    with c.stream("POST", "/api/chat", json={"model": VISION, "messages": messages, "options": OPTS}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line:
                last = json.loads(line)
                assert "error" not in last, last
                parts.append(last["message"]["content"])
    assert last.get("done") is True and len(parts) > 2
    return "".join(parts), last


def generate(c: httpx.Client, *images: bytes, prompt: str = QUESTION, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": VISION, "prompt": prompt, "stream": False, "options": OPTS, **extra}
    if images:
        body["images"] = [b64(i) for i in images]
    resp = c.post("/api/generate", json=body)
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def rendered(c: httpx.Client, messages: list[dict[str, Any]], path: str = "/api/chat",
             model: str = VISION) -> dict[str, Any]:
    resp = c.post(path, json={"model": model, "messages": messages, "stream": False, "_debug_render_only": True})
    assert resp.status_code == 200, resp.text
    info: dict[str, Any] = resp.json()["_debug_info"]
    return info


def runner_row(c: httpx.Client, model: str = VISION) -> dict[str, Any]:
    """The model's chat runner with fresh counters (answered now, by an idle runner)."""
    for _ in range(100):
        rows = [r for r in c.get("/api/herd/runners").json()["runners"] if r["model"] == model and r["kind"] == "chat"]
        assert len(rows) == 1, rows
        row: dict[str, Any] = rows[0]
        if row["state"] == "ready" and row["active"] == 0 and "prompt_evaluated" in row and row["counters_age_s"] < 0.2:
            return row
        time.sleep(0.05)
    raise AssertionError(f"no fresh counters for {model}")


def counters(c: httpx.Client, model: str = VISION) -> tuple[int, int]:
    """The runner's (prompt_evaluated, prompt_cached), loading the model first if no runner holds it."""
    if not any(r["model"] == model for r in c.get("/api/herd/runners").json()["runners"]):
        assert c.post("/api/chat", json={"model": model, "messages": []}).json()["done_reason"] == "load"
    row = runner_row(c, model)
    return int(row["prompt_evaluated"]), int(row["prompt_cached"])


# ---- 1: a vision model made through the API ----------------------------------------------------------------


def test_create_from_uploaded_gguf_and_projector(srv: HerdServer, c: httpx.Client, vision: dict[str, Any],
                                                 projector: Path) -> None:
    """/api/create with a model GGUF and a `clip` GGUF in `files` makes a model whose manifest has a projector
    layer: /api/show lists `vision` and the projector's metadata (`projector_info`); the default model has
    neither. Proves the create path and the show view; says nothing of how the model answers (other tests)."""
    assert vision["projector_statuses"] == [404, 201, 200]  # uploaded, then present
    assert vision["weights_statuses"][-1] == 200  # the default model's blob, or uploaded
    manifest = Store(srv.models_dir).find(VISION).manifest
    assert [layer.kind for layer in manifest.layers if layer.kind in ("model", "projector")] == ["model", "projector"]
    assert manifest.layer("model").digest == vision["weights"]  # type: ignore[union-attr]
    assert manifest.layer("projector").digest == vision["projector"]  # type: ignore[union-attr]
    assert manifest.layer("projector").size == projector.stat().st_size  # type: ignore[union-attr]

    shown = c.post("/api/show", json={"model": VISION}).json()
    assert "vision" in shown["capabilities"] and "completion" in shown["capabilities"]
    info = shown["projector_info"]
    assert info["general.architecture"] == "clip" and info["clip.projector_type"] == "mlp"
    assert info["clip.vision.image_size"] == 32 and info["clip.vision.projection_dim"] == 576
    assert shown["model_info"]["general.architecture"] == "llama"

    plain = c.post("/api/show", json={"model": MODEL}).json()
    assert "vision" not in plain["capabilities"] and "projector_info" not in plain
    tags = {m["name"]: m for m in c.get("/api/tags").json()["models"]}
    assert VISION in tags and MODEL in tags
    assert tags[VISION]["size"] > tags[MODEL]["size"]  # the projector counts in the model's size


# ---- 3: /api/chat ------------------------------------------------------------------------------------------


def test_chat_text_depends_on_the_image(c: httpx.Client, vision: dict[str, Any]) -> None:
    """Greedy chats with two different images give different texts, the same image the same text, and no image a
    third text: the pixels reach the model's logits. Cannot say whether the text describes the image."""
    red, blue, red_again, none = ask(c, RED), ask(c, BLUE), ask(c, RED), ask(c)
    texts = [d["message"]["content"] for d in (red, blue, red_again, none)]
    assert all(texts) and all(d["eval_count"] > 0 for d in (red, blue, none))
    assert texts[0] != texts[1] and texts[0] != texts[3] and texts[1] != texts[3]
    assert texts[0] == texts[2]


def test_chat_streamed_text_equals_the_non_streamed_one(c: httpx.Client, vision: dict[str, Any]) -> None:
    """A streamed chat with an image joins to the same text and counts as the non-streamed one. Proves the two
    modes share one path for images; not that either is a good answer."""
    messages = [{"role": "user", "content": QUESTION, "images": [b64(NOISE)]}]
    whole = chat(c, messages)
    joined, last = chat_stream(c, messages)
    assert joined == whole["message"]["content"] and joined
    assert last["prompt_eval_count"] == whole["prompt_eval_count"] and last["eval_count"] == whole["eval_count"]


def test_prompt_eval_count_includes_image_tokens(c: httpx.Client, vision: dict[str, Any]) -> None:
    """Each image adds exactly IMAGE_TOKENS to prompt_eval_count (as Ollama counts image embeddings), wherever it
    is in the conversation: in the last message, or in an earlier turn of the history. The same image twice in
    one request is two images. Proves counting and placement in the token stream; the count itself is the
    synthetic projector's (16), not a real model's."""
    base = ask(c)["prompt_eval_count"]
    assert ask(c, RED)["prompt_eval_count"] - base == IMAGE_TOKENS
    assert ask(c, RED, BLUE)["prompt_eval_count"] - base == 2 * IMAGE_TOKENS
    assert ask(c, RED, RED)["prompt_eval_count"] - base == 2 * IMAGE_TOKENS

    def history(first: list[bytes], last: list[bytes]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": "Look at this.", "images": [b64(i) for i in first]},
                {"role": "assistant", "content": "I see it."},
                {"role": "user", "content": "What colour was it?", "images": [b64(i) for i in last]}]

    plain = chat(c, history([], []))["prompt_eval_count"]
    earlier = chat(c, history([RED], []))
    both = chat(c, history([RED], [BLUE]))
    assert earlier["prompt_eval_count"] - plain == IMAGE_TOKENS
    assert both["prompt_eval_count"] - plain == 2 * IMAGE_TOKENS
    # The image in the history reaches the model too: another image there gives another answer.
    assert chat(c, history([BLUE], []))["message"]["content"] != earlier["message"]["content"]
    # Ollama's placement: each image in front of its own message's text, numbered across the conversation.
    shown = rendered(c, history([RED], [BLUE]))
    text = shown["rendered_template"]
    assert shown["image_count"] == 2
    assert "[img-0]Look at this." in text and "[img-1]What colour was it?" in text
    assert text.index("[img-0]") < text.index("I see it.") < text.index("[img-1]")


def test_img_reference_in_content_places_the_image(c: httpx.Client, vision: dict[str, Any]) -> None:
    """An `[img]` in a message's text is where its image goes (Ollama), otherwise the image goes in front: the
    render shows it in place of the `[img]`, once, and the two placements are two prompts (two texts). Cannot
    show that a real model would read the image better in either place."""
    msg = {"role": "user", "content": "Before [img] after.", "images": [b64(RED)]}
    shown = rendered(c, [msg])
    assert "Before [img-0] after." in shown["rendered_template"] and shown["image_count"] == 1
    assert "[img]" not in shown["rendered_template"] and shown["rendered_template"].count("[img-") == 1
    moved = chat(c, [msg])
    front = chat(c, [{"role": "user", "content": "Before  after.", "images": [b64(RED)]}])
    # Another position is another prompt: the image in the middle gives another text than in front.
    assert moved["message"]["content"] and moved["message"]["content"] != front["message"]["content"]


# ---- 4: /api/generate --------------------------------------------------------------------------------------


def test_generate_with_images(c: httpx.Client, vision: dict[str, Any]) -> None:
    """/api/generate's `images`: different images give different texts, the same image the same text, streamed
    joins to non-streamed, and each image adds IMAGE_TOKENS to prompt_eval_count, templated or raw. Says nothing
    of answer quality."""
    red, blue, red_again, none = generate(c, RED), generate(c, BLUE), generate(c, RED), generate(c)
    assert red["response"] and red["response"] != blue["response"] and red["response"] == red_again["response"]
    assert red["response"] != none["response"]
    assert red["prompt_eval_count"] - none["prompt_eval_count"] == IMAGE_TOKENS
    assert generate(c, RED, BLUE)["prompt_eval_count"] - none["prompt_eval_count"] == 2 * IMAGE_TOKENS

    parts: list[str] = []
    with c.stream("POST", "/api/generate", json={"model": VISION, "prompt": QUESTION, "images": [b64(RED)],
                                                 "options": OPTS}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line:
                doc = json.loads(line)
                assert "error" not in doc, doc
                parts.append(doc["response"])
    assert doc["done"] and len(parts) > 2 and "".join(parts) == red["response"]
    assert doc["prompt_eval_count"] == red["prompt_eval_count"]

    # Raw prompts: an image the prompt does not place with `[img-N]` goes in front of it; one it places goes there.
    raw_plain = generate(c, prompt="A picture. It shows", raw=True)
    raw_front = generate(c, RED, prompt="A picture. It shows", raw=True)
    assert raw_front["prompt_eval_count"] == raw_plain["prompt_eval_count"] + IMAGE_TOKENS
    assert raw_front["response"] != raw_plain["response"]
    raw_red = generate(c, RED, prompt="A picture: [img-0] It shows", raw=True)
    raw_blue = generate(c, BLUE, prompt="A picture: [img-0] It shows", raw=True)
    assert raw_red["response"] != raw_blue["response"] and raw_red["response"] != raw_front["response"]
    assert raw_red["prompt_eval_count"] == raw_blue["prompt_eval_count"]


def test_generate_debug_render_shows_images(c: httpx.Client, vision: dict[str, Any]) -> None:
    """`_debug_render_only` on /api/generate shows where the images go (`[img-N]`) and how many there are, and
    runs nothing. Proves the placement shown to clients, not the model's reading."""
    before = counters(c)
    for images, count in (([RED], 1), ([RED, BLUE], 2)):
        resp = c.post("/api/generate", json={"model": VISION, "prompt": QUESTION, "images": [b64(i) for i in images],
                                             "_debug_render_only": True, "stream": False})
        assert resp.status_code == 200, resp.text
        info = resp.json()["_debug_info"]
        assert info["image_count"] == count
        text = info["rendered_template"]
        assert "".join(f"[img-{n}]" for n in range(count)) + QUESTION in text
        assert f"[img-{count}]" not in text and "herd-image" not in text
    assert counters(c) == before


# ---- 5: the official ollama client -------------------------------------------------------------------------


def test_ollama_client_sends_image_files(srv: HerdServer, c: httpx.Client, vision: dict[str, Any],
                                         tmp_path: Path) -> None:
    """The `ollama` client reads an image file by its path and sends it base64: chat (streamed and not) and
    generate give the same texts as the same bytes sent by hand, and another image another text. Proves wire
    compatibility with the client; not answer quality."""
    red_path, blue_path = tmp_path / "red.png", tmp_path / "blue.png"
    red_path.write_bytes(RED)
    blue_path.write_bytes(BLUE)
    client = ollama.Client(host=srv.url)

    def client_chat(path: Path) -> str:
        return client.chat(model=VISION, messages=[{"role": "user", "content": QUESTION, "images": [str(path)]}],
                           options=OPTS).message.content or ""

    red = client_chat(red_path)
    assert red and red == ask(c, RED)["message"]["content"]
    assert client_chat(blue_path) != red
    parts = list(client.chat(model=VISION, messages=[{"role": "user", "content": QUESTION, "images": [red_path]}],
                             options=OPTS, stream=True))
    assert parts[-1].done and "".join(p.message.content or "" for p in parts) == red

    gen = client.generate(model=VISION, prompt=QUESTION, images=[str(red_path)], options=OPTS)
    assert gen.response and gen.response == generate(c, RED)["response"]
    assert gen.prompt_eval_count == generate(c)["prompt_eval_count"] + IMAGE_TOKENS
    assert client.generate(model=VISION, prompt=QUESTION, images=[blue_path], options=OPTS).response != gen.response


# ---- 6: the openai client and image_url parts --------------------------------------------------------------


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def openai_messages(url: str, text: str = QUESTION) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}]


def openai_text(client: openai.OpenAI, url: str, model: str = VISION) -> str:
    done = client.chat.completions.create(model=model, messages=openai_messages(url),  # type: ignore[arg-type]
                                          temperature=0, seed=OPTS["seed"], max_tokens=OPTS["num_predict"])
    return done.choices[0].message.content or ""


# /v1 makes each content part a message of its own (as Ollama does): the same conversation on /api/chat.
NATIVE_OF_V1 = [{"role": "user", "content": QUESTION}, {"role": "user", "content": ""}]


def test_openai_client_image_url_data(srv: HerdServer, c: httpx.Client, vision: dict[str, Any]) -> None:
    """`image_url` parts with data: URLs, through the `openai` client, streamed and not: the text depends on the
    image, streaming joins to the same text, usage counts the image, and the text equals /api/chat's for the same
    rendered prompt and options (checked with `_debug_render_only` first). Not answer quality."""
    client = openai_client(srv.url)
    red = openai_text(client, data_url(RED))
    assert red and red != openai_text(client, data_url(BLUE))
    assert openai_text(client, data_url(RED)) == red

    stream = client.chat.completions.create(model=VISION, messages=openai_messages(data_url(RED)),  # type: ignore[arg-type]
                                            temperature=0, seed=OPTS["seed"], max_tokens=OPTS["num_predict"],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == red
    usage = chunks[-1].usage
    assert usage is not None

    native = [dict(NATIVE_OF_V1[0]), {**NATIVE_OF_V1[1], "images": [b64(RED)]}]
    v1_render = c.post("/v1/chat/completions", json={"model": VISION, "messages": openai_messages(data_url(RED)),
                                                     "_debug_render_only": True}).json()["_debug_info"]
    native_render = rendered(c, native)
    assert v1_render == native_render and v1_render["image_count"] == 1
    native_doc = chat(c, native)
    assert native_doc["message"]["content"] == red
    assert usage.prompt_tokens == native_doc["prompt_eval_count"]
    assert usage.prompt_tokens == chat(c, NATIVE_OF_V1)["prompt_eval_count"] + IMAGE_TOKENS

    # A data URL with a blank MIME type is read like the native API's bare base64; jpg is an alias of jpeg.
    assert openai_text(client, "data:;base64," + b64(RED)) == red
    jpeg = image_bytes("jpeg", 32, 32, 5)
    assert openai_text(client, data_url(jpeg, "image/jpg")) == openai_text(client, data_url(jpeg, "image/jpeg"))


class ImageHost:
    """A loopback HTTP server in a thread: serves `files` by path, counts every request it gets."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.hits: list[str] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host.hits.append(self.path)
                data = host.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost({"/red.png": RED, "/blue.png": BLUE, "/big.png": png_bytes(150, 150, 3)})
    yield host
    host.close()


def test_remote_image_url_is_refused_by_default(srv: HerdServer, c: httpx.Client, vision: dict[str, Any],
                                                image_host: ImageHost) -> None:
    """Without HERD_ALLOW_IMAGE_URLS, an http(s) image URL is a 400 with the refusal text, and the server never
    fetches it (the loopback host sees no request) nor runs the model. Cannot prove the same for every URL form."""
    before = counters(c)
    hits = len(image_host.hits)
    with pytest.raises(openai.BadRequestError) as info:
        openai_text(openai_client(srv.url), image_host.url("/red.png"))
    assert info.value.status_code == 400 and IMAGE_URLS_REFUSED in info.value.message
    for url in (image_host.url("/red.png"), "https://example.com/cat.png"):
        resp = c.post("/v1/chat/completions", json={"model": VISION, "messages": openai_messages(url)})
        assert resp.status_code == 400 and resp.json()["error"]["message"] == IMAGE_URLS_REFUSED, resp.text
    assert len(image_host.hits) == hits
    assert counters(c) == before


# ---- 2 and 6: an Ollama store served in place, fetching image URLs -----------------------------------------


def _blob(root: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_ollama_vision_store(root: Path, projector: Path) -> None:
    """The layout `ollama pull` leaves for a vision model: manifest, GGUF, projector, Go template, params."""
    (root / "blobs").mkdir(parents=True)
    gguf = default_model_file()
    assert gguf is not None
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    os.symlink(gguf, root / "blobs" / f"sha256-{digest}")
    layers = [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": gguf.stat().st_size},
        {"mediaType": "application/vnd.ollama.image.projector", **_blob(root, projector.read_bytes())},
        {"mediaType": "application/vnd.ollama.image.template", **_blob(root, CHATML_GO.encode())},
        {"mediaType": "application/vnd.ollama.image.params",
         **_blob(root, json.dumps({"stop": ["<|im_start|>", "<|im_end|>"]}).encode())},
    ]
    config = {"mediaType": "application/vnd.docker.container.image.v1+json",
              **_blob(root, json.dumps({"model_format": "gguf", "model_family": "llama", "model_families": ["llama", "clip"],
                                        "model_type": "134.52M", "file_type": "Q4_1"}).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": config, "layers": layers}
    path = root / "manifests" / "registry.ollama.ai" / "library" / "smolvision-store" / "latest"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def second(tmp_path_factory: pytest.TempPathFactory, projector: Path) -> Iterator[HerdServer]:
    """A short-lived server on an Ollama-layout store (no default model), fetching image URLs."""
    root = tmp_path_factory.mktemp("ollama-vision-store")
    make_ollama_vision_store(root, projector)
    server = HerdServer(models_dir=root, env={**ENV, "HERD_NUM_PARALLEL": "1", "HERD_NO_DEFAULT_MODEL": "1",
                                              "HERD_ALLOW_IMAGE_URLS": "1"}).start()
    yield server
    server.stop()


def test_ollama_store_vision_model_served_in_place(second: HerdServer) -> None:
    """A model in an Ollama store whose manifest has a projector layer is listed, shown with `vision`, and answers
    chats whose text depends on the image, without a copy of any blob. Proves herd reads Ollama's projector
    layer; not that a real Ollama vision model would run (only this synthetic projector)."""
    blobs = second.models_dir / "blobs"
    before = sorted(p.name for p in blobs.iterdir())
    with httpx.Client(base_url=second.url, timeout=120) as h:
        assert [m["name"] for m in h.get("/api/tags").json()["models"]] == [STORE_VISION]
        shown = h.post("/api/show", json={"model": STORE_VISION}).json()
        assert "vision" in shown["capabilities"] and shown["projector_info"]["clip.projector_type"] == "mlp"
        assert shown["template"] == CHATML_GO
        info = rendered(h, [{"role": "user", "content": QUESTION, "images": [b64(RED)]}], model=STORE_VISION)
        assert info["rendered_template"] == f"<|im_start|>user\n[img-0]{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
        red, blue, again = (ask(h, img, model=STORE_VISION) for img in (RED, BLUE, RED))
        assert red["message"]["content"] and red["message"]["content"] != blue["message"]["content"]
        assert red["message"]["content"] == again["message"]["content"]
        assert red["prompt_eval_count"] == ask(h, model=STORE_VISION)["prompt_eval_count"] + IMAGE_TOKENS
    assert sorted(p.name for p in blobs.iterdir()) == before


def test_allowed_image_url_is_fetched_and_equals_the_data_url(second: HerdServer, image_host: ImageHost) -> None:
    """With HERD_ALLOW_IMAGE_URLS=1, an image_url naming a loopback HTTP server is fetched once and gives the same
    text as the same bytes sent as a data URL; a missing one and one over HERD_MAX_IMAGE_BYTES are 400s naming
    the URL. Proves the fetch path; not redirects or TLS."""
    client = openai_client(second.url)
    hits = len(image_host.hits)
    fetched = openai_text(client, image_host.url("/red.png"), model=STORE_VISION)
    assert image_host.hits[hits:] == ["/red.png"]
    assert fetched and fetched == openai_text(client, data_url(RED), model=STORE_VISION)
    assert openai_text(client, image_host.url("/blue.png"), model=STORE_VISION) != fetched

    with httpx.Client(base_url=second.url, timeout=120) as h:
        missing = image_host.url("/missing.png")
        resp = h.post("/v1/chat/completions", json={"model": STORE_VISION, "messages": openai_messages(missing)})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["message"] == f"could not fetch image {missing}: HTTP 404"
        big = image_host.url("/big.png")
        assert len(image_host.files["/big.png"]) > MAX_IMAGE_BYTES
        resp = h.post("/v1/chat/completions", json={"model": STORE_VISION, "messages": openai_messages(big)})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["message"] == f"image at {big} exceeds the limit of {MAX_IMAGE_BYTES} bytes"
        # The server still answers.
        assert ask(h, RED, model=STORE_VISION)["message"]["content"]


# ---- 7: image formats --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "gif", "bmp"])
def test_each_accepted_format_reaches_the_model(c: httpx.Client, vision: dict[str, Any], fmt: str) -> None:
    """PNG, JPEG, WebP, GIF and BMP are all decoded (by Pillow, in the server) and generate with IMAGE_TOKENS
    more prompt tokens, and a text that differs from the text-only one. Cannot prove every variant of each
    format (interlaced, CMYK, 16-bit ...) decodes."""
    doc = ask(c, image_bytes(fmt, 24, 40, 21))
    assert doc["eval_count"] > 0 and doc["message"]["content"]
    assert doc["prompt_eval_count"] == ask(c)["prompt_eval_count"] + IMAGE_TOKENS
    assert doc["message"]["content"] != ask(c)["message"]["content"]


def test_same_pixels_in_lossless_formats_give_the_same_text(c: httpx.Client, vision: dict[str, Any]) -> None:
    """The same pixels as PNG, BMP and lossless WebP (checked equal after decoding with Pillow) give the same
    text, and an animated GIF is read by its first frame. Proves the model sees pixels, not file bytes (the
    prompt cache names images by their bytes, so these are cache misses that still agree); not JPEG's output."""
    from PIL import Image

    pixels = image(32, 32, 31)
    files = {fmt: encode(pixels, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
             for fmt in ("PNG", "BMP", "WEBP")}
    for data in files.values():
        with Image.open(io.BytesIO(data)) as img:
            assert img.convert("RGB").tobytes() == pixels.tobytes()
    assert len({hashlib.sha256(d).digest() for d in files.values()}) == 3
    texts = {fmt: ask(c, data)["message"]["content"] for fmt, data in files.items()}
    assert texts["PNG"] and texts["BMP"] == texts["PNG"] and texts["WEBP"] == texts["PNG"]

    red, blue = image(32, 32, (200, 30, 30)), image(32, 32, (30, 30, 200))
    buf = io.BytesIO()
    red.save(buf, format="GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        assert img.n_frames == 2 and img.convert("RGB").tobytes() == red.tobytes()
    gif = ask(c, buf.getvalue())["message"]["content"]
    assert gif == ask(c, RED)["message"]["content"] and gif != ask(c, BLUE)["message"]["content"]


# ---- 8: prompt cache ---------------------------------------------------------------------------------------


def test_image_kv_is_reused_by_content(c: httpx.Client, vision: dict[str, Any]) -> None:
    """On a freshly loaded runner, a second turn that repeats the first turn's image in its history serves the
    whole first prompt, image included, from the slot's KV (prompt_cached); the same turn with another image
    there reuses only the text before the image and evaluates the rest. Proves the cache names an image by its
    content; cannot see inside the KV (only the runner's counters)."""
    first_text = "Cache check, turn one. What is in this picture?"
    a, b = png_bytes(32, 32, 801), png_bytes(32, 32, 802)
    turn1 = [{"role": "user", "content": first_text, "images": [b64(a)]}]
    prefix = rendered(c, turn1)["rendered_template"].split("[img-0]")[0]
    # The tokens before the image: the prompt's first text piece, tokenized as the prompt's first piece is.
    before_image = generate(c, prompt=prefix, raw=True, options={**OPTS, "num_predict": 1})["prompt_eval_count"]

    unload = c.post("/api/chat", json={"model": VISION, "messages": [], "keep_alive": 0})
    assert unload.status_code == 200 and unload.json()["done_reason"] == "unload"
    assert c.post("/api/chat", json={"model": VISION, "messages": []}).json()["done_reason"] == "load"
    assert counters(c) == (0, 0)  # a new runner: nothing evaluated, nothing cached

    r1 = chat(c, turn1)
    after1 = counters(c)
    assert after1 == (r1["prompt_eval_count"], 0)

    def turn2(img: bytes) -> list[dict[str, Any]]:
        return [{"role": "user", "content": first_text, "images": [b64(img)]}, r1["message"],
                {"role": "user", "content": "And what else is there?"}]

    r2 = chat(c, turn2(a))
    after2 = counters(c)
    evaluated, cached = after2[0] - after1[0], after2[1] - after1[1]
    assert evaluated + cached == r2["prompt_eval_count"]
    assert cached >= r1["prompt_eval_count"] >= before_image + IMAGE_TOKENS  # turn one's prompt, its image too
    assert evaluated < 40  # turn one's answer and the new question only

    r2b = chat(c, turn2(b))
    after2b = counters(c)
    evaluated_b, cached_b = after2b[0] - after2[0], after2b[1] - after2[1]
    assert r2b["prompt_eval_count"] == r2["prompt_eval_count"]  # the same length: only the image differs
    assert cached_b == before_image  # a miss from the image on
    assert evaluated_b == r2b["prompt_eval_count"] - before_image


# ---- 9: bad input ------------------------------------------------------------------------------------------


def png_of_size(size: int) -> bytes:
    """A valid PNG of exactly `size` bytes (a tEXt chunk pads it)."""
    from PIL import PngImagePlugin

    base = png_bytes(32, 32, 5)
    key = "pad"
    pad = size - len(base) - 12 - len(key) - 1
    assert pad >= 0
    info = PngImagePlugin.PngInfo()
    info.add_text(key, "x" * pad)
    data = encode(image(32, 32, 5), "PNG", pnginfo=info)
    assert len(data) == size
    return data


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels: signature, IHDR, IEND (no pixels at all)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


NOT_AN_IMAGE = b"this is plain text, not an image at all"
TIFF = encode(image(32, 32, 9), "TIFF")
TRUNCATED = png_bytes(32, 32, 9)[:600]
DECODE = "invalid image input: the image cannot be decoded (PNG, JPEG, WebP, GIF and BMP are accepted)"
TOO_BIG = png_of_size(MAX_IMAGE_BYTES + 1)
JUST_FITS = png_of_size(MAX_IMAGE_BYTES)
TOO_MANY = f"{MAX_IMAGES + 1} images exceed the limit of {MAX_IMAGES} per request"
BYTES_LIMIT = f"image of {MAX_IMAGE_BYTES + 1} bytes exceeds the limit of {MAX_IMAGE_BYTES} bytes"
PIXELS_LIMIT = f"image of 9000x9000 pixels exceeds the limit of {MAX_PIXELS} pixels"

# (images as sent, the model, the error the native APIs answer)
BAD_NATIVE: list[tuple[list[str], str, str]] = [
    (["abc$def"], VISION, "illegal base64 data at input byte 3"),
    ([b64(RED), "iVBORw0KGgo!"], VISION, "illegal base64 data at input byte 11"),
    ([b64(NOT_AN_IMAGE)], VISION, DECODE),
    ([b64(TIFF)], VISION, DECODE),
    ([b64(TRUNCATED)], VISION, DECODE),
    ([""], VISION, DECODE),
    ([b64(png_header_only(9000, 9000))], VISION, PIXELS_LIMIT),
    ([b64(TOO_BIG)], VISION, BYTES_LIMIT),
    ([b64(RED)] * (MAX_IMAGES + 1), VISION, TOO_MANY),
    ([b64(RED)], MODEL, "does not support vision"),
]


def assert_refused(resp: httpx.Response, expected: str) -> None:
    assert resp.status_code == 400, (expected, resp.status_code, resp.text[:300])
    body = resp.json()
    message = body["error"]["message"] if isinstance(body["error"], dict) else body["error"]
    assert expected in message, (expected, message)


def assert_untouched(srv: HerdServer, c: httpx.Client, before: tuple[int, int], pids: list[int]) -> None:
    """No runner got a request, none was started (the default model stays unloaded), and the server still serves."""
    assert counters(c) == before
    assert sorted(srv.runner_pids()) == pids
    assert [m["name"] for m in c.get("/api/ps").json()["models"]] == [VISION]
    good = ask(c, RED)
    assert good["message"]["content"] and good["prompt_eval_count"] == ask(c)["prompt_eval_count"] + IMAGE_TOKENS


def test_bad_images_on_api_chat_are_400s_before_any_work(srv: HerdServer, c: httpx.Client,
                                                         vision: dict[str, Any]) -> None:
    """Each bad image on /api/chat is a 400 with a clear message (Go's base64 wording, "cannot be decoded", the
    limit it passes, "does not support vision"), whether in the last message or earlier in the history, and no
    runner sees the request. Right after, a good request works. Proves the checks run in the server first; not
    that every malformed file is caught (Pillow decides)."""
    ask(c, RED)  # the vision runner is loaded and warm
    before, pids = counters(c), sorted(srv.runner_pids())
    for images, model, expected in BAD_NATIVE:
        for where in ("last", "history"):
            msgs: list[dict[str, Any]] = [{"role": "user", "content": QUESTION, "images": images}]
            if where == "history":
                msgs += [{"role": "assistant", "content": "Nice."}, {"role": "user", "content": "Tell me more."}]
            for stream in (False, True):
                resp = c.post("/api/chat", json={"model": model, "stream": stream, "messages": msgs, "options": OPTS})
                assert_refused(resp, expected)
    # The image count is per request: two messages of two images each are four.
    two = [b64(RED), b64(BLUE)]
    resp = c.post("/api/chat", json={"model": VISION, "stream": False, "messages": [
        {"role": "user", "content": "one", "images": two}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "two", "images": two}]})
    assert_refused(resp, TOO_MANY)
    assert_untouched(srv, c, before, pids)
    # At the limits exactly, a request is taken.
    assert ask(c, JUST_FITS)["prompt_eval_count"] == ask(c)["prompt_eval_count"] + IMAGE_TOKENS
    assert ask(c, *[RED] * MAX_IMAGES)["prompt_eval_count"] == ask(c)["prompt_eval_count"] + MAX_IMAGES * IMAGE_TOKENS


def test_bad_images_on_api_generate_are_400s_before_any_work(srv: HerdServer, c: httpx.Client,
                                                             vision: dict[str, Any]) -> None:
    """The same bad images on /api/generate: the same 400s, streamed or not, no runner work, and a good request
    right after. As for chat, which malformed files are caught is Pillow's call, not proven for all."""
    ask(c, RED)
    before, pids = counters(c), sorted(srv.runner_pids())
    for images, model, expected in BAD_NATIVE:
        for stream in (False, True):
            resp = c.post("/api/generate", json={"model": model, "prompt": QUESTION, "images": images,
                                                 "stream": stream, "options": OPTS})
            assert_refused(resp, expected)
    assert_untouched(srv, c, before, pids)
    assert generate(c, JUST_FITS)["prompt_eval_count"] == generate(c)["prompt_eval_count"] + IMAGE_TOKENS


def test_bad_image_urls_on_v1_are_400s_before_any_work(srv: HerdServer, c: httpx.Client,
                                                       vision: dict[str, Any]) -> None:
    """/v1/chat/completions: a data URL with bad base64 or a MIME type that is not an image is `invalid image
    input`, bytes that are no image "cannot be decoded", limits and non-vision models as on /api/chat, all 400s
    in OpenAI's error shape, with no runner work; a good request right after works. Cannot cover every way an
    OpenAI client may spell an image part (only `image_url` with a string `url`)."""
    ask(c, RED)
    before, pids = counters(c), sorted(srv.runner_pids())
    cases: list[tuple[list[str], str, str]] = [
        (["data:image/png;base64,abc$def"], VISION, "invalid image input"),
        (["data:text/plain;base64," + b64(RED)], VISION, "invalid image input"),
        (["image/png;base64," + b64(RED)], VISION, "invalid image input"),
        ([data_url(NOT_AN_IMAGE)], VISION, DECODE),
        ([data_url(TIFF, "image/png")], VISION, DECODE),
        ([data_url(TOO_BIG)], VISION, BYTES_LIMIT),
        ([data_url(RED)] * (MAX_IMAGES + 1), VISION, TOO_MANY),
        ([data_url(RED)], MODEL, "does not support vision"),
    ]
    for urls, model, expected in cases:
        parts: list[dict[str, Any]] = [{"type": "text", "text": QUESTION}]
        parts += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
        for stream in (False, True):
            resp = c.post("/v1/chat/completions", json={"model": model, "stream": stream, "max_tokens": 4,
                                                        "messages": [{"role": "user", "content": parts}]})
            assert_refused(resp, expected)
            assert resp.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as info:
        openai_text(openai_client(srv.url), "data:image/png;base64,abc$def")
    assert info.value.status_code == 400 and "invalid image input" in info.value.message
    assert_untouched(srv, c, before, pids)


def test_prompts_images_make_too_long_or_leave_unanswerable_are_400s(srv: HerdServer, c: httpx.Client,
                                                                      vision: dict[str, Any]) -> None:
    """A prompt whose text fits num_ctx but not with its image's tokens (only the runner knows how many an image
    takes) is the over-long-prompt 400, not a runner failure; a raw prompt that ends with an image (no text token to
    answer from) and one that names an image it does not have are 400s too. The runner keeps serving. Proves the
    refusals and their status; not how close to num_ctx a prompt may come (that is the runner's own count)."""
    ask(c, RED)
    long_text = "word " * 2040  # about 2041 tokens: fits 2048 alone, not with 16 image tokens
    cases = [
        ({"raw": True, "prompt": long_text, "images": [b64(RED)]}, "the prompt is longer than the context length"),
        ({"raw": True, "prompt": "Look: [img-0]", "images": [b64(RED)]}, "must not end with an image"),
        ({"raw": True, "prompt": "x [img-1] y", "images": [b64(RED)]}, "invalid image index: 1"),
    ]
    for extra, expected in cases:
        resp = c.post("/api/generate", json={"model": VISION, "stream": False, "options": OPTS, **extra})
        assert_refused(resp, expected)
    resp = c.post("/api/chat", json={"model": VISION, "stream": False, "options": OPTS, "messages": [
        {"role": "user", "content": "word " * 2010, "images": [b64(RED)]}]})
    assert_refused(resp, "the prompt is longer than the context length")
    good = ask(c, RED)
    assert good["message"]["content"] and good["prompt_eval_count"] == ask(c)["prompt_eval_count"] + IMAGE_TOKENS


# ---- 10: concurrency ---------------------------------------------------------------------------------------


def test_text_and_image_requests_at_once_match_each_alone(c: httpx.Client, vision: dict[str, Any]) -> None:
    """A text-only chat and a chat with an image on the same vision runner, sent at once (and again with the image
    request joining while a longer text stream runs), give the same greedy texts as each alone: an image's
    evaluation in one slot does not disturb the other slot's decoding. Cannot force the two into the very same
    decode step; the batch-level interleaving is the runner's unit tests' concern."""
    long_opts = {**OPTS, "num_predict": 48}
    text_only = {"model": VISION, "stream": False, "options": long_opts,
                 "messages": [{"role": "user", "content": "Tell me a story about a lighthouse keeper."}]}
    with_image = {"model": VISION, "stream": False, "options": OPTS,
                  "messages": [{"role": "user", "content": "Describe this image in detail.", "images": [b64(NOISE)]}]}

    def run(body: dict[str, Any]) -> str:
        resp = c.post("/api/chat", json=body)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["message"]["content"])

    alone = (run(text_only), run(with_image))
    assert all(alone)
    barrier = threading.Barrier(2)

    def at_once(body: dict[str, Any]) -> str:
        barrier.wait()
        return run(body)

    with cf.ThreadPoolExecutor(2) as pool:
        together = tuple(pool.map(at_once, (text_only, with_image)))
    assert together == alone

    # The image request joins a text stream that is already decoding.
    parts: list[str] = []
    with c.stream("POST", "/api/chat", json={**text_only, "stream": True}) as resp:
        lines = resp.iter_lines()
        first = json.loads(next(lines))
        assert first["done"] is False
        parts.append(first["message"]["content"])
        joined_image = run(with_image)
        for line in lines:
            if line:
                parts.append(json.loads(line)["message"]["content"])
    assert joined_image == alone[1] and "".join(parts) == alone[0]
