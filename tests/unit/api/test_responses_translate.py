"""The Responses API translation without a server: input items -> messages, the request's refusals, the stream
state machine over synthetic chunks (what the default model cannot produce: reasoning, then text, then a call),
and the bounds of the response store."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from herd.api.errors import openai_error_body
from herd.api.openai import responses_request as R
from herd.api.openai import responses_routes
from herd.api.openai import responses_stream as S
from herd.api.openai import responses_wire as wire
from herd.api.openai.translate import EFFORT_ERROR, IMAGE_URLS_REFUSED
from herd.engine.protocol import TokenLogprob, TopLogprob
from herd.errors import InvalidRequest, ResponseNotFound, RunnerFailed
from herd.parsing.base import ToolCall
from herd.services.chat import ChatChunk, Metrics
from herd.services.response_store import ResponseStore, StoredResponse
from herd.types import Message, Think, ToolCallIn

PNG = base64.b64encode(b"\x89PNG fake bytes").decode()
WEATHER = {"type": "function", "name": "weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def request(**body: Any) -> wire.ResponsesRequest:
    body.setdefault("model", "m")
    body.setdefault("input", "hi")
    return wire.decode(wire.ResponsesRequest, body)  # type: ignore[no-any-return]


def plan(earlier: tuple[Message, ...] = (), **body: Any) -> R.ResponsePlan:
    return R.plan(request(**body), earlier)


def refused(**body: Any) -> R.InvalidParam:
    with pytest.raises(R.InvalidParam) as info:
        plan(**body)
    return info.value


# ---- input items -> messages ------------------------------------------------------------------------------------


def test_string_input_is_one_user_message() -> None:
    assert plan(input="Hello").turn.messages == (Message(role="user", content="Hello"),)


def test_message_items_short_and_typed_with_parts() -> None:
    messages = R.input_messages([
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is "}, {"type": "input_text", "text": "this?"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "auto"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed", "content": [
            {"type": "output_text", "text": "A picture.", "annotations": []}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot say more."}]},
        {"role": "system", "content": "sys"},
    ])
    assert messages == (
        Message(role="system", content="Be brief."),  # developer -> system
        Message(role="user", content="What is this?", images=(base64.b64decode(PNG),)),
        Message(role="assistant", content="A picture."),
        Message(role="assistant", content="I cannot say more."),
        Message(role="system", content="sys"),
    )


def test_function_calls_merge_into_the_assistant_message_and_outputs_name_their_call() -> None:
    messages = R.input_messages([
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "reasoning", "id": "rs_1", "summary": [],
         "content": [{"type": "reasoning_text", "text": "Two cities: "}, {"type": "reasoning_text", "text": "two calls."}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_b", "name": "weather", "arguments": '{"city":"Rome"}',
         "status": "completed"},
        {"type": "function_call_output", "call_id": "call_b", "output": "rain"},
        {"type": "function_call_output", "call_id": "call_a",
         "output": [{"type": "input_text", "text": "sun"}, {"type": "input_text", "text": "ny"}]},
    ])
    assert messages[1] == Message(role="assistant", thinking="Two cities: two calls.", tool_calls=(
        ToolCallIn("weather", {"city": "Paris"}, 0, "call_a"), ToolCallIn("weather", {"city": "Rome"}, 1, "call_b")))
    assert messages[2:] == (
        Message(role="tool", content="rain", tool_name="weather", tool_call_id="call_b"),
        Message(role="tool", content="sunny", tool_name="weather", tool_call_id="call_a"),
    )
    assert len(messages) == 4


def test_a_call_after_the_assistant_text_joins_that_message() -> None:
    messages = R.input_messages([
        {"role": "assistant", "content": "Let me look."},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": ""},
    ])
    assert messages == (Message(role="assistant", content="Let me look.",
                                tool_calls=(ToolCallIn("weather", {}, 0, "c1"),)),)


def test_a_tool_output_finds_its_call_in_the_stored_conversation() -> None:
    earlier = (Message(role="user", content="q"),
               Message(role="assistant", tool_calls=(ToolCallIn("weather", {"city": "Oslo"}, 0, "call_x"),)))
    p = plan(earlier, input=[{"type": "function_call_output", "call_id": "call_x", "output": "cold"}])
    assert p.turn.messages[-1] == Message(role="tool", content="cold", tool_name="weather", tool_call_id="call_x")
    assert p.turn.messages[:2] == earlier and p.history == p.turn.messages


def test_reasoning_goes_on_the_next_assistant_message_else_stands_alone_or_is_dropped_at_the_end() -> None:
    messages = R.input_messages([
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "summary only"}]},
        {"role": "assistant", "content": "answer"},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "lone"}],
         "encrypted_content": None},
        {"role": "user", "content": "next"},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "dangling"}]},
    ])
    assert messages == (
        Message(role="assistant", content="answer", thinking="summary only"),
        Message(role="assistant", thinking="lone"),
        Message(role="user", content="next"),
    )


@pytest.mark.parametrize(("items", "message", "param"), [
    ([{"type": "item_reference", "id": "msg_1"}],
     "Input items of type 'item_reference' are not supported by herd ('input[0]').", "input[0].type"),
    ([{"role": "user", "content": "a"}, {"type": "computer_call_output", "call_id": "c"}],
     "Input items of type 'computer_call_output' are not supported by herd ('input[1]').", "input[1].type"),
    ([{"content": "no role, no type"}], "Missing required parameter: 'input[0].type'.", "input[0].type"),
    ([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}],
     "Content parts of type 'input_file' are not supported by herd ('input[0].content[0]').",
     "input[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}],
     "herd needs an inline 'image_url' (a data URL) in 'input[0].content[0]': file ids are not supported.",
     "input[0].content[0].image_url"),
    ([{"role": "tool", "content": "x"}],
     "Invalid value for 'input[0].role': 'tool' (must be 'user', 'assistant', 'system' or 'developer').",
     "input[0].role"),
    ([{"type": "function_call", "name": "weather", "arguments": "{}"}],
     "Missing required parameter: 'input[0].call_id'.", "input[0].call_id"),
    ([{"type": "function_call", "call_id": "c", "name": "weather", "arguments": "{not json"}],
     "Invalid 'input[0].arguments': not valid JSON.", "input[0].arguments"),
    ([{"type": "function_call", "call_id": "c", "name": "weather", "arguments": "[1, 2]"}],
     "Invalid 'input[0].arguments': expected a JSON object.", "input[0].arguments"),
    ([{"type": "function_call_output", "call_id": 7, "output": "x"}],
     "Invalid type for 'input[0].call_id': expected a string, but got an integer instead.", "input[0].call_id"),
    ([5], "Invalid type for 'input[0]': expected an object, but got an integer instead.", "input[0]"),
    ([{"role": "user", "content": 5}],
     "Invalid type for 'input[0].content': expected a string, but got an integer instead.", "input[0].content"),
])
def test_input_refusals_name_the_item(items: list[dict[str, Any]], message: str, param: str) -> None:
    err = refused(input=items)
    assert (err.message, err.param) == (message, param)


def test_remote_image_urls_are_refused_with_ollamas_text() -> None:
    with pytest.raises(InvalidRequest) as info:
        plan(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/a.png"}]}])
    assert info.value.message == IMAGE_URLS_REFUSED


def test_remote_images_are_fetched_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list[str] = []

    async def fake_fetch(url: str, max_bytes: int) -> bytes:
        fetched.append(url)
        return b"remote image"

    import herd.image_fetch

    monkeypatch.setattr(herd.image_fetch, "fetch_image", fake_fetch)
    req = request(input=[
        {"role": "user", "content": [{"type": "input_image", "image_url": "http://host/a.png"}]},
        {"type": "function_call", "call_id": "c", "name": "shot", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c",
         "output": [{"type": "input_image", "image_url": "https://host/b.png"}]},
    ])
    asyncio.run(R.fetch_remote_images(req, 1000, 5))
    assert fetched == ["http://host/a.png", "https://host/b.png"]
    messages = R.plan(req).turn.messages
    assert messages[0].images == (b"remote image",) and messages[2].images == (b"remote image",)
    with pytest.raises(InvalidRequest, match="2 images exceed the limit of 1"):
        asyncio.run(R.fetch_remote_images(req, 1000, 1))


# ---- the rest of the request ------------------------------------------------------------------------------------


def test_instructions_lead_the_prompt_but_are_not_stored() -> None:
    p = plan(instructions="You are terse.", input="Hi")
    assert p.turn.messages == (Message(role="system", content="You are terse."), Message(role="user", content="Hi"))
    assert p.history == (Message(role="user", content="Hi"),)
    assert p.echo.instructions == "You are terse."


def test_defaults_and_options() -> None:
    p = plan()
    assert p.turn.options == {"temperature": 1.0, "top_p": 1.0} and p.turn.think is None
    assert p.turn.tools == () and p.turn.force_tool is None and p.turn.parallel_tool_calls
    assert p.turn.format is None and p.turn.truncate and not p.turn.logprobs and p.store
    p = plan(max_output_tokens=16, temperature=0, top_p=0.5, truncation="disabled", store=False,
             reasoning={"effort": "high", "summary": "auto"}, parallel_tool_calls=False)
    assert p.turn.options == {"temperature": 0, "top_p": 0.5, "num_predict": 16}
    assert p.turn.think == Think(True, "high") and not p.turn.truncate and not p.store
    assert not p.turn.parallel_tool_calls and p.echo.reasoning == ("high", "auto")
    assert plan(reasoning={"effort": "none"}).turn.think == Think(False)


def test_function_tools_become_tool_defs_with_the_chat_completions_shape() -> None:
    p = plan(tools=[WEATHER, {"type": "function", "name": "noop", "strict": False}])
    weather, noop = p.turn.tools
    assert (weather.name, weather.description, weather.parameters) == ("weather", "Weather for a city",
                                                                       WEATHER["parameters"])
    assert weather.raw == {"type": "function", "function": {"name": "weather", "description": "Weather for a city",
                                                            "parameters": WEATHER["parameters"]}}
    assert noop.raw == {"type": "function", "function": {"name": "noop", "parameters": {"type": "object",
                                                                                        "properties": {}},
                                                         "strict": False}}
    assert p.echo.tools[0] == {**WEATHER, "strict": True} and p.echo.tools[1]["strict"] is False


@pytest.mark.parametrize(("choice", "force", "names"), [
    (None, None, ["weather", "noop"]),
    ("auto", None, ["weather", "noop"]),
    ("none", None, []),
    ("required", "", ["weather", "noop"]),
    ({"type": "function", "name": "noop"}, "noop", ["weather", "noop"]),
    ({"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "weather"}]}, "",
     ["weather"]),
    ({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "noop"}]}, None, ["noop"]),
])
def test_tool_choice(choice: object, force: str | None, names: list[str]) -> None:
    p = plan(tools=[WEATHER, {"type": "function", "name": "noop"}], tool_choice=choice)
    assert p.turn.force_tool == force and [t.name for t in p.turn.tools] == names
    assert p.echo.tool_choice == (choice if choice is not None else "auto")


@pytest.mark.parametrize(("text", "fmt"), [
    ({"format": {"type": "text"}}, None),
    ({"verbosity": "low"}, None),
    ({"format": {"type": "json_object"}}, "json"),
    ({"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}},
     {"type": "object"}),
])
def test_text_format(text: dict[str, Any], fmt: object) -> None:
    assert plan(text=text).turn.format == fmt


def test_include_logprobs_is_honoured() -> None:
    p = plan(include=["message.output_text.logprobs"], top_logprobs=3)
    assert p.turn.logprobs and p.turn.top_logprobs == 3 and p.logprobs
    assert plan(top_logprobs=3).turn.top_logprobs == 0  # logprobs only come with the include


def test_a_typical_codex_request_is_accepted() -> None:
    p = plan(
        model="smollm2:135m", instructions="You are Codex.", stream=True, store=False,
        include=["reasoning.encrypted_content"], tool_choice="auto", parallel_tool_calls=False,
        reasoning={"effort": "medium", "summary": "auto"}, prompt_cache_key="0199-abcd", text={"verbosity": "medium"},
        tools=[{"type": "function", "name": "shell", "description": "Runs a command", "strict": False,
                "parameters": {"type": "object", "properties": {"command": {"type": "array",
                                                                            "items": {"type": "string"}}},
                               "required": ["command"], "additionalProperties": False}}],
        input=[{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions>"}]},
               {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]}],
        service_tier="auto", metadata={"k": "v"}, user="u", safety_identifier="s", stream_options={},
    )
    assert [m.role for m in p.turn.messages] == ["system", "system", "user"]
    assert p.turn.think == Think(True, "medium") and not p.turn.parallel_tool_calls and not p.store
    assert [t.name for t in p.turn.tools] == ["shell"] and p.echo.prompt_cache_key == "0199-abcd"


@pytest.mark.parametrize(("body", "message", "param"), [
    ({"tools": [{"type": "web_search"}]},
     "Tools of type 'web_search' are not supported by herd: only 'function' tools (alone or in a 'namespace') are ('tools[0].type').",
     "tools[0].type"),
    ({"tools": [WEATHER, {"type": "mcp", "server_label": "x"}]},
     "Tools of type 'mcp' are not supported by herd: only 'function' tools (alone or in a 'namespace') are ('tools[1].type').", "tools[1].type"),
    ({"tools": [{"type": "function", "function": {"name": "chat_style"}}]},
     "Missing required parameter: 'tools[0].name'.", "tools[0].name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "file_search"}},
     "tool_choice of type 'file_search' is not supported by herd: use 'auto', 'none', 'required' or a function.",
     "tool_choice"),
    ({"background": True}, "background mode is not supported by herd: send the request without 'background'.",
     "background"),
    ({"conversation": "conv_1"}, "conversations are not supported by herd: use 'previous_response_id' or send the "
     "conversation as 'input' items.", "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt templates are not supported by herd: send 'instructions' and 'input'.",
     "prompt"),
    ({"include": ["reasoning.encrypted_content", "file_search_call.results"]},
     "Invalid value for 'include[1]': herd cannot include 'file_search_call.results' (supported: "
     "'reasoning.encrypted_content', 'message.output_text.logprobs').", "include[1]"),
    ({"top_logprobs": 21}, "Invalid 'top_logprobs': must be between 0 and 20.", "top_logprobs"),
    ({"max_output_tokens": 0}, "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 1, "
     "but got 0 instead.", "max_output_tokens"),
    ({"max_tool_calls": 2}, "'max_tool_calls' is not supported by herd (use 'parallel_tool_calls': false for at "
     "most one call).", "max_tool_calls"),
    ({"truncation": "middle"}, "Invalid value for 'truncation': 'middle' (must be 'auto' or 'disabled').",
     "truncation"),
    ({"input": []}, "Missing required parameter: 'input'.", "input"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "Missing required parameter: 'text.format.schema'.",
     "text.format.schema"),
    ({"text": {"format": {"type": "grammar"}}},
     "Invalid value for 'text.format.type': 'grammar' (must be 'text', 'json_object' or 'json_schema').",
     "text.format.type"),
    ({"reasoning": {"effort": "extreme"}}, EFFORT_ERROR.format("extreme"), "reasoning.effort"),
    ({"temperature": "hot"}, "Invalid type for 'temperature': expected a decimal, but got a string instead.",
     "temperature"),
])
def test_refused_fields_name_themselves(body: dict[str, Any], message: str, param: str) -> None:
    err = refused(**body)
    assert (err.message, err.param) == (message, param)


def test_chat_completions_rules_for_model_and_tool_choice() -> None:
    with pytest.raises(InvalidRequest, match="model is required"):
        plan(model="")
    with pytest.raises(InvalidRequest, match="no function named 'nope'"):
        plan(tools=[WEATHER], tool_choice={"type": "function", "name": "nope"})
    with pytest.raises(InvalidRequest, match="only allowed when 'tools' are specified"):
        plan(tool_choice="required")


def test_not_found_error_body() -> None:
    resp = responses_routes._error(ResponseNotFound("resp_x"))
    assert resp.status_code == 404 and json.loads(bytes(resp.body)) == {
        "error": {"message": "Previous response with id 'resp_x' not found.", "type": "invalid_request_error",
                  "param": "previous_response_id", "code": "previous_response_not_found"}}
    assert openai_error_body(400, "x") == {"error": {"message": "x", "type": "invalid_request_error", "param": None,
                                                     "code": None}}


# ---- the stream ---------------------------------------------------------------------------------------------


def metrics(prompt: int = 20, output: int = 9) -> Metrics:
    return Metrics(prompt_eval_count=prompt, eval_count=output)


CALL = ToolCall("weather", {"city": "Paris"}, 0, "call_abc12345")
REASON_TEXT_CALL = [
    ChatChunk(thinking="Let me "), ChatChunk(thinking="think."),
    ChatChunk(content="Checking"), ChatChunk(content=" now."),
    ChatChunk(tool_calls=(CALL,)),
    ChatChunk(done=True, done_reason="stop", metrics=metrics()),
]


def run(chunks: list[ChatChunk], on_done: S.OnDone | None = None, **body: Any) -> tuple[S.ResponseStream,
                                                                                          list[S.Event]]:
    body.setdefault("tools", [WEATHER])
    stream = S.ResponseStream(plan(**body), on_done)
    events = [e for c in chunks for e in stream.feed(c)]
    return stream, events


def output(stream: S.ResponseStream) -> list[dict[str, Any]]:
    assert stream.response is not None
    return stream.response["output"]  # type: ignore[return-value]


def test_reasoning_then_text_then_call_event_order_and_sequence() -> None:
    stored: list[tuple[dict[str, object], Message]] = []
    stream, events = run(REASON_TEXT_CALL, lambda doc, msg: stored.append((doc, msg)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert all(list(e)[:2] == ["type", "sequence_number"] for e in events)
    for e in events:
        EVENT.validate_python(e)  # every event parses as the SDK's own type
    created = events[0]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None  # type: ignore[index]
    rs, msg, fc = output(stream)
    assert rs == {"id": rs["id"], "type": "reasoning", "summary": [],
                  "content": [{"type": "reasoning_text", "text": "Let me think."}]}
    assert msg["content"] == [{"type": "output_text", "annotations": [], "logprobs": [], "text": "Checking now."}]
    assert msg["status"] == "completed" and msg["role"] == "assistant"
    assert fc == {"id": fc["id"], "type": "function_call", "status": "completed", "arguments": '{"city":"Paris"}',
                  "call_id": "call_abc12345", "name": "weather"}
    assert str(rs["id"]).startswith("rs_") and str(msg["id"]).startswith("msg_") and str(fc["id"]).startswith("fc_")
    # Each item's events name its id and index.
    assert {(e["item_id"], e["output_index"]) for e in events if e["type"] == "response.reasoning_text.delta"} == \
        {(rs["id"], 0)}
    assert {(e["item_id"], e["output_index"]) for e in events if e["type"] == "response.output_text.delta"} == \
        {(msg["id"], 1)}
    assert events[-1]["response"] is stream.response
    doc = stream.response
    assert doc is not None and doc["status"] == "completed" and doc["incomplete_details"] is None
    assert doc["usage"] == {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                            "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 29}
    assert str(doc["id"]).startswith("resp_") and len(str(doc["id"])) == 5 + 48
    Response.model_validate(doc)
    assert stored == [(doc, Message(role="assistant", content="Checking now.", thinking="Let me think.",
                                    tool_calls=(ToolCallIn("weather", {"city": "Paris"}, 0, "call_abc12345"),)))]


def test_non_streamed_is_the_same_state_machine() -> None:
    async def gen() -> AsyncIterator[ChatChunk]:
        for c in REASON_TEXT_CALL:
            yield c

    streamed, _ = run(REASON_TEXT_CALL)
    stream = S.ResponseStream(plan(tools=[WEATHER]))
    doc = asyncio.run(S.collect(stream, gen()))
    strip = [{k: v for k, v in item.items() if k != "id"} for item in doc["output"]]  # type: ignore[attr-defined]
    assert strip == [{k: v for k, v in item.items() if k != "id"}
                     for item in output(streamed)]


def test_length_makes_the_response_and_its_message_incomplete() -> None:
    stream, events = run([ChatChunk(content="Hello"), ChatChunk(done=True, done_reason="length", metrics=metrics())],
                         max_output_tokens=1)
    assert events[-1]["type"] == "response.incomplete"
    doc = stream.response
    assert doc is not None and doc["status"] == "incomplete"
    assert doc["incomplete_details"] == {"reason": "max_output_tokens"} and doc["max_output_tokens"] == 1
    assert doc["output"][0]["status"] == "incomplete"  # type: ignore[index]
    assert next(e for e in events if e["type"] == "response.output_item.done")["item"]["status"] == "incomplete"  # type: ignore[index]


def test_text_after_a_call_opens_a_new_message_and_calls_without_tools_are_dropped() -> None:
    stream, _ = run([ChatChunk(tool_calls=(CALL,)), ChatChunk(content="after"),
                     ChatChunk(done=True, done_reason="stop", metrics=metrics())])
    assert [i["type"] for i in output(stream)] == ["function_call", "message"]
    stream, _ = run([ChatChunk(content="x", tool_calls=(CALL,)), ChatChunk(done=True, done_reason="stop")],
                    tools=None)
    assert [i["type"] for i in output(stream)] == ["message"]


def test_a_call_without_an_id_gets_one() -> None:
    stream, _ = run([ChatChunk(tool_calls=(ToolCall("weather", {}, 0, ""),)), ChatChunk(done=True)])
    assert str(output(stream)[0]["call_id"]).startswith("call_")


def test_logprobs_when_included() -> None:
    lp = TokenLogprob("Hi", -0.5, (72, 105), (TopLogprob("Hi", -0.5, (72, 105)), TopLogprob("Yo", -1.5, (89, 111))))
    chunks = [ChatChunk(logprobs=(lp,)), ChatChunk(content="Hi"), ChatChunk(done=True, done_reason="stop")]
    stream, events = run(chunks, include=["message.output_text.logprobs"], top_logprobs=2)
    delta = next(e for e in events if e["type"] == "response.output_text.delta")
    assert delta["logprobs"] == [{"token": "Hi", "logprob": -0.5, "top_logprobs": [
        {"token": "Hi", "logprob": -0.5}, {"token": "Yo", "logprob": -1.5}]}]
    part = output(stream)[0]["content"][0]
    assert part["logprobs"] == [{"token": "Hi", "bytes": [72, 105], "logprob": -0.5, "top_logprobs": [
        {"token": "Hi", "bytes": [72, 105], "logprob": -0.5}, {"token": "Yo", "bytes": [89, 111], "logprob": -1.5}]}]
    for e in events:
        EVENT.validate_python(e)
    stream, events = run(chunks)  # not asked for: none sent
    assert next(e for e in events if e["type"] == "response.output_text.delta")["logprobs"] == []


def test_an_error_after_the_start_is_one_failed_event() -> None:
    stream, events = run([ChatChunk(content="Hel")])
    text = stream.encode_error(RunnerFailed("runner died"))
    assert text.startswith("event: response.failed\ndata: ") and text.endswith("\n\n") and text.count("\n\n") == 1
    doc = json.loads(text.split("data: ", 1)[1])
    assert doc["sequence_number"] == len(events) and doc["type"] == "response.failed"
    assert doc["response"]["status"] == "failed"
    assert doc["response"]["error"] == {"code": "server_error", "message": "runner died"}
    EVENT.validate_python(doc)


def test_sse_framing() -> None:
    stream = S.ResponseStream(plan())
    text = stream.encode(ChatChunk(content="Hi"))
    assert text is not None
    blocks = text.split("\n\n")[:-1]
    assert [b.split("\n")[0] for b in blocks] == [
        "event: response.created", "event: response.in_progress", "event: response.output_item.added",
        "event: response.content_part.added", "event: response.output_text.delta"]
    assert all(json.loads(b.split("\ndata: ", 1)[1])["type"] == b.split("\n")[0][len("event: "):] for b in blocks)


def test_echoed_settings() -> None:
    stream, _ = run([ChatChunk(done=True)], instructions="be terse", previous_response_id="resp_prev",
                    text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
                    metadata={"a": "b"}, tool_choice="required", temperature=0.2, store=False)
    doc = stream.response
    assert doc is not None
    assert list(doc)[:4] == ["id", "object", "created_at", "status"]
    assert doc["instructions"] == "be terse" and doc["previous_response_id"] == "resp_prev"
    assert doc["text"] == {"format": {"type": "json_schema", "description": None, "name": "x",
                                      "schema": {"type": "object"}, "strict": None}, "verbosity": "medium"}
    assert doc["metadata"] == {"a": "b"} and doc["tool_choice"] == "required" and doc["temperature"] == 0.2
    assert doc["store"] is False and doc["truncation"] == "auto" and doc["object"] == "response"
    Response.model_validate(doc)


# ---- the store ------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(text: str) -> StoredResponse:
    return StoredResponse((Message(role="user", content=text),), {"id": text})


def test_store_keeps_at_most_max_entries_oldest_out_first() -> None:
    store = ResponseStore(3, 60, Clock())
    for i in range(5):
        store.put(f"r{i}", entry(str(i)))
    assert len(store) == 3
    for gone in ("r0", "r1"):
        with pytest.raises(ResponseNotFound):
            store.get(gone)
    assert [store.get(f"r{i}").document for i in (2, 3, 4)] == [{"id": "2"}, {"id": "3"}, {"id": "4"}]
    store.put("r2", entry("2 again"))  # stored again: now the newest
    store.put("r5", entry("5"))
    with pytest.raises(ResponseNotFound):
        store.get("r3")
    assert store.get("r2").document == {"id": "2 again"}


def test_store_forgets_entries_past_their_age() -> None:
    clock = Clock()
    store = ResponseStore(10, 30, clock)
    store.put("old", entry("old"))
    clock.now += 20
    store.put("young", entry("young"))
    clock.now += 9.9
    assert store.get("old").conversation[0].content == "old"
    clock.now += 0.1  # "old" is 30 s old now
    with pytest.raises(ResponseNotFound) as info:
        store.get("old")
    assert info.value.message == "Previous response with id 'old' not found."
    assert store.get("young") and len(store) == 1
    clock.now += 20
    assert len(store) == 0


@pytest.mark.parametrize(("size", "ttl"), [(0, 60.0), (5, 0.0)])
def test_a_store_with_no_room_keeps_nothing(size: int, ttl: float) -> None:
    store = ResponseStore(size, ttl, Clock())
    store.put("r", entry("r"))
    with pytest.raises(ResponseNotFound):
        store.get("r")


def test_errors_are_typed() -> None:
    assert issubclass(R.InvalidParam, InvalidRequest)


def test_namespace_tools_are_functions_the_model_sees_and_calls_carry_the_namespace() -> None:
    """Codex groups its sub-agent tools in a `namespace` tool: its functions are offered as plain functions, and a
    call of one comes back with `namespace` set (the SDK's field), one of a plain function without it."""
    spawn = {"type": "function", "name": "spawn_agent", "description": "Start an agent",
             "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}}
    tools = [WEATHER, {"type": "namespace", "name": "multi_agent_v1", "description": "Agents", "tools": [spawn]}]
    p = plan(tools=tools)
    assert [t.name for t in p.turn.tools] == ["weather", "spawn_agent"]
    assert p.namespaces == {"spawn_agent": "multi_agent_v1"}
    stream, _ = run([ChatChunk(tool_calls=(ToolCall("spawn_agent", {"task": "x"}, 0, "call_1"), CALL)),
                     ChatChunk(done=True, done_reason="stop", metrics=metrics())], tools=tools)
    calls = [o for o in output(stream) if o["type"] == "function_call"]
    assert [c.get("namespace") for c in calls] == ["multi_agent_v1", None]
    assert refused(tools=[{"type": "namespace", "name": "n", "tools": [{"type": "custom", "name": "c"}]}]).param \
        == "tools[0].tools[0].type"
    assert "already defined" in refused(tools=[WEATHER, {"type": "namespace", "name": "n", "tools": [WEATHER]}]).message
