"""The OpenAI translation without a server: request mapping (spec 9.1, 9.2, 9.4) and the chunk translation for
what the default model cannot produce (thinking, tool calls)."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from herd.api.openai import translate as compat
from herd.api.openai import wire
from herd.errors import InvalidRequest
from herd.parsing.base import ToolCall
from herd.services.chat import ChatChunk, Metrics
from herd.services.embed import EmbedResult
from herd.types import Think

TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


def turn(**body: Any) -> Any:
    body.setdefault("model", "m")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return compat.chat_turn(wire.ChatCompletionRequest.model_validate(body))


def test_sampling_defaults_and_options() -> None:
    assert turn().options == {"temperature": 1.0, "top_p": 1.0}
    t = turn(max_tokens=5, stop="x", seed=3, temperature=0.2, top_p=0.5, frequency_penalty=0.1,
             presence_penalty=0.3, max_completion_tokens=99)
    # max_completion_tokens (newer SDKs) wins over the deprecated max_tokens; Ollama ignores it, herd reads it
    assert t.options == {"stop": ["x"], "num_predict": 99, "temperature": 0.2, "seed": 3, "frequency_penalty": 0.1,
                         "presence_penalty": 0.3, "top_p": 0.5}
    assert turn(max_tokens=5).options["num_predict"] == 5
    assert turn(max_completion_tokens=7).options["num_predict"] == 7
    assert turn(stop=["a", 1, "b"]).options["stop"] == ["a", "b"]  # chat drops non-strings silently


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "json_object"}, "json"),
        ({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}}, {"type": "object"}),
        ({"type": "text"}, None),
        (None, None),
    ],
)
def test_response_format(response_format: object, expected: object) -> None:
    assert turn(response_format=response_format).format == expected


@pytest.mark.parametrize(
    ("effort", "think"),
    [("none", Think(False)), ("minimal", Think(True, "low")), ("low", Think(True, "low")),
     ("high", Think(True, "high")), ("xhigh", Think(True, "max")), ("ultra", Think(True, "max")), (None, None)],
)
def test_reasoning_effort(effort: str | None, think: Think | None) -> None:
    assert turn(reasoning_effort=effort).think == think
    if effort:
        assert turn(reasoning={"effort": effort}).think == think


def test_tool_choice() -> None:
    assert turn(tools=[TOOL]).force_tool is None
    assert turn(tools=[TOOL], tool_choice="required").force_tool == ""
    assert turn(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "weather"}}).force_tool == "weather"
    assert turn(tools=[TOOL], tool_choice="none").tools == ()
    with pytest.raises(InvalidRequest):
        turn(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "other"}})
    with pytest.raises(InvalidRequest):
        turn(tool_choice="required")


def test_messages() -> None:
    png = base64.b64encode(b"\x89PNG").decode()
    t = turn(messages=[
        {"role": "User", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]},
        {"role": "assistant", "content": None, "reasoning": "hmm", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
    ])
    user_text, user_image, call, result = t.messages
    assert (user_text.role, user_text.content, user_image.images) == ("user", "look", (b"\x89PNG",))
    assert call.thinking == "hmm" and call.tool_calls[0].name == "weather"
    assert call.tool_calls[0].arguments == {"city": "Oslo"} and call.tool_calls[0].id == "call_1"
    assert (result.tool_name, result.tool_call_id) == ("weather", "call_1")  # looked up from the call's id


async def _chunks(*chunks: ChatChunk) -> AsyncIterator[ChatChunk]:
    for chunk in chunks:
        yield chunk


CALL = ToolCall("weather", {"city": "Oslo", "days": 2}, 0, "call_abc12345")
DONE = ChatChunk(done=True, done_reason="stop", metrics=Metrics(prompt_eval_count=7, eval_count=3))


def test_stream_splits_reasoning_and_reports_tool_calls() -> None:
    stream = compat.ChatStream("m", include_usage=True)
    events = stream.events(ChatChunk(content="Hi", thinking="Let me see"))
    events += stream.events(ChatChunk(tool_calls=(CALL,)))
    events += stream.events(DONE)
    deltas = [e["choices"][0]["delta"] if e["choices"] else None for e in events]  # type: ignore[index]
    assert deltas[0] == {"role": "assistant", "content": "", "reasoning": "Let me see"}
    assert deltas[1] == {"content": "Hi"}
    assert deltas[2] == {"content": "", "tool_calls": [{"id": "call_abc12345", "index": 0, "type": "function",
                                                        "function": {"name": "weather",
                                                                     "arguments": '{"city":"Oslo","days":2}'}}]}
    assert deltas[3] == {} and events[3]["choices"][0]["finish_reason"] == "tool_calls"  # type: ignore[index]
    assert events[4]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert len({e["id"] for e in events}) == 1


@pytest.mark.parametrize("with_tools", [True, False])
def test_non_streamed_collects_calls_only_when_tools_were_sent(with_tools: bool) -> None:
    doc = asyncio.run(compat.chat_completion(
        "m", [_chunks(ChatChunk(thinking="t"), ChatChunk(tool_calls=(CALL,)), DONE)], with_tools))
    choice = doc["choices"][0]  # type: ignore[index]
    assert choice["message"]["reasoning"] == "t"
    assert ("tool_calls" in choice["message"]) is with_tools
    assert choice["finish_reason"] == ("tool_calls" if with_tools else "stop")
    assert doc["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_completion_request() -> None:
    req = compat.completion_request(wire.CompletionRequest.model_validate(
        {"model": "m", "prompt": "p", "top_p": 0, "logprobs": 3, "stop": "x"}))
    assert req.options == {"stop": ["x"], "temperature": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
                           "top_p": 1.0}
    assert req.logprobs and req.top_logprobs == 3


def test_embedding_request_and_base64() -> None:
    req, encoding = compat.embed_request(wire.EmbeddingRequest.model_validate(
        {"model": "m", "input": "", "encoding_format": "BASE64"}))
    assert req.inputs == ("",) and encoding == "base64"
    doc = compat.embedding_list("m", EmbedResult(((0.5, -0.25),), 2), "base64")
    raw = base64.b64decode(doc["data"][0]["embedding"])  # type: ignore[index]
    assert struct.unpack("<2f", raw) == (0.5, -0.25)


def test_logit_bias_parallel_calls_and_accepted_hints() -> None:
    t = turn(logit_bias={"42": -100, "7": 2.5}, parallel_tool_calls=False, user="u1", store=False,
             metadata={"k": "v"}, service_tier="auto", prompt_cache_key="p", prediction={"type": "content"})
    assert t.logit_bias == ((42, -100.0), (7, 2.5))
    assert t.parallel_tool_calls is False
    assert turn().parallel_tool_calls is True and turn().logit_bias == ()


@pytest.mark.parametrize(("body", "needle"), [
    ({"logit_bias": {"x": 1}}, "'logit_bias'"),
    ({"logit_bias": {"5": 101}}, "between -100 and 100"),
    ({"modalities": ["text", "audio"]}, "'modalities'"),
    ({"audio": {"voice": "alloy"}}, "'modalities'"),
    ({"web_search_options": {}}, "'web_search_options'"),
    ({"functions": [{"name": "f"}]}, "'functions'"),
])
def test_fields_herd_cannot_honour_are_refused(body: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidRequest, match=needle):
        turn(**body)


@pytest.mark.parametrize(("n", "ok"), [(None, 1), (1, 1), (3, 3), (16, 16), (0, None), (17, None), (-1, None)])
def test_choice_count(n: int | None, ok: int | None) -> None:
    if ok is None:
        with pytest.raises(InvalidRequest, match="'n'"):
            compat.choice_count(n)
    else:
        assert compat.choice_count(n) == ok


def test_completion_refuses_echo_and_best_of() -> None:
    for body in ({"echo": True}, {"best_of": 3}):
        with pytest.raises(InvalidRequest):
            compat.completion_request(wire.CompletionRequest.model_validate({"model": "m", "prompt": "p", **body}))
    req = compat.completion_request(wire.CompletionRequest.model_validate(
        {"model": "m", "prompt": "p", "logit_bias": {"3": 1}, "best_of": 1, "echo": False}))
    assert req.logit_bias == ((3, 1.0),)


def test_stream_of_several_choices_tags_each_and_sends_usage_once_all_ended() -> None:
    stream = compat.ChatStream("m", include_usage=True, n=2)
    events = stream.events(ChatChunk(content="a"), 1)
    events += stream.events(ChatChunk(content="b"), 0)
    events += stream.events(DONE, 1)
    assert all(e["choices"] for e in events)  # no usage chunk while choice 0 still runs
    events += stream.events(DONE, 0)
    indexes = [e["choices"][0]["index"] for e in events if e["choices"]]  # type: ignore[index]
    assert indexes == [1, 0, 1, 0]
    # the role goes on each choice's first delta
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"  # type: ignore[index]
    assert events[1]["choices"][0]["delta"]["role"] == "assistant"  # type: ignore[index]
    # the prompt counted once, the completions of both choices summed
    assert events[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}


def test_non_streamed_choices_keep_their_order() -> None:
    first = ChatChunk(content="one", done=True, done_reason="stop", metrics=Metrics(prompt_eval_count=5, eval_count=1))
    second = ChatChunk(content="two", done=True, done_reason="length",
                       metrics=Metrics(prompt_eval_count=5, eval_count=2))
    doc = asyncio.run(compat.chat_completion("m", [_chunks(first), _chunks(second)], False))
    choices = doc["choices"]  # type: ignore[index]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [  # type: ignore[index]
        (0, "one", "stop"), (1, "two", "length")]
    assert doc["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
