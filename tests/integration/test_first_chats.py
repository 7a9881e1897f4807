"""What real clients meet first (issue 11), against a real server and the real default model: the default model's
tool-capable template, a large tool list at the default context, "continue response", cut-off characters, Ollama's
reading of schemas, penalties on every route, context shift, and /api/show details."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import MODEL
from tests.integration.custom_models import add_model
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

GREEDY = {"temperature": 0, "seed": 1}
HI = [{"role": "user", "content": "Hi"}]


def lines(resp: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def render(http: httpx.Client, model: str = MODEL, **body: object) -> str:
    doc = http.post("/api/chat", json={"model": model, "stream": False, "_debug_render_only": True, **body}).json()
    return str(doc["_debug_info"]["rendered_template"])


@pytest.fixture(scope="module")
def server() -> Iterator[HerdServer]:
    """A server of this module's own: it loads extra models that other modules' tests of the shared server must
    not find loaded."""
    srv = HerdServer().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def plain_model(server: HerdServer) -> Iterator[str]:
    """The default weights with no TEMPLATE layer: rendered with the GGUF's own Jinja template, which has no tools."""
    yield add_model(server.models_dir, "plain-jinja:latest")


def tool_list(count: int) -> list[dict[str, object]]:
    """About 25 KB of tool definitions, the size Open WebUI sends with every chat by default."""
    tools = []
    for i in range(count):
        tools.append({"type": "function", "function": {
            "name": f"tool_{i}",
            "description": f"Tool number {i}: looks things up in the knowledge base, the web, notes or memory, "
                           "and returns the matching entries with their sources and dates.",
            "parameters": {"type": "object", "properties": {
                "query": {"type": "string", "description": "What to look for, in plain words."},
                "count": {"type": "integer", "description": "How many results to return at most."},
                "kind": {"type": "string", "enum": ["web", "notes", "memory", "files"]},
            }, "required": ["query"]},
        }})
    return tools


def test_default_model_has_the_library_template_with_tools(http: httpx.Client) -> None:
    show = http.post("/api/show", json={"model": MODEL}).json()
    assert "tools" in show["capabilities"]
    assert "{{ .Tools }}" in show["template"] and "<tool_call>[" in show["template"]
    rendered = render(http, messages=HI, tools=tool_list(1))
    assert "<tools>[" in rendered and '"name":"tool_0"' in rendered
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_a_large_tool_list_gets_a_real_answer_at_the_default_context(http: httpx.Client) -> None:
    tools = tool_list(60)
    assert len(json.dumps(tools)) > 24_000
    # Only a bound on the answer's length; the context is the default (4096), which the rendered prompt
    # overflows. As in Ollama the prompt is cut to fit and the context shifts while the answer is written.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello! Who are you?"}], "tools": tools,
            "options": {"num_predict": 24, "seed": 3}}
    # About 4,000 prompt tokens: seconds on an idle machine; the timeout allows for a loaded one.
    resp = http.post("/api/chat", json=body, timeout=900)
    assert resp.status_code == 200, resp.text
    chunks = lines(resp)
    last = chunks[-1]
    assert last["done"] is True and last["done_reason"] in ("stop", "length")
    assert 4000 < last["prompt_eval_count"] <= 4096  # type: ignore[operator]
    assert last["eval_count"] > 1  # type: ignore[operator]


@pytest.mark.parametrize("which", ["library-go", "gguf-jinja", "go-always-closes"])
def test_a_trailing_assistant_message_is_continued(http: httpx.Client, server: HerdServer, which: str) -> None:
    model = {
        "library-go": MODEL,
        "gguf-jinja": add_model(server.models_dir, "plain-jinja:latest"),
        # A Go template that closes every turn and always opens a new one (like Ollama's simplest templates).
        "go-always-closes": add_model(server.models_dir, "closing-go:latest", template=(
            "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
            "<|im_start|>assistant\n")),
    }[which]
    start = "The Roman Empire was born"
    messages = [{"role": "user", "content": "Tell me about Rome."}, {"role": "assistant", "content": start}]
    rendered = render(http, model=model, messages=messages)
    assert rendered.endswith("assistant\n" + start), rendered
    closed = render(http, model=model, messages=messages[:1])
    assert closed.endswith("assistant\n")
    resp = http.post("/api/chat", json={"model": model, "messages": messages, "stream": False,
                                        "options": {**GREEDY, "num_predict": 6}}).json()
    # Only the continuation comes back, never the prefix again or a new turn's header.
    assert resp["eval_count"] == 6 and not resp["message"]["content"].startswith(start)
    assert "<|im_start|>" not in resp["message"]["content"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_cut_off_multibyte_character_is_dropped(http: httpx.Client, stream: bool) -> None:
    messages = [{"role": "user", "content": "Reply with three party emoji and nothing else: 🎉🎉🎉"}]
    full = http.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                        "options": {**GREEDY, "num_predict": 12}}).json()["message"]["content"]
    assert "🎉" in full  # the greedy answer holds the 4-byte emoji, which this vocabulary spells in several tokens
    texts = []
    for n in range(1, 8):
        resp = http.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": stream,
                                            "options": {**GREEDY, "num_predict": n}})
        chunks = lines(resp)
        assert chunks[-1]["eval_count"] == n
        content = "".join(str(c["message"]["content"]) for c in chunks)  # type: ignore[index]
        assert "\ufffd" not in content, (n, content)
        assert full.startswith(content)
        texts.append(content)
    # Some token added only part of a character: the text did not grow with it, and nothing was emitted for it.
    assert any(a == b for a, b in itertools.pairwise(texts)), texts


def test_schema_without_additional_properties_admits_no_other_keys(http: httpx.Client) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    messages = [{"role": "user", "content": "Make up a person with a name, an age and an age range. Reply in JSON."}]
    for route in ("native", "v1"):
        if route == "native":
            doc = http.post("/api/chat", json={"model": MODEL, "messages": messages, "format": schema,
                                               "stream": False, "options": {**GREEDY, "num_predict": 80}}).json()
            text, reason = doc["message"]["content"], doc["done_reason"]
        else:
            doc = http.post("/v1/chat/completions", json={
                "model": MODEL, "messages": messages, "temperature": 0, "seed": 1, "max_tokens": 80,
                "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}).json()
            text, reason = doc["choices"][0]["message"]["content"], doc["choices"][0]["finish_reason"]
        value = json.loads(text)
        assert reason == "stop" and isinstance(value, dict) and set(value) <= {"name", "age"}, text


def test_json_mode_answers_an_object(http: httpx.Client) -> None:
    # Asked for a list, JSON mode still answers an object, as Ollama's JSON grammar (root ::= object) does.
    ask = [{"role": "user", "content": "Give me a JSON list of three numbers."}]
    native = http.post("/api/chat", json={"model": MODEL, "messages": ask, "format": "json", "stream": False,
                                          "options": {**GREEDY, "num_predict": 100}}).json()
    v1 = http.post("/v1/chat/completions", json={"model": MODEL, "messages": ask, "temperature": 0, "seed": 1,
                                                  "max_tokens": 100, "response_format": {"type": "json_object"}}).json()
    for text, reason in ((native["message"]["content"], native["done_reason"]),
                         (v1["choices"][0]["message"]["content"], v1["choices"][0]["finish_reason"])):
        assert text.lstrip().startswith("{"), text
        if reason == "stop":
            assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("stream", [False, True])
def test_penalties_work_on_every_route(http: httpx.Client, stream: bool) -> None:
    penalties = {"repeat_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": 0.5}
    calls = [
        ("/api/chat", {"model": MODEL, "messages": HI, "options": {**penalties, "num_predict": 4}}),
        ("/api/generate", {"model": MODEL, "prompt": "Hi", "options": {**penalties, "num_predict": 4}}),
        ("/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 4, "frequency_penalty": 0.5,
                                  "presence_penalty": 0.5}),
        ("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 4, "frequency_penalty": 0.5,
                             "presence_penalty": 0.5}),
    ]
    for path, body in calls:
        resp = http.post(path, json={**body, "stream": stream})
        assert resp.status_code == 200, (path, resp.text)
        assert "error" not in resp.text, (path, resp.text)


def test_tools_on_a_model_without_them_name_the_model(http: httpx.Client, plain_model: str) -> None:
    tools = tool_list(1)
    native = http.post("/api/chat", json={"model": plain_model, "messages": HI, "tools": tools})
    assert native.status_code == 400
    assert native.json() == {"error": "registry.ollama.ai/library/plain-jinja:latest does not support tools"}
    v1 = http.post("/v1/chat/completions", json={"model": plain_model, "messages": HI, "tools": tools})
    assert v1.status_code == 400 and "does not support tools" in v1.json()["error"]["message"]


def test_context_shift_goes_past_num_ctx_and_shift_false_stops(http: httpx.Client) -> None:
    # A greedy answer that repeats itself without end, so only the context (or num_predict) can stop it.
    ask = [{"role": "user", "content": "Say the word cat five hundred times."}]
    opts = {**GREEDY, "num_ctx": 64, "num_predict": 150}
    shifted = http.post("/api/chat", json={"model": MODEL, "messages": ask, "stream": False, "options": opts}).json()
    assert shifted["prompt_eval_count"] < 64
    assert shifted["done_reason"] == "length" and shifted["eval_count"] == 150
    stopped = http.post("/api/chat", json={"model": MODEL, "messages": ask, "stream": False, "options": opts,
                                           "shift": False}).json()
    assert stopped["done_reason"] == "length"
    assert stopped["prompt_eval_count"] + stopped["eval_count"] <= 64


def test_show_lists_messages_of_the_modelfile(http: httpx.Client) -> None:
    history = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A small model."}]
    created = http.post("/api/create", json={"model": "with-history", "from": MODEL, "messages": history,
                                             "stream": False})
    assert created.status_code == 200, created.text
    show = http.post("/api/show", json={"model": "with-history"}).json()
    assert show["messages"] == history
    assert "messages" not in http.post("/api/show", json={"model": MODEL}).json()
