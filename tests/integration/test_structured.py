"""format, tools and thinking with the real model: structures valid by construction."""

from __future__ import annotations

import concurrent.futures as cf
import json
import random
import re

import httpx
import jsonschema
import ollama
import pytest

from tests.integration.conftest import MODEL
from tests.integration.custom_models import THINK_TEMPLATE, TOOLS_TEMPLATE, add_model
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

TOOLS_MODEL = "herd-test/tools:latest"
THINK_MODEL = "herd-test/think:latest"


# RFC 3339's full-date, which the constraint (like llama.cpp's) follows: year 0000 is a valid date there, though
# Python's date parser (jsonschema's default checker) refuses it.
FORMATS = jsonschema.FormatChecker()
FORMATS.checks("date", raises=ValueError)(
    lambda v: not isinstance(v, str) or re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", v) is not None)


@pytest.fixture(scope="module")
def models(server: HerdServer) -> None:
    add_model(server.models_dir, TOOLS_MODEL, template=TOOLS_TEMPLATE)
    add_model(server.models_dir, THINK_MODEL, template=THINK_TEMPLATE)


def varied_schemas(n: int) -> list[dict[str, object]]:
    rng = random.Random(7)
    name = {"type": "string", "minLength": 1, "maxLength": 20}
    parts: list[tuple[str, dict[str, object]]] = [
        ("name", name),
        ("age", {"type": "integer", "minimum": 0, "maximum": 120}),
        ("score", {"type": "number", "minimum": -5, "maximum": 5}),
        ("active", {"type": "boolean"}),
        ("color", {"type": "string", "enum": ["red", "green", "blue"]}),
        ("tags", {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 3}),
        ("address", {"type": "object", "properties": {"city": name, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                     "required": ["city", "zip"], "additionalProperties": False}),
        ("kind", {"const": "person"}),
        ("id", {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 999}, {"type": "string", "maxLength": 8}]}),
        ("when", {"type": "string", "format": "date"}),
        ("point", {"$ref": "#/$defs/point"}),
        ("ratings", {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 5}, "maxItems": 4}),
    ]
    schemas = []
    for _ in range(n):
        chosen = rng.sample(parts, rng.randint(2, 5))
        props = dict(chosen)
        required = [k for k, _ in chosen if rng.random() < 0.7] or [chosen[0][0]]
        schema: dict[str, object] = {"type": "object", "properties": props, "required": required,
                                     "additionalProperties": False}
        if "point" in props:
            schema["$defs"] = {"point": {"type": "object", "properties": {"x": {"type": "integer", "maximum": 99},
                                                                          "y": {"type": "integer", "maximum": 99}},
                                         "required": ["x", "y"], "additionalProperties": False}}
        schemas.append(schema)
    return schemas


def post_all(server: HerdServer, bodies: list[dict[str, object]]) -> list[dict[str, object]]:
    with httpx.Client(base_url=server.url, timeout=300) as c, cf.ThreadPoolExecutor(8) as pool:
        resps = list(pool.map(lambda b: c.post("/api/chat", json=b), bodies))
    assert all(r.status_code == 200 for r in resps), [r.text for r in resps if r.status_code != 200][:3]
    return [r.json() for r in resps]


def test_fifty_schemas_give_fifty_valid_answers(server: HerdServer) -> None:
    schemas = varied_schemas(50)
    bodies = [{"model": MODEL, "stream": False, "format": s, "options": {"temperature": 0.8, "seed": i,
                                                                          "num_predict": 400},
               "messages": [{"role": "user", "content": "Describe a person as JSON."}]}
              for i, s in enumerate(schemas)]
    answers = post_all(server, bodies)
    for schema, doc in zip(schemas, answers):
        assert doc["done_reason"] == "stop", doc
        jsonschema.validate(json.loads(doc["message"]["content"]), schema,
                            format_checker=FORMATS)


def test_format_json_and_streaming_json(http: httpx.Client) -> None:
    doc = http.post("/api/chat", json={"model": MODEL, "stream": False, "format": "json", "messages": [
        {"role": "user", "content": "Give me a JSON object with keys name and age."}],
        "options": {"temperature": 0, "num_predict": 200}}).json()
    assert isinstance(json.loads(doc["message"]["content"]), (dict, list))
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    lines = http.post("/api/chat", json={"model": MODEL, "format": schema, "messages": [
        {"role": "user", "content": "A number please."}], "options": {"temperature": 0, "num_predict": 100}}).text
    text = "".join(json.loads(line)["message"]["content"] for line in lines.splitlines() if line)
    jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize(("fmt", "status", "error"), [
    ("xml", 500, 'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'),
    (5, 500, 'invalid format: "5"; expected "json" or a valid JSON Schema object'),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, 400, None),
])
def test_bad_formats(http: httpx.Client, fmt: object, status: int, error: str | None) -> None:
    resp = http.post("/api/chat", json={"model": MODEL, "format": fmt, "messages": [
        {"role": "user", "content": "x"}]})
    assert resp.status_code == status
    if error:
        assert resp.json() == {"error": error}
    else:
        assert resp.json()["error"].startswith("invalid JSON schema in format")


# ---- tools -------------------------------------------------------------------------------------------------

EXAMPLES = [
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                      "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_name": "get_weather", "content": "18 C, sunny"},
    {"role": "user", "content": "Convert 5 miles to km."},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "convert",
                                                                      "arguments": {"value": 5, "unit": "km"}}}]},
    {"role": "tool", "tool_name": "convert", "content": "8.05"},
]
BASE_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "convert", "description": "Convert units", "parameters": {
        "type": "object", "properties": {"value": {"type": "number"}, "unit": {"type": "string"}},
        "required": ["value", "unit"]}}},
]
TASKS = ["Book a table for two.", "Create a user profile for Ann.", "Add a calendar event.", "Order a pizza.",
         "Send an email to Bob.", "Log a workout.", "Rate the movie.", "Register a pet."]


def test_tool_calls_are_valid_by_construction(server: HerdServer, models: None) -> None:
    schemas = varied_schemas(50)
    bodies = []
    for i, schema in enumerate(schemas):
        tool = {"type": "function", "function": {"name": f"do_task_{i}", "description": TASKS[i % len(TASKS)],
                                                 "parameters": schema}}
        bodies.append({"model": TOOLS_MODEL, "stream": False, "tools": [*BASE_TOOLS, tool],
                       "messages": [*EXAMPLES, {"role": "user", "content": TASKS[i % len(TASKS)]}],
                       "options": {"temperature": 0, "num_predict": 300}})
    answers = post_all(server, bodies)
    with_calls = 0
    for body, doc in zip(bodies, answers):
        calls = doc["message"].get("tool_calls", [])
        with_calls += bool(calls)
        offered = {t["function"]["name"]: t["function"]["parameters"] for t in body["tools"]}  # type: ignore[union-attr]
        for i, call in enumerate(calls):
            fn = call["function"]
            assert fn["name"] in offered and fn["index"] == i and call["id"].startswith("call_")
            jsonschema.validate(fn["arguments"], offered[fn["name"]], format_checker=FORMATS)
    print(f"{with_calls} of 50 requests produced a tool call; every call validated")
    assert with_calls >= 35


def test_tool_calls_stream_and_through_the_ollama_client(server: HerdServer, models: None) -> None:
    client = ollama.Client(host=server.url)
    messages = [*EXAMPLES, {"role": "user", "content": "What's the weather in Rome?"}]
    resp = client.chat(model=TOOLS_MODEL, messages=messages, tools=BASE_TOOLS,
                       options={"temperature": 0, "num_predict": 100})
    calls = resp.message.tool_calls or []
    assert calls and calls[0].function.name in ("get_weather", "convert")
    streamed = list(client.chat(model=TOOLS_MODEL, messages=messages, tools=BASE_TOOLS, stream=True,
                                options={"temperature": 0, "num_predict": 100}))
    got = [c for chunk in streamed for c in (chunk.message.tool_calls or [])]
    assert [c.function.name for c in got] == [c.function.name for c in calls]
    assert [dict(c.function.arguments) for c in got] == [dict(c.function.arguments) for c in calls]
    assert "<tool_call>" not in "".join(chunk.message.content or "" for chunk in streamed)


def test_tool_results_render_in_the_template(http: httpx.Client, models: None) -> None:
    doc = http.post("/api/chat", json={"model": TOOLS_MODEL, "tools": BASE_TOOLS, "messages": EXAMPLES[:3],
                                       "_debug_render_only": True, "stream": False}).json()
    rendered = doc["_debug_info"]["rendered_template"]
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in rendered
    assert "<tool_response>18 C, sunny</tool_response>" in rendered
    assert '"name": "convert"' in rendered  # the tool definitions reach the template


def test_show_reports_tools_and_thinking(http: httpx.Client, models: None) -> None:
    assert "tools" in http.post("/api/show", json={"model": TOOLS_MODEL}).json()["capabilities"]
    assert "thinking" in http.post("/api/show", json={"model": THINK_MODEL}).json()["capabilities"]


# ---- thinking ----------------------------------------------------------------------------------------------


def test_thinking_goes_to_message_thinking(server: HerdServer, models: None) -> None:
    client = ollama.Client(host=server.url)
    q = [{"role": "user", "content": "What is 12 + 30? Think first."}]
    opts = {"temperature": 0.7, "seed": 3, "num_predict": 120}
    resp = client.chat(model=THINK_MODEL, messages=q, options=opts)  # think defaults to on for thinking models
    assert resp.message.thinking
    assert "<think>" not in (resp.message.content or "") and "</think>" not in (resp.message.content or "")
    chunks = list(client.chat(model=THINK_MODEL, messages=q, options=opts, stream=True))
    assert "".join(c.message.thinking or "" for c in chunks) == resp.message.thinking
    assert "".join(c.message.content or "" for c in chunks) == (resp.message.content or "")
    off = client.chat(model=THINK_MODEL, messages=q, options=opts, think=False)
    assert not off.message.thinking


def test_thinking_with_format_constrains_only_the_answer(http: httpx.Client, models: None) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}
    completed = 0
    for seed in range(6):
        doc = http.post("/api/chat", json={"model": THINK_MODEL, "format": schema, "stream": False, "messages": [
            {"role": "system", "content": "Think in one short sentence, then answer."},
            {"role": "user", "content": "What is 12 + 30?"}],
            "options": {"temperature": 0.7, "seed": seed, "num_predict": 200}}).json()
        if doc["done_reason"] == "length":
            continue  # a 135M model may think until the limit; nothing to check in that answer
        completed += 1
        assert doc["message"].get("thinking")
        jsonschema.validate(json.loads(doc["message"]["content"]), schema)
    assert completed >= 1
