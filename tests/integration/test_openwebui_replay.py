"""Replays the request bodies Open WebUI 0.12.4 sent to an Ollama server (captured through bench/openwebui_proxy.py,
see fixtures/openwebui/README.md) and checks each gets what Ollama would answer.

The bodies are sent byte for byte as captured, streamed where Open WebUI streamed, with its default settings: that
includes the built-in tool list (about 25 KB) that Open WebUI sends with every chat, which is what broke the first
chat on herd (issue 11, points 2 and 3). Only structure, limits and status are asserted, never the 135M model's text.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures" / "openwebui"
METRICS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
           "eval_duration")
# The first chat prefills ~7k tokens of tool definitions before its first token: minutes on a loaded 2-core machine.
SLOW = httpx.Timeout(30.0, read=600.0)


def fixture(name: str) -> dict[str, Any]:
    body = json.loads((FIXTURES / name).read_text())
    assert isinstance(body, dict)
    return body


def post_streamed(client: httpx.Client, path: str, body: dict[str, Any],
                  deadline_s: float = 600.0) -> list[dict[str, Any]]:
    """Reads the whole NDJSON stream; every line must parse. Bounded by deadline_s."""
    docs: list[dict[str, Any]] = []
    start = time.monotonic()
    with client.stream("POST", path, json=body, timeout=SLOW) as resp:
        assert resp.status_code == 200, resp.read().decode()[:500]
        assert resp.headers["content-type"] == "application/x-ndjson"
        for line in resp.iter_lines():
            if line.strip():
                docs.append(json.loads(line))
            assert time.monotonic() - start < deadline_s, f"stream still running after {deadline_s:.0f} s"
    return docs


def assert_final(doc: dict[str, Any]) -> None:
    assert "error" not in doc, doc
    assert doc["done"] is True
    assert doc["done_reason"] in ("stop", "length", "load", "unload"), doc
    for key in METRICS:
        assert isinstance(doc.get(key), int) and doc[key] >= 0, (key, doc)
    assert doc["eval_count"] >= 1 and doc["prompt_eval_count"] >= 1


def last_assistant(body: dict[str, Any]) -> str:
    msg = body["messages"][-1]
    assert msg["role"] == "assistant", "the continue fixture must end with the assistant message being continued"
    return str(msg["content"])


def active_sequences(client: httpx.Client) -> int:
    return sum(int(r.get("active", 0)) for r in client.get("/api/herd/runners", timeout=30).json()["runners"])


# ---- what the fixtures are ---------------------------------------------------------------------------------------


def test_fixtures_are_open_webui_defaults() -> None:
    """Guards the fixtures themselves: the first chat carries Open WebUI's full default tool list, unedited."""
    first = fixture("first_chat.json")
    assert first["model"] == MODEL and first["stream"] is True
    tools = first.get("tools")
    assert isinstance(tools, list) and len(tools) >= 10
    assert len(json.dumps(tools).encode()) > 15_000
    assert all(t.get("type") == "function" and t["function"].get("name") for t in tools)
    assert fixture("continue.json")["messages"][-1]["role"] == "assistant"
    assert fixture("title_generation.json")["stream"] is False


# ---- the replays -------------------------------------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_first_chat_streams_a_real_answer(server: HerdServer, http: httpx.Client) -> None:
    # Needs the lead's fix for issue 11 point 2: the default model registered with a tool-capable template (else
    # 400 "does not support tools") and a context that holds the tool list (else the answer is one token).
    docs = post_streamed(http, "/api/chat", fixture("first_chat.json"))
    assert len(docs) >= 2
    for doc in docs[:-1]:
        assert doc["done"] is False and doc["model"] == MODEL and doc["message"]["role"] == "assistant"
    final = docs[-1]
    assert_final(final)
    assert final["eval_count"] > 1, "a one-token answer: the prompt did not fit the context"
    text = "".join(d["message"].get("content", "") for d in docs)
    calls = [c for d in docs for c in d["message"].get("tool_calls", [])]
    assert text.strip() or calls, "no content and no tool call"
    offered = {t["function"]["name"] for t in fixture("first_chat.json")["tools"]}
    assert all(c["function"]["name"] in offered for c in calls)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", ["title_generation.json", "follow_up_generation.json"])
def test_background_task_answers_one_object(http: httpx.Client, name: str) -> None:
    # Open WebUI's title and follow-up tasks are stream:false chats; it reads message.content and parses JSON out
    # of it itself, so only the envelope is Ollama's contract (the 135M model's JSON may not parse).
    # Open WebUI sets no num_predict here; unbounded, one sampled answer in many rambles on for thousands of tokens
    # (a CI run timed out at 600 s). The envelope is the same at any length, so the test bounds it.
    body = fixture(name)
    body["options"] = {**body.get("options", {}), "num_predict": 256}
    resp = http.post("/api/chat", json=body, timeout=SLOW)
    assert resp.status_code == 200, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert_final(doc)
    assert doc["message"]["role"] == "assistant" and isinstance(doc["message"]["content"], str)


@pytest.mark.timeout(900)
def test_continue_renders_the_last_assistant_message_open(http: httpx.Client) -> None:
    # Needs the lead's fix for issue 11 point 3: a trailing assistant message is rendered open (no end-of-turn
    # marker, no new assistant header after it), as Ollama does, so the model continues it.
    body = copy.deepcopy(fixture("continue.json"))
    body.update({"_debug_render_only": True, "stream": False})
    resp = http.post("/api/chat", json=body, timeout=SLOW)
    assert resp.status_code == 200, resp.text[:500]
    rendered = resp.json()["_debug_info"]["rendered_template"]
    partial = last_assistant(body)
    assert partial.strip() and partial.strip() in rendered
    assert rendered.endswith(partial) or rendered.rstrip().endswith(partial.rstrip()), \
        f"the prompt goes on after the partial answer: {rendered[-200:]!r}"


@pytest.mark.timeout(900)
def test_continue_streams_as_open_webui_sent_it(http: httpx.Client) -> None:
    # The body as Open WebUI sent it (no num_predict): the continuation must stream and end like any answer. A seed
    # is added: unseeded, one sampled continuation in many runs past 16k tokens (the -1 bound), minutes on 2 cores.
    body = fixture("continue.json")
    body["options"] = {**body.get("options", {}), "seed": 3}
    docs = post_streamed(http, "/api/chat", body)
    assert_final(docs[-1])
    assert all(d["message"]["role"] == "assistant" for d in docs)


@pytest.mark.timeout(900)
def test_stop_mid_stream_frees_the_slot_and_the_server_serves_on(http: httpx.Client) -> None:
    body = fixture("stop.json")
    lines_read = 0
    with http.stream("POST", "/api/chat", json=body, timeout=SLOW) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.strip():
                doc = json.loads(line)
                assert doc.get("done") is False, "the answer ended before the stop"
                lines_read += 1
            if lines_read >= 1:
                break  # the user presses stop after the first token: the client closes the connection mid-stream
    assert lines_read == 1
    deadline = time.monotonic() + 30
    while active_sequences(http) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert active_sequences(http) == 0, "a slot is still busy after the client left"
    after = http.post("/api/chat", timeout=SLOW, json={
        "model": MODEL, "stream": False, "messages": [{"role": "user", "content": "Say hello."}],
        "options": {"temperature": 0, "num_predict": 4}})
    assert after.status_code == 200
    assert after.json()["done"] is True and after.json()["eval_count"] >= 1
