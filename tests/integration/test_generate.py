"""/api/generate through a real server and the real model, with httpx and the official `ollama` client:
wire format, context round trip, raw and template prompts, shortcuts, limits and errors."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

PROMPT = "Why is the sky blue?"
GREEDY = {"temperature": 0, "num_predict": 8}


def lines(resp: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def generate(http: httpx.Client, **body: object) -> httpx.Response:
    return http.post("/api/generate", json={"model": MODEL, **body})


def render(http: httpx.Client, **body: object) -> str:
    doc = generate(http, stream=False, _debug_render_only=True, **body).json()
    assert list(doc) == ["model", "created_at", "response", "done", "_debug_info"]
    return str(doc["_debug_info"]["rendered_template"])


def test_stream_is_ndjson_and_final_chunk_returns_context(http: httpx.Client) -> None:
    resp = generate(http, prompt=PROMPT, options=GREEDY)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-ndjson"
    docs = lines(resp)
    for doc in docs[:-1]:
        assert list(doc) == ["model", "created_at", "response", "done"]
        assert doc["model"] == MODEL and doc["done"] is False and doc["response"]
    final = docs[-1]
    assert list(final)[:6] == ["model", "created_at", "response", "done", "done_reason", "context"]
    assert final["done"] is True and final["done_reason"] == "length" and final["eval_count"] == 8
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0, key
    context = final["context"]
    assert isinstance(context, list) and all(isinstance(t, int) for t in context)
    # The context is the prompt's tokens followed by every generated token.
    assert len(context) == final["prompt_eval_count"] + final["eval_count"]


def test_ollama_client_stream_and_non_stream_agree(server: HerdServer) -> None:
    client = ollama.Client(host=server.url)
    parts = list(client.generate(model=MODEL, prompt=PROMPT, options=GREEDY, stream=True))
    whole = client.generate(model=MODEL, prompt=PROMPT, options=GREEDY)
    assert whole.done and whole.done_reason == "length" and whole.eval_count == 8
    assert whole.response == "".join(p.response for p in parts)
    assert whole.context == parts[-1].context and whole.context


def test_context_is_fed_back_in_front_of_the_next_prompt(http: httpx.Client) -> None:
    first = generate(http, prompt="Name a colour.", stream=False, options=GREEDY).json()
    rendered = render(http, prompt="And another one?", context=first["context"])
    assert "Name a colour." in rendered and first["response"] in rendered
    assert rendered.rstrip().endswith("And another one?<|im_end|>\n<|im_start|>assistant")
    follow = generate(http, prompt="And another one?", context=first["context"], stream=False,
                      options={"num_predict": 2}).json()
    assert follow["prompt_eval_count"] > len(first["context"])


def test_prompt_building_system_template_and_raw(http: httpx.Client) -> None:
    default = render(http, prompt="Hi")
    assert default.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    # The library template leaves a system prompt without tools unclosed, as Ollama renders it.
    assert render(http, prompt="Hi", system="Be brief.").startswith("<|im_start|>system\nBe brief.\n<|im_start|>user")
    # A request template is a Go template with the legacy variables; `.Response` ends the prompt.
    assert render(http, prompt="Hi", system="S", template="[{{ .System }}|{{ .Prompt }}]{{ .Response }}") == "[S|Hi]"
    assert render(http, prompt="Hi", raw=True) == "Hi"
    raw = generate(http, prompt="The capital of France is", raw=True, stream=False, options=GREEDY).json()
    assert raw["done_reason"] == "length" and "context" not in raw
    assert raw["prompt_eval_count"] == 5  # the prompt verbatim: no template around it


def test_same_seed_same_output(http: httpx.Client) -> None:
    def run(seed: int) -> str:
        opts = {"temperature": 1.0, "top_k": 100, "seed": seed, "num_predict": 12}
        return str(generate(http, prompt=PROMPT, stream=False, options=opts).json()["response"])

    first = run(99)
    assert run(99) == first
    assert any(run(s) != first for s in (1, 2, 3))


def test_stop_and_logprobs(http: httpx.Client) -> None:
    full = generate(http, prompt=PROMPT, stream=False, options={"temperature": 0, "num_predict": 16}).json()
    stop = full["response"].split()[2]
    cut = generate(http, prompt=PROMPT, stream=False, options={"temperature": 0, "num_predict": 16,
                                                               "stop": [stop]}).json()
    assert cut["done_reason"] == "stop" and stop not in cut["response"]
    assert full["response"].startswith(cut["response"])
    doc = generate(http, prompt=PROMPT, stream=False, logprobs=True, top_logprobs=2,
                   options={"temperature": 0, "num_predict": 3}).json()
    assert len(doc["logprobs"]) == 3
    assert "".join(lp["token"] for lp in doc["logprobs"]) == doc["response"]
    assert all(len(lp["top_logprobs"]) == 2 for lp in doc["logprobs"])


def test_format_schema_constrains_the_response(http: httpx.Client) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "blue"]}},
              "required": ["colour"], "additionalProperties": False}
    doc = generate(http, prompt="What colour is the sky? Answer in JSON.", format=schema, stream=False,
                   options={"temperature": 0, "num_predict": 40}).json()
    assert doc["done_reason"] == "stop"
    assert json.loads(doc["response"])["colour"] in ("red", "blue")


def test_prompt_longer_than_context(http: httpx.Client) -> None:
    long = "word " * 200
    opts = {"num_ctx": 64, "num_predict": 1}
    fitted = generate(http, prompt=long, raw=True, stream=False, options=opts)
    assert fitted.status_code == 200 and fitted.json()["prompt_eval_count"] < 64
    refused = generate(http, prompt=long, raw=True, truncate=False, stream=False, options=opts)
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("the prompt is longer than the context length")


def test_load_and_unload_shortcuts(server: HerdServer, http: httpx.Client) -> None:
    loaded = generate(http)
    assert loaded.status_code == 200 and loaded.headers["content-type"].startswith("application/json")
    doc = loaded.json()
    assert list(doc) == ["model", "created_at", "response", "done", "done_reason"]
    assert doc["response"] == "" and doc["done_reason"] == "load"
    assert any(m["name"] == MODEL for m in http.get("/api/ps").json()["models"])
    gone = ollama.Client(host=server.url).generate(model=MODEL, prompt="", keep_alive=0)
    assert gone.done_reason == "unload"
    assert all(m["name"] != MODEL for m in http.get("/api/ps").json()["models"])


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"prompt": "x"}, 404, "model '' not found"),
        ({"model": "bad name!", "prompt": "x"}, 404, "model 'bad name!' not found"),
        ({"model": "NoSuch", "prompt": "x"}, 404, "model 'NoSuch' not found"),
        ({"model": MODEL, "prompt": 5}, 400,
         "json: cannot unmarshal number into Go struct field GenerateRequest.prompt of type string"),
        ({"model": MODEL, "prompt": "x", "raw": True, "system": "s"}, 400,
         "raw mode does not support template, system, or context"),
        ({"model": MODEL, "prompt": "x", "raw": True, "context": [1, 2]}, 400,
         "raw mode does not support template, system, or context"),
        ({"model": MODEL, "prompt": "x", "suffix": "y"}, 400,
         "registry.ollama.ai/library/smollm2:135m does not support insert"),
        ({"model": MODEL, "prompt": "x", "images": ["aGk="]}, 400,
         "registry.ollama.ai/library/smollm2:135m does not support vision"),
        ({"model": MODEL, "prompt": "x", "images": ["**"]}, 400, "illegal base64 data at input byte 0"),
        ({"model": MODEL, "prompt": "x", "think": True}, 400, '"smollm2:135m" does not support thinking'),
        ({"model": MODEL, "prompt": "x", "top_logprobs": 21}, 400, "top_logprobs must be between 0 and 20"),
        ({"model": MODEL, "prompt": "x", "keep_alive": "10"}, 400, 'time: missing unit in duration "10"'),
        ({"model": MODEL, "prompt": "x", "options": {"num_predict": "a"}}, 400,
         'option "num_predict" must be of type integer'),
        ({"model": MODEL, "prompt": "x", "template": "{{ .Prompt"}, 400, "template error: "),
        ({"model": MODEL, "prompt": "x", "format": "xml"}, 500,
         'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_errors(http: httpx.Client, body: dict[str, object], status: int, error: str, stream: bool) -> None:
    """Errors found before the first token keep their status code whether or not the reply streams."""
    resp = http.post("/api/generate", json={**body, "stream": stream})
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"].startswith(error)


def test_empty_body(http: httpx.Client) -> None:
    resp = http.post("/api/generate", content=b"")
    assert resp.status_code == 400 and resp.json() == {"error": "missing request body"}


def test_errors_through_the_ollama_client(server: HerdServer) -> None:
    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as missing:
        client.generate(model="nosuchmodel", prompt="x")
    assert missing.value.status_code == 404 and missing.value.error == "model 'nosuchmodel' not found"
