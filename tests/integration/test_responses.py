"""/v1/responses through a real server with the official `openai` client (and raw httpx for the SSE framing):
non-streamed and streamed answers, a forced function call and its result (chained by previous_response_id and
sent inline), the response store's misses, structured output and the refusals."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from herd.api.openai.translate import IMAGE_URLS_REFUSED
from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

QUESTION = "Why is the sky blue? Answer in one short sentence."
WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                  "additionalProperties": False}
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city",
           "parameters": WEATHER_PARAMS, "strict": True}
FORCE_WEATHER: Any = {"type": "function", "name": "get_weather"}


@pytest.fixture()
def client(server: HerdServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event; every event has both lines."""
    assert text.endswith("\n\n")
    out = []
    for block in text.split("\n\n")[:-1]:
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        out.append((name[len("event: "):], json.loads(data[len("data: "):])))
    return out


def test_non_streamed(client: openai.OpenAI) -> None:
    resp = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=8, temperature=0)
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.model == MODEL
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert isinstance(resp.output_text, str) and resp.output_text
    [message] = resp.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.status == "incomplete" and message.content[0].type == "output_text"
    usage = resp.usage
    assert usage is not None and usage.output_tokens == 8 and usage.input_tokens > 10
    assert usage.total_tokens == usage.input_tokens + 8 and usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert resp.max_output_tokens == 8 and resp.temperature == 0 and resp.top_p == 1.0 and resp.to_dict()["store"] is True
    assert resp.tools == [] and resp.tool_choice == "auto" and resp.parallel_tool_calls is True
    assert resp.created_at > 0 and resp.error is None


def test_streamed_event_order_matches_non_streamed(client: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": MODEL, "input": QUESTION, "max_output_tokens": 8, "temperature": 0}
    whole = client.responses.create(**args)
    events = list(client.responses.create(stream=True, **args))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas and types[4:4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert types[4 + len(deltas):] == ["response.output_text.done", "response.content_part.done",
                                       "response.output_item.done", "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, final = events[0], events[-1]
    assert created.response.status == "in_progress" and created.response.output == []  # type: ignore[union-attr]
    assert final.response.id == created.response.id  # type: ignore[union-attr]
    text = "".join(d.delta for d in deltas)  # type: ignore[union-attr]
    assert text == events[4 + len(deltas)].text == final.response.output_text  # type: ignore[union-attr]
    assert text == whole.output_text
    item_id = events[2].item.id  # type: ignore[union-attr]
    assert all(d.item_id == item_id and d.output_index == 0 for d in deltas)  # type: ignore[union-attr]
    assert final.response.usage.output_tokens == 8  # type: ignore[union-attr]


def test_sse_framing_of_a_codex_style_request(http: httpx.Client) -> None:
    body = {
        "model": MODEL, "instructions": "You are a coding agent.", "stream": True, "store": False,
        "include": ["reasoning.encrypted_content"], "tool_choice": "auto", "parallel_tool_calls": False,
        "reasoning": {"effort": "none", "summary": "auto"}, "prompt_cache_key": "session-1",
        "text": {"verbosity": "low"}, "max_output_tokens": 4, "temperature": 0,
        "tools": [{"type": "function", "name": "shell", "description": "Runs a shell command", "strict": False,
                   "parameters": {"type": "object", "properties": {"command": {"type": "array",
                                                                               "items": {"type": "string"}}},
                                  "required": ["command"], "additionalProperties": False}}],
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hi."}]}],
    }
    resp = http.post("/v1/responses", json=body)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert "[DONE]" not in resp.text
    events = sse(resp.text)
    assert all(name == data["type"] for name, data in events)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert events[0][0] == "response.created" and events[-1][0] in ("response.completed", "response.incomplete")
    final = events[-1][1]["response"]
    assert final["store"] is False and final["prompt_cache_key"] == "session-1"
    assert final["parallel_tool_calls"] is False and final["text"]["verbosity"] == "low"
    assert all("encrypted_content" not in item for item in final["output"])
    # store: false: not kept
    assert http.get(f"/v1/responses/{final['id']}").status_code == 404


def forced_call(client: openai.OpenAI) -> Any:
    resp = client.responses.create(model=MODEL, input="What is the weather in Paris?", tools=[WEATHER],
                                   tool_choice=FORCE_WEATHER, max_output_tokens=64, temperature=0)
    calls = [o for o in resp.output if o.type == "function_call"]
    assert resp.status == "completed" and len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and call.status == "completed"
    assert call.call_id and call.id and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMS)
    return resp, call


def test_function_call_round_trip_with_previous_response_id(client: openai.OpenAI) -> None:
    first, call = forced_call(client)
    result: Any = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 degrees."}
    chained = client.responses.create(model=MODEL, previous_response_id=first.id, input=[result],
                                      max_output_tokens=8, temperature=0)
    assert chained.status in ("completed", "incomplete") and chained.previous_response_id == first.id
    assert chained.output and chained.output[0].type == "message"
    # The stored turn (question and call) is in the prompt: more tokens than the tool result on its own.
    alone = client.responses.create(model=MODEL, input=[result], max_output_tokens=1, temperature=0)
    assert chained.usage.input_tokens > alone.usage.input_tokens  # type: ignore[union-attr]
    # The same conversation sent inline renders the same prompt, so the same answer.
    inline = client.responses.create(model=MODEL, max_output_tokens=8, temperature=0, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        result,
    ])
    assert inline.usage.input_tokens == chained.usage.input_tokens  # type: ignore[union-attr]
    assert inline.output_text == chained.output_text
    # What was stored can be read back.
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and [o.type for o in got.output] == ["function_call"]


def test_function_call_round_trip_inline_with_tools(client: openai.OpenAI) -> None:
    _, call = forced_call(client)
    resp = client.responses.create(model=MODEL, tools=[WEATHER], max_output_tokens=16, temperature=0, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id,
         "output": [{"type": "input_text", "text": "Sunny, 21 degrees."}]},
    ])
    assert resp.status in ("completed", "incomplete") and resp.output
    assert all(o.type in ("message", "function_call") for o in resp.output)
    assert [t.name for t in resp.tools] == ["get_weather"]  # type: ignore[union-attr]


def test_previous_response_chain_renders_the_earlier_turns(client: openai.OpenAI) -> None:
    def ask(text: str, previous: str | None = None, instructions: str | None = None) -> Any:
        resp = client.responses.create(model=MODEL, input=text, max_output_tokens=8, temperature=0,
                                       previous_response_id=previous, instructions=instructions)
        assert resp.usage is not None and resp.previous_response_id == previous
        return resp

    long_instructions = "Answer briefly and politely, in plain English. " * 30  # about 300 tokens
    first = ask("My name is Ada. Remember it.")
    second = ask("What is my name?", first.id)
    third = ask("Thanks.", second.id, instructions=long_instructions)
    fourth = ask("Bye.", third.id)
    f, s, t, q = (r.usage for r in (first, second, third, fourth))
    # Each prompt holds the earlier questions and answers...
    assert s.input_tokens > f.input_tokens + f.output_tokens
    assert t.input_tokens > s.input_tokens + s.output_tokens + 200
    # ... but not earlier instructions (OpenAI does not carry them over).
    assert third.instructions == long_instructions and fourth.instructions is None
    assert s.input_tokens + s.output_tokens < q.input_tokens < t.input_tokens


def test_unknown_previous_response_is_404(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_unknown", max_output_tokens=4)
    assert info.value.status_code == 404
    assert info.value.response.json() == {"error": {
        "message": "Previous response with id 'resp_unknown' not found.", "type": "invalid_request_error",
        "param": "previous_response_id", "code": "previous_response_not_found"}}
    resp = http.get("/v1/responses/resp_unknown")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "previous_response_not_found"


def test_store_false_is_not_kept(client: openai.OpenAI) -> None:
    resp = client.responses.create(model=MODEL, input="Hi", store=False, max_output_tokens=2, temperature=0)
    assert resp.to_dict()["store"] is False
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="Again", previous_response_id=resp.id, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)


def test_json_schema_text_format_is_enforced(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]},
                       "certain": {"type": "boolean"}},
        "required": ["colour", "certain"],
        "additionalProperties": False,
    }
    resp = client.responses.create(
        model=MODEL, input="What colour is the sky? Reply in JSON.", max_output_tokens=60, temperature=0,
        text={"format": {"type": "json_schema", "name": "sky", "schema": schema, "strict": True}},
    )
    assert resp.status == "completed"
    jsonschema.validate(json.loads(resp.output_text), schema)
    assert resp.text is not None and resp.text.format is not None and resp.text.format.type == "json_schema"


@pytest.mark.parametrize(("body", "needle"), [
    ({"tools": [{"type": "web_search"}]}, "Tools of type 'web_search' are not supported"),
    ({"tools": [{"type": "local_shell"}]}, "Tools of type 'local_shell' are not supported"),
    ({"background": True}, "background mode is not supported"),
    ({"include": ["file_search_call.results"]}, "herd cannot include 'file_search_call.results'"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "Input items of type 'item_reference'"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://example.com/x.png"}]}]},
     IMAGE_URLS_REFUSED),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"}]},
     "Invalid 'input[0].arguments': not valid JSON."),
    ({"top_logprobs": 50}, "Invalid 'top_logprobs'"),
    ({"tool_choice": "required"}, "'tool_choice' is only allowed when 'tools' are specified"),
])
def test_refusals_are_400(client: openai.OpenAI, body: dict[str, Any], needle: str) -> None:
    args: dict[str, Any] = {"model": MODEL, "input": "hi", "max_output_tokens": 2, **body}
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(**args)
    error = info.value.response.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"


def test_errors_name_the_parameter(http: httpx.Client) -> None:
    resp = http.post("/v1/responses", json={"model": MODEL, "input": "hi", "temperature": "warm"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "temperature"
    resp = http.post("/v1/responses", json={"model": MODEL, "input": [{"type": "function_call_output", "output": "x"}]})
    assert resp.status_code == 400 and resp.json()["error"] == {
        "message": "Missing required parameter: 'input[0].call_id'.", "type": "invalid_request_error",
        "param": "input[0].call_id", "code": None}


def test_an_error_before_the_first_token_keeps_its_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        list(client.responses.create(model="no-such-model:1b", input="hi", stream=True))
    assert "no-such-model" in info.value.response.json()["error"]["message"]
