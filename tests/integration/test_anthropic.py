"""Anthropic's Messages API through a real server, with the official `anthropic` SDK and raw httpx: messages
(streamed and not), a forced tool round trip, images, count_tokens, stop sequences, and Anthropic-shaped errors.

The model is a 135M one on a small CPU: answers are kept to a few tokens at temperature 0, and nothing here depends
on what the answer says, only on its structure, its limits and its determinism."""

from __future__ import annotations

import base64
import json
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

QUESTION: list[Any] = [{"role": "user", "content": "Why is the sky blue? Answer in one short sentence."}]
WEATHER: Any = {"name": "weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
                            "required": ["city"], "additionalProperties": False}}
# The SDK no longer takes sampling settings as arguments (newer Claude models fix them); the API still accepts
# them, and herd honours them, so they go in the body as extra fields.
GREEDY = {"temperature": 0}
RAW_TYPES = ("message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta",
             "message_stop")


@pytest.fixture()
def client(server: HerdServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)


def sse(resp: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) per SSE event; every event's name is its data's type."""
    assert resp.text.endswith("\n\n")
    out = []
    for frame in resp.text.split("\n\n")[:-1]:
        name, data = frame.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        doc = json.loads(data[len("data: "):])
        assert doc["type"] == name[len("event: "):]
        out.append((doc["type"], doc))
    return out


def assert_error(resp: httpx.Response, status: int, kind: str, message: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert list(doc) == ["type", "error"] and doc["type"] == "error"
    assert list(doc["error"]) == ["type", "message"] and doc["error"]["type"] == kind
    if message is not None:
        assert doc["error"]["message"] == message
    return str(doc["error"]["message"])


def test_create(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model=MODEL, max_tokens=8, extra_body=GREEDY, messages=QUESTION)
    assert msg.id.startswith("msg_") and msg.type == "message" and msg.role == "assistant" and msg.model == MODEL
    assert len(msg.content) == 1 and msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason == "max_tokens" and msg.stop_sequence is None
    assert isinstance(msg.usage.input_tokens, int) and msg.usage.input_tokens > 10
    assert msg.usage.output_tokens == 8


def test_stream_matches_create(client: anthropic.Anthropic) -> None:
    args: dict[str, Any] = {"model": MODEL, "max_tokens": 8, "extra_body": GREEDY, "messages": QUESTION}
    whole = client.messages.create(**args)
    with client.messages.stream(**args) as stream:
        events = [e for e in stream if e.type in RAW_TYPES]
        final = stream.get_final_message()
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    # Blocks nest: each start is followed by deltas of its own index, then its stop, before the next start.
    open_index = None
    for event in events[1:-2]:
        if event.type == "content_block_start":
            assert open_index is None
            open_index = event.index
        elif event.type == "content_block_delta":
            assert event.index == open_index
        else:
            assert event.type == "content_block_stop" and event.index == open_index
            open_index = None
    assert open_index is None and "content_block_delta" in types
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in whole.content]  # temperature 0
    assert final.stop_reason == whole.stop_reason == "max_tokens"
    assert final.usage.input_tokens == whole.usage.input_tokens and final.usage.output_tokens == 8
    assert final.id.startswith("msg_") and final.id != whole.id


def test_sse_framing(http: httpx.Client) -> None:
    """The wire itself: message_start and a ping first, headers accepted and the query string ignored."""
    resp = http.post("/v1/messages?beta=true", json={"model": MODEL, "max_tokens": 3, "temperature": 0,
                                                     "stream": True, "messages": QUESTION},
                     headers={"anthropic-version": "2023-06-01", "anthropic-beta": "interleaved-thinking-2025-05-14",
                              "x-api-key": "anything"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = sse(resp)
    assert [t for t, _ in events[:3]] == ["message_start", "ping", "content_block_start"]
    start = events[0][1]["message"]
    assert list(start) == ["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"]
    assert start["content"] == [] and start["stop_reason"] is None
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 3 and delta["usage"]["input_tokens"] > 10
    assert events[-1] == ("message_stop", {"type": "message_stop"})


def test_forced_tool_round_trip(client: anthropic.Anthropic) -> None:
    """tool_choice names the tool, so a grammar forces a valid call from the first token; the result then goes
    back as a tool_result block and the next turn is an ordinary message."""
    question: Any = {"role": "user", "content": "What is the weather in Oslo?"}
    msg = client.messages.create(model=MODEL, max_tokens=48, extra_body=GREEDY, messages=[question],
                                 tools=[WEATHER], tool_choice={"type": "tool", "name": "weather"})
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert uses and all(b.name == "weather" and b.id.startswith("toolu_") for b in uses)
    for use in uses:
        jsonschema.validate(use.input, WEATHER["input_schema"])
    results = [{"type": "tool_result", "tool_use_id": b.id, "content": "12 degrees and sunny"} for b in uses]
    history: Any = [question, {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
                    {"role": "user", "content": results}]
    follow = client.messages.create(model=MODEL, max_tokens=8, extra_body=GREEDY, tools=[WEATHER],
                                    tool_choice={"type": "none"}, messages=history)
    assert follow.type == "message" and follow.content[0].type == "text" and follow.content[0].text
    assert follow.stop_reason in ("end_turn", "max_tokens")
    # tool_choice none leaves the definitions out, but the call and its result are in the prompt.
    assert follow.usage.input_tokens > client.messages.count_tokens(model=MODEL, messages=[question]).input_tokens + 10


def test_forced_tool_call_streamed(client: anthropic.Anthropic) -> None:
    args: dict[str, Any] = {"model": MODEL, "max_tokens": 48, "extra_body": GREEDY, "tools": [WEATHER],
                            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
                            "messages": [{"role": "user", "content": "What is the weather in Oslo?"}]}
    whole = client.messages.create(**args)
    with client.messages.stream(**args) as stream:
        types = [e.type for e in stream if e.type in RAW_TYPES]
        final = stream.get_final_message()
    assert final.stop_reason == whole.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert len(uses) == 1  # disable_parallel_tool_use: at most one call
    assert [(b.name, b.input) for b in uses] == [(b.name, b.input) for b in whole.content if b.type == "tool_use"]
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])
    assert types.count("content_block_start") == types.count("content_block_stop") == len(final.content)


def test_image_block(http: httpx.Client, client: anthropic.Anthropic) -> None:
    """The default model has no vision: a valid image block gets the capability 400 in Anthropic's shape. That
    proves the block is decoded and routed into the turn's images, not that a vision model sees it."""
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
    content: Any = [{"type": "text", "text": "What is this?"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}]
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": content}])
    assert exc.value.status_code == 400 and "does not support vision" in str(exc.value.message)
    resp = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 4,
                                           "messages": [{"role": "user", "content": content}]})
    assert "does not support vision" in assert_error(resp, 400, "invalid_request_error")
    bad = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "@@not base64@@"}}]
    resp = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 4,
                                           "messages": [{"role": "user", "content": bad}]})
    assert_error(resp, 400, "invalid_request_error", "messages.0.content.0.source.data: invalid base64 image data")


def test_count_tokens(client: anthropic.Anthropic) -> None:
    system = "You are terse."
    one = client.messages.count_tokens(model=MODEL, system=system, messages=QUESTION)
    more = client.messages.count_tokens(model=MODEL, system=system, messages=[
        *QUESTION, {"role": "assistant", "content": "Rayleigh scattering."}, {"role": "user", "content": "Why?"}])
    assert isinstance(one.input_tokens, int) and 10 < one.input_tokens < more.input_tokens
    with_tools = client.messages.count_tokens(model=MODEL, system=system, messages=QUESTION,
                                              tools=[WEATHER])
    assert with_tools.input_tokens > one.input_tokens  # the template renders the tool definitions
    # Both render the same prompt, so the count is what generation reports.
    msg = client.messages.create(model=MODEL, max_tokens=1, extra_body=GREEDY, system=system, messages=QUESTION)
    assert msg.usage.input_tokens == one.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model:1b", messages=QUESTION)


def test_stop_sequences(client: anthropic.Anthropic) -> None:
    base = client.messages.create(model=MODEL, max_tokens=16, extra_body=GREEDY, messages=QUESTION)
    text = base.content[0].text  # type: ignore[union-attr]
    words = text.split()
    assert len(words) >= 4, text
    # A word the model is sure to write at temperature 0, from its first occurrence on: it ends the answer there.
    stop = " " + words[2]
    cut = text.index(stop)
    msg = client.messages.create(model=MODEL, max_tokens=16, extra_body=GREEDY, messages=QUESTION,
                                 stop_sequences=[stop])
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == stop
    assert msg.content[0].text == text[:cut]  # type: ignore[union-attr]
    assert msg.usage.output_tokens < base.usage.output_tokens


def test_same_request_same_answer(client: anthropic.Anthropic) -> None:
    """top_p and top_k are passed on; at temperature 0 the answer is the same every time."""
    args: dict[str, Any] = {"model": MODEL, "max_tokens": 8, "messages": QUESTION,
                            "extra_body": {"temperature": 0, "top_k": 20, "top_p": 0.9}}
    texts = [client.messages.create(**args).content[0].text for _ in range(2)]  # type: ignore[union-attr]
    assert texts[0] == texts[1] and texts[0]


@pytest.mark.parametrize(
    ("body", "status", "kind", "message"),
    [
        ({"model": MODEL, "messages": QUESTION}, 400, "invalid_request_error", "max_tokens: Field required"),
        ({"model": MODEL, "max_tokens": "8", "messages": QUESTION}, 400, "invalid_request_error",
         "max_tokens: Input should be a valid integer"),
        ({"model": MODEL, "max_tokens": 8, "messages": "hi"}, 400, "invalid_request_error",
         "messages: Input should be a valid list"),
        ({"model": MODEL, "max_tokens": 8, "messages": QUESTION, "n": 2}, 400, "invalid_request_error",
         "n: Extra inputs are not permitted"),
        ({"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "document"}]}]}, 400,
         "invalid_request_error", "messages.0.content.0: content block type 'document' is not supported by herd"),
        ({"model": MODEL, "max_tokens": 8, "messages": QUESTION, "tools": [{"type": "web_search_20250305",
                                                                            "name": "web_search"}]},
         400, "invalid_request_error", "tools.0: tool type 'web_search_20250305' is not supported by herd"),
        ({"model": "no-such-model:1b", "max_tokens": 8, "messages": QUESTION}, 404, "not_found_error",
         "model 'no-such-model:1b' not found"),
        ({"model": "no-such-model:1b", "max_tokens": 8, "stream": True, "messages": QUESTION}, 404,
         "not_found_error", "model 'no-such-model:1b' not found"),
    ],
)
def test_errors_have_anthropic_shape(http: httpx.Client, body: dict[str, Any], status: int, kind: str,
                                     message: str) -> None:
    assert_error(http.post("/v1/messages", json=body), status, kind, message)


def test_bad_json_and_count_tokens_errors(http: httpx.Client) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        resp = http.post(path, content=b'{"model": ', headers={"content-type": "application/json"})
        assert_error(resp, 400, "invalid_request_error")
        assert_error(http.post(path, content=b""), 400, "invalid_request_error")
        assert_error(http.post(path, json=[1, 2]), 400, "invalid_request_error", "body: Input should be a valid "
                     "dictionary")
    assert_error(http.post("/v1/messages/count_tokens", json={"model": MODEL}), 400, "invalid_request_error",
                 "messages: Field required")
    assert_error(http.post("/v1/messages/count_tokens", json={"model": "nope:1b", "messages": QUESTION}), 404,
                 "not_found_error")


def test_errors_through_the_sdk(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=MODEL, max_tokens=0, messages=QUESTION)
    assert bad.value.status_code == 400 and bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model:1b", max_tokens=4, messages=QUESTION)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError), client.messages.stream(model="no-such-model:1b", max_tokens=4,
                                                                         messages=QUESTION) as stream:
        stream.get_final_message()


def test_claude_code_request_shape_on_a_model_without_thinking(http: httpx.Client) -> None:
    """What Claude Code 2.1 sends with every turn (captured from it): adaptive thinking with an effort, context
    management that clears thinking, a metadata user id, `?beta=true`. On a model without thinking the effort is
    a preference, so the turn is answered (not refused), streamed as Claude Code asks."""
    body = {"model": MODEL, "max_tokens": 8, "stream": True, "temperature": 0, "messages": QUESTION,
            "system": [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}],
            "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
            "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
            "metadata": {"user_id": "{\"device_id\":\"d\"}"}}
    resp = http.post("/v1/messages?beta=true", json=body, headers={"anthropic-version": "2023-06-01",
                                                                    "anthropic-beta": "claude-code-20250219"})
    assert resp.status_code == 200, resp.text
    events = sse(resp)
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
    assert not any(name == "content_block_start" and data["content_block"]["type"] == "thinking"
                   for name, data in events)
    # Asked to think explicitly, the same model is refused, as Anthropic refuses thinking on a model without it.
    refused = http.post("/v1/messages", json={**body, "stream": False,
                                              "thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048})
    assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"
