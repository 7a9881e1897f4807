"""The /v1 layer through a real server, with the official `openai` client and raw httpx: chat completions
(streamed and not), structured output, completions, models, embeddings, and OpenAI-shaped errors."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "Why is the sky blue? Answer in one short sentence."}]


@pytest.fixture()
def client(server: HerdServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def sse_events(resp: httpx.Response) -> list[str]:
    assert resp.text.endswith("\n\n")
    events = resp.text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: "):] for e in events]


def render(http: httpx.Client, **body: object) -> str:
    doc = http.post("/v1/chat/completions", json={"model": MODEL, "_debug_render_only": True, **body}).json()
    return str(doc["_debug_info"]["rendered_template"])


def test_chat_non_streamed(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0)
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion"
    assert resp.model == MODEL and resp.system_fingerprint == "fp_ollama" and resp.created > 0
    choice = resp.choices[0]
    assert choice.index == 0 and choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.message.tool_calls is None
    assert resp.usage is not None and resp.usage.completion_tokens == 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 8 and resp.usage.prompt_tokens > 10


def test_chat_streamed_matches_non_streamed_and_reports_usage(client: openai.OpenAI) -> None:
    args = {"model": MODEL, "messages": QUESTION, "max_tokens": 8, "temperature": 0}
    whole = client.chat.completions.create(**args)  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                 **args))  # type: ignore[call-overload]
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    *deltas, finish, usage = chunks
    assert deltas[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in deltas[1:])
    assert all(c.choices[0].finish_reason is None for c in deltas)
    assert "".join(c.choices[0].delta.content or "" for c in deltas) == whole.choices[0].message.content
    assert finish.choices[0].finish_reason == "length" and finish.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 8 and usage.usage.prompt_tokens == whole.usage.prompt_tokens  # type: ignore[union-attr]


def test_sse_framing(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "max_tokens": 3,
                                                   "stream": True, "temperature": 0})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp)
    assert events[-1] == "[DONE]"
    docs = [json.loads(e) for e in events[:-1]]
    assert list(docs[0]) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
    assert docs[0]["choices"][0]["delta"] == {"role": "assistant", "content": docs[0]["choices"][0]["delta"]["content"]}
    assert docs[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert all("usage" not in d for d in docs)


def test_json_schema_response_format_is_enforced(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]},
                       "certain": {"type": "boolean"}},
        "required": ["colour", "certain"],
        "additionalProperties": False,
    }
    resp = client.chat.completions.create(
        model=MODEL, max_tokens=60, temperature=0,
        messages=[{"role": "user", "content": "What colour is the sky? Reply in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "sky", "schema": schema, "strict": True}},
    )
    doc = json.loads(resp.choices[0].message.content or "")
    assert set(doc) == {"colour", "certain"}
    assert doc["colour"] in ("red", "green", "blue") and isinstance(doc["certain"], bool)
    assert resp.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    def run(seed: int) -> str:
        # temperature and top_p default to 1.0 on this API: real sampling.
        resp = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, seed=seed)
        return resp.choices[0].message.content or ""

    first = run(5)
    assert run(5) == first
    assert any(run(s) != first for s in (6, 7, 8))


def test_stop_and_logprobs(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    text = full.choices[0].message.content or ""
    stop = text.split()[2]
    cut = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0, stop=stop)
    assert cut.choices[0].finish_reason == "stop" and stop not in (cut.choices[0].message.content or "")
    lp = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=3, temperature=0,
                                        logprobs=True, top_logprobs=2)
    entries = lp.choices[0].logprobs.content  # type: ignore[union-attr]
    assert entries is not None and len(entries) == 3
    assert "".join(e.token for e in entries) == lp.choices[0].message.content
    assert all(e.logprob <= 0 and len(e.top_logprobs) == 2 for e in entries)


def test_message_translation(http: httpx.Client) -> None:
    parts = [{"type": "text", "text": "First part."}, {"type": "text", "text": "Second part."}]
    rendered = render(http, messages=[{"role": "system", "content": "SYS"}, {"role": "user", "content": parts}])
    # Each content part becomes its own message with the same role (Ollama); a Go template's message list then
    # joins consecutive messages of one role with a blank line, as Ollama's collate does.
    assert "<|im_start|>system\nSYS\n" in rendered
    assert "<|im_start|>user\nFirst part.\n\nSecond part.<|im_end|>" in rendered
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "RESULT-MARK"},
    ]
    assert "RESULT-MARK" in render(http, messages=history)


def test_completions(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0)
    assert resp.id.startswith("cmpl-") and resp.object == "text_completion" and resp.model == MODEL
    assert resp.choices[0].text and resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 4
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == resp.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_models(client: openai.OpenAI, http: httpx.Client) -> None:
    models = client.models.list().data
    entry = next(m for m in models if m.id == MODEL)
    assert entry.object == "model" and entry.owned_by == "library" and entry.created > 0
    assert http.get("/v1/models").json()["object"] == "list"
    one = client.models.retrieve("smollm2")
    assert one.id == "smollm2" and one.owned_by == "library"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("nosuchmodel")
    assert missing.value.body == {"message": "model 'nosuchmodel:latest' not found", "type": "not_found_error",
                                  "param": None, "code": None}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/chat/completions", {"model": "nosuch", "messages": QUESTION}, 404, "model 'nosuch' not found"),
        ("/v1/chat/completions", {"messages": QUESTION}, 400, "model is required"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "[] is too short - 'messages'"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}]}, 400,
         "invalid message content type: <nil>"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
         400, "invalid message format"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}, 400,
         "image URLs are not currently supported, please use base64 encoded data instead"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": "data:text/plain;base64,aGk="}]}]}, 400, "invalid image input"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}]}]}, 400,
         "registry.ollama.ai/library/smollm2:135m does not support vision"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, 400,
         "invalid tool call arguments"),
        ("/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "reasoning_effort": "huge"}, 400,
         ('invalid reasoning value: "huge" (must be "minimal", "low", "medium", "high", "xhigh", "ultra", "max", '
          'or "none")')),
        ("/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "reasoning_effort": "high"}, 400,
         '"smollm2:135m" does not support thinking'),
        ("/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "tool_choice": "required"}, 400,
         "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."),
        ("/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "top_logprobs": 21}, 400,
         "top_logprobs must be between 0 and 20"),
        ("/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "max_tokens": "8"}, 400,
         "json: cannot unmarshal string into Go struct field ChatCompletionRequest.max_tokens of type int"),
        ("/v1/chat/completions", {"model": MODEL, "messages": QUESTION, "response_format": {"type": "json_schema",
         "json_schema": {"name": "x", "schema": "not a schema"}}}, 500, None),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": ["a", 1]}, 400,
         "invalid type for 'stop' field: float64"),
        ("/v1/completions", {"model": "nosuch", "prompt": "x"}, 404, "model 'nosuch' not found"),
        ("/v1/embeddings", {"model": MODEL, "input": []}, 400, "invalid input"),
        ("/v1/embeddings", {"model": MODEL}, 400, "invalid input"),
        ("/v1/embeddings", {"model": MODEL, "input": [[1, 2]]}, 400, "invalid input type"),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "encoding_format": "xml"}, 400,
         "Invalid value for 'encoding_format' = xml. Supported values: ['float', 'base64']."),
        ("/v1/embeddings", {"model": "nosuch", "input": "x"}, 404, 'model "nosuch" not found, try pulling it first'),
    ],
)
def test_errors_have_openai_shape(http: httpx.Client, path: str, body: dict[str, object], status: int,
                                  message: str | None) -> None:
    for stream in (False, True) if path != "/v1/embeddings" else (False,):
        resp = http.post(path, json={**body, "stream": stream})
        assert resp.status_code == status, resp.text
        assert resp.headers["content-type"] == "application/json"
        error = resp.json()["error"]
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        assert error["type"] == kind and error["param"] is None and error["code"] is None
        if message is not None:
            assert error["message"] == message


def test_errors_through_the_openai_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nosuchmodel", messages=QUESTION)
    assert missing.value.status_code == 404 and "model 'nosuchmodel' not found" in str(missing.value)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[], stream=True)
    assert bad.value.status_code == 400


def test_embeddings(client: openai.OpenAI, http: httpx.Client) -> None:
    # The official client asks for base64 by default and decodes it.
    resp = client.embeddings.create(model=MODEL, input=["hello world", "the sky is blue"])
    assert resp.object == "list" and resp.model == MODEL and [d.index for d in resp.data] == [0, 1]
    vec = resp.data[0].embedding
    assert len(vec) == 576 and abs(sum(x * x for x in vec) - 1.0) < 1e-4
    assert resp.usage.prompt_tokens == resp.usage.total_tokens > 0
    floats = http.post("/v1/embeddings", json={"model": MODEL, "input": "hello world",
                                               "encoding_format": "float", "dimensions": 8}).json()
    assert list(floats) == ["object", "data", "model", "usage"]
    assert floats["data"][0]["object"] == "embedding" and len(floats["data"][0]["embedding"]) == 8
    empty = http.post("/v1/embeddings", json={"model": MODEL, "input": ""})
    assert empty.status_code == 200 and len(empty.json()["data"]) == 1


# ---- the fields newer SDKs send (issue 15 point 3) ----------------------------------------------------------------


def test_max_completion_tokens_bounds_the_answer(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=5, temperature=0)
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    assert resp.choices[0].finish_reason == "length"


def test_n_choices_each_with_its_own_seed(client: openai.OpenAI) -> None:
    """n=3 with seed s: choice i samples like a single request with seed s+i, so the choices are reproducible one
    by one; the prompt is counted once, the completions of all three together."""
    args = {"model": MODEL, "messages": QUESTION, "max_completion_tokens": 10}
    resp = client.chat.completions.create(n=3, seed=11, **args)  # type: ignore[call-overload]
    assert [c.index for c in resp.choices] == [0, 1, 2]
    texts = [c.message.content for c in resp.choices]
    assert all(texts) and len(set(texts)) > 1
    for i in (0, 2):
        one = client.chat.completions.create(seed=11 + i, **args)  # type: ignore[call-overload]
        assert one.choices[0].message.content == texts[i]
        assert resp.usage is not None and one.usage is not None
        assert resp.usage.prompt_tokens == one.usage.prompt_tokens
    assert resp.usage is not None and resp.usage.completion_tokens == 30

    # streamed: each chunk names its choice; joined per index they are the same three answers
    parts: dict[int, str] = {0: "", 1: "", 2: ""}
    finished = set()
    stream = client.chat.completions.create(n=3, seed=11, stream=True, stream_options={"include_usage": True},
                                            **args)  # type: ignore[call-overload]
    chunks = list(stream)
    for chunk in chunks[:-1]:
        for choice in chunk.choices:
            parts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert [parts[i] for i in range(3)] == texts and finished == {0, 1, 2}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 30


def test_n_choices_on_completions(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, n=2, seed=3)
    assert [c.index for c in resp.choices] == [0, 1] and all(c.text for c in resp.choices)
    assert resp.usage is not None and resp.usage.completion_tokens == 8


def test_logit_bias_bans_the_greedy_first_token(http: httpx.Client) -> None:
    """The model's own greedy first token (read from /api/generate's context, which is the model's token ids),
    banned with -100, is not the first token any more; an id outside the vocabulary is a 400 before any work."""
    prompt = "The capital of France is"
    gen = http.post("/api/generate", json={"model": MODEL, "prompt": prompt, "stream": False,
                                           "options": {"temperature": 0, "num_predict": 1}}).json()
    assert gen["eval_count"] == 1
    first = gen["context"][-1]  # the context ends with the generated token
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0}
    plain = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert plain == gen["response"]
    banned = http.post("/v1/completions", json={**body, "logit_bias": {str(first): -100}}).json()
    assert banned["choices"][0]["text"] != plain
    bad = http.post("/v1/chat/completions", json={"model": MODEL, "messages": QUESTION,
                                                  "logit_bias": {"99999999": 5}})
    assert bad.status_code == 400 and "not in the model's vocabulary" in bad.json()["error"]["message"]


def test_parallel_tool_calls_false_gives_at_most_one_call(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}, "required": ["city"]}}}]
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris, Rome and Oslo?"}], tools=tools,
        tool_choice="required", parallel_tool_calls=False, max_completion_tokens=64, temperature=0)
    calls = resp.choices[0].message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "weather"
    assert "city" in json.loads(calls[0].function.arguments)
    assert resp.choices[0].finish_reason == "tool_calls"
