"""Resource bounds through a real server started with small limits: each request past a bound is a quick, clear 400
(never an out-of-memory server), and requests waiting for a slot are bounded by OLLAMA_MAX_QUEUE (503).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

BUSY = "server busy, please try again.  maximum pending requests exceeded"
LIMITS_ENV = {
    "OLLAMA_NUM_PARALLEL": "1", "OLLAMA_MAX_QUEUE": "1", "HERD_CONTEXT_LENGTH": "1024", "HERD_NUM_THREAD": "1",
    "HERD_MAX_BODY_BYTES": "200000", "HERD_MAX_BLOB_BYTES": "100000", "HERD_MAX_MESSAGES": "4",
    "HERD_MAX_IMAGES": "1", "HERD_MAX_IMAGE_BYTES": "1000", "HERD_MAX_TOOLS": "2", "HERD_MAX_NUM_CTX": "2048",
    "HERD_MAX_NUM_PREDICT": "4096", "HERD_MAX_NUM_BATCH": "1024",
}
HI = [{"role": "user", "content": "hi"}]
SHORT = {"num_predict": 2, "temperature": 0}
LONG = {"num_predict": 4000, "temperature": 2.0, "top_k": 0, "top_p": 1.0, "seed": 7}


@pytest.fixture(scope="module")
def bounded() -> Iterator[HerdServer]:
    srv = HerdServer(env=LIMITS_ENV)
    for name in ("HERD_NUM_PARALLEL", "HERD_MAX_QUEUE"):  # the HERD_ names would win over the OLLAMA_ ones
        srv.env.pop(name, None)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture()
def h(bounded: HerdServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bounded.url, timeout=60) as client:
        yield client


def tool(name: str) -> dict[str, object]:
    return {"type": "function", "function": {"name": name, "description": "x",
                                             "parameters": {"type": "object", "properties": {}}}}


def assert_400(resp: httpx.Response, text: str, openai: bool = False) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert text in (error["message"] if openai else error), error


def test_body_size_is_bounded_on_every_json_route(h: httpx.Client) -> None:
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 300_000}]}
    for path in ("/api/chat", "/api/generate", "/api/show", "/api/embed", "/api/create", "/api/copy", "/api/pull"):
        t0 = time.monotonic()
        assert_400(h.post(path, json=big), "request body too large (limit 200000 bytes)")
        assert time.monotonic() - t0 < 5
    assert_400(h.request("DELETE", "/api/delete", json=big), "too large")
    assert_400(h.post("/v1/chat/completions", json=big), "too large", openai=True)
    assert_400(h.post("/v1/embeddings", json=big), "too large", openai=True)

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"'
        for _ in range(40):
            yield b"y" * 10_000
        yield b'"}]}'

    assert_400(h.post("/api/chat", content=chunked()), "too large")
    ok = h.post("/api/chat", json={"model": MODEL, "messages": HI, "stream": False, "options": SHORT})
    assert ok.status_code == 200


def test_blob_uploads_have_their_own_limit(h: httpx.Client, bounded: HerdServer) -> None:
    data = b"z" * 150_000  # past the blob limit (100 kB), under the JSON body limit
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert_400(h.post(f"/api/blobs/{digest}", content=data), "blob too large (limit 100000 bytes)")
    assert_400(h.post(f"/api/blobs/{digest}", content=iter([data[:60_000], data[60_000:]])), "blob too large")
    blobs = bounded.models_dir / "blobs"
    assert not (blobs / digest.replace(":", "-")).exists()
    assert not list(blobs.glob(".tmp-*"))
    small = b"s" * 50_000
    assert h.post(f"/api/blobs/sha256:{hashlib.sha256(small).hexdigest()}", content=small).status_code == 201


@pytest.mark.parametrize(("options", "text"), [
    ({"num_ctx": 4096}, "num_ctx 4096 exceeds the limit of 2048"),
    ({"num_predict": 5000}, "num_predict 5000 exceeds the limit of 4096"),
    ({"num_batch": 2048}, "num_batch 2048 exceeds the limit of 1024"),
])
def test_option_values_are_bounded(h: httpx.Client, options: dict[str, int], text: str) -> None:
    assert_400(h.post("/api/chat", json={"model": MODEL, "messages": HI, "options": options}), text)
    assert_400(h.post("/api/generate", json={"model": MODEL, "prompt": "hi", "options": options}), text)


def test_openai_max_tokens_is_bounded(h: httpx.Client) -> None:
    resp = h.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 5000})
    assert_400(resp, "num_predict 5000 exceeds the limit of 4096", openai=True)


def test_message_image_and_tool_counts_are_bounded(h: httpx.Client) -> None:
    five = [{"role": "user", "content": str(i)} for i in range(5)]
    assert_400(h.post("/api/chat", json={"model": MODEL, "messages": five}), "5 messages exceed the limit of 4")
    assert_400(h.post("/v1/chat/completions", json={"model": MODEL, "messages": five}), "5 messages", openai=True)
    tiny = base64.b64encode(b"\x89PNG" + b"\0" * 100).decode()
    two = [{"role": "user", "content": "look", "images": [tiny, tiny]}]
    assert_400(h.post("/api/chat", json={"model": MODEL, "messages": two}), "2 images exceed the limit of 1")
    large = base64.b64encode(b"\0" * 2000).decode()
    assert_400(h.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "x",
                                                                        "images": [large]}]}),
               "image of 2000 bytes exceeds the limit of 1000 bytes")
    assert_400(h.post("/api/generate", json={"model": MODEL, "prompt": "x", "images": [tiny, tiny]}), "2 images")
    tools = [tool("a"), tool("b"), tool("c")]
    assert_400(h.post("/api/chat", json={"model": MODEL, "messages": HI, "tools": tools}),
               "3 tools exceed the limit of 2")
    # Within the bounds the request goes on to the usual checks (this model has no vision).
    one = h.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "x", "images": [tiny]}]})
    assert one.status_code == 400 and "does not support vision" in one.json()["error"]


def test_requests_waiting_for_a_slot_are_bounded(h: httpx.Client, bounded: HerdServer) -> None:
    """OLLAMA_NUM_PARALLEL=1 and OLLAMA_MAX_QUEUE=1: one stream runs, one request waits, the next gets 503."""
    assert h.post("/api/chat", json={"model": MODEL, "messages": []}).status_code == 200  # load
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}], "options": LONG}
    waited: list[httpx.Response] = []

    def wait_for_slot() -> None:
        with httpx.Client(base_url=bounded.url, timeout=60) as c:
            waited.append(c.post("/api/chat", json={"model": MODEL, "messages": HI, "stream": False,
                                                    "options": SHORT}))

    with httpx.Client(base_url=bounded.url, timeout=60) as runner:
        with runner.stream("POST", "/api/chat", json=body) as stream:
            lines = stream.iter_lines()
            assert '"done":false' in next(lines)  # it holds the only slot
            waiter = threading.Thread(target=wait_for_slot)
            waiter.start()
            time.sleep(1.0)  # the waiter is queued for the slot
            t0 = time.monotonic()
            busy = h.post("/api/chat", json={"model": MODEL, "messages": HI, "stream": False})
            assert busy.status_code == 503 and busy.json() == {"error": BUSY}
            assert time.monotonic() - t0 < 2
            openai = h.post("/v1/chat/completions", json={"model": MODEL, "messages": HI})
            assert openai.status_code == 503 and openai.json()["error"]["message"] == BUSY
            assert not waited  # still waiting
        # Leaving the stream cancels it: the waiter gets the slot.
        waiter.join(timeout=30)
    assert waited and waited[0].status_code == 200, waited
    assert json.loads(waited[0].text)["done"] is True
