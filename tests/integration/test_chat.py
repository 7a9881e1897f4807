"""/api/chat through a real server and the real model: wire format, options, limits, errors."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.integration.conftest import MODEL

pytestmark = pytest.mark.integration

QUESTION = [{"role": "user", "content": "Why is the sky blue? Answer in one short sentence."}]
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


def lines(resp: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


def chat(http: httpx.Client, **body: object) -> httpx.Response:
    return http.post("/api/chat", json={"model": MODEL, "messages": QUESTION, **body})


def test_stream_is_ndjson_with_final_metrics(http: httpx.Client) -> None:
    resp = chat(http, options={"temperature": 0, "num_predict": 16})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/x-ndjson"
    docs = lines(resp)
    assert len(docs) >= 2
    for doc in docs[:-1]:
        assert list(doc) == ["model", "created_at", "message", "done"]
        assert doc["done"] is False and doc["model"] == MODEL
        assert doc["message"]["role"] == "assistant" and doc["message"]["content"]
        assert RFC3339_UTC.match(doc["created_at"])
    final = docs[-1]
    assert final["done"] is True and final["done_reason"] == "length"
    assert final["eval_count"] == 16
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0, key
    assert final["total_duration"] >= final["eval_duration"]


def test_stream_false_is_one_object_equal_to_the_stream(http: httpx.Client) -> None:
    opts = {"temperature": 0, "num_predict": 24, "seed": 3}
    streamed = lines(chat(http, options=opts))
    resp = chat(http, stream=False, options=opts)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert doc["done"] is True and doc["message"]["role"] == "assistant"
    assert doc["message"]["content"] == "".join(d["message"]["content"] for d in streamed)
    assert doc["eval_count"] == streamed[-1]["eval_count"]


def test_same_seed_same_output_and_other_seed_differs(http: httpx.Client) -> None:
    def run(seed: int) -> str:
        opts = {"temperature": 1.0, "top_k": 100, "top_p": 1.0, "seed": seed, "num_predict": 40}
        return str(chat(http, stream=False, options=opts).json()["message"]["content"])

    a, b = run(1234), run(1234)
    assert a == b
    assert any(run(s) != a for s in (1, 2, 3))


def test_greedy_is_deterministic_without_seed(http: httpx.Client) -> None:
    outs = {chat(http, stream=False, options={"temperature": 0, "num_predict": 20}).json()["message"]["content"]
            for _ in range(2)}
    assert len(outs) == 1


def test_num_predict_limits_and_reports_length(http: httpx.Client) -> None:
    doc = chat(http, stream=False, options={"num_predict": 5, "temperature": 0}).json()
    assert doc["done_reason"] == "length" and doc["eval_count"] == 5


def test_end_of_turn_gives_stop(http: httpx.Client) -> None:
    doc = http.post("/api/chat", json={"model": MODEL, "stream": False, "options": {"temperature": 0},
                                       "messages": [{"role": "user", "content": "Say only the word yes."}]}).json()
    assert doc["done_reason"] == "stop"
    assert "<|im_end|>" not in doc["message"]["content"]


def test_stop_strings_never_appear_even_across_tokens(http: httpx.Client) -> None:
    opts = {"temperature": 0, "num_predict": 40}
    pieces = [d["message"]["content"] for d in lines(chat(http, options=opts))[:-1]]
    full = "".join(pieces)
    # A stop string that starts at the end of one token and ends inside the next.
    i = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    expected = full[: full.index(stop)]
    for stream in (True, False):
        resp = chat(http, stream=stream, options={**opts, "stop": [stop]})
        docs = lines(resp) if stream else [resp.json()]
        text = "".join(d["message"]["content"] for d in docs)
        assert stop not in text
        assert text == expected
        assert docs[-1]["done_reason"] == "stop"


def test_logprobs(http: httpx.Client) -> None:
    doc = chat(http, stream=False, logprobs=True, top_logprobs=3, options={"temperature": 0, "num_predict": 4}).json()
    lps = doc["logprobs"]
    assert len(lps) == 4
    assert "".join(lp["token"] for lp in lps) == doc["message"]["content"]
    for lp in lps:
        assert lp["logprob"] <= 0 and bytes(lp["bytes"]).decode() == lp["token"]
        assert len(lp["top_logprobs"]) == 3
        assert lp["top_logprobs"][0]["token"] == lp["token"]  # greedy picks the most likely
        probs = [t["logprob"] for t in lp["top_logprobs"]]
        assert probs == sorted(probs, reverse=True)
    streamed = lines(chat(http, logprobs=True, options={"temperature": 0, "num_predict": 3}))
    assert all("top_logprobs" not in lp for d in streamed[:-1] for lp in d["logprobs"])
    assert sum(len(d.get("logprobs", [])) for d in streamed) == 3


def test_system_message_and_history_reach_the_template(http: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Arr!"},
        {"role": "user", "content": "Where is the treasure?"},
    ]
    doc = http.post("/api/chat", json={"model": MODEL, "messages": messages, "_debug_render_only": True,
                                       "stream": False}).json()
    rendered = doc["_debug_info"]["rendered_template"]
    # The default model has Ollama's library template, which leaves a system prompt without tools unclosed.
    assert rendered == (
        "<|im_start|>system\nYou are a pirate.\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\nArr!<|im_end|>\n<|im_start|>user\nWhere is the treasure?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    answer = http.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                          "options": {"num_predict": 8}}).json()
    assert answer["prompt_eval_count"] > 30


def test_truncation_keeps_system_and_last_message(http: httpx.Client) -> None:
    history = [{"role": "system", "content": "SYSTEM-MARK"}]
    for i in range(30):
        history.append({"role": "user", "content": f"question {i} " + "word " * 20})
        history.append({"role": "assistant", "content": f"answer {i}"})
    history.append({"role": "user", "content": "LAST-MARK"})
    body = {"model": MODEL, "messages": history, "options": {"num_ctx": 256, "num_predict": 4}, "stream": False}
    rendered = http.post("/api/chat", json={**body, "_debug_render_only": True}).json()["_debug_info"][
        "rendered_template"]
    assert rendered.startswith("<|im_start|>system\nSYSTEM-MARK")
    assert "LAST-MARK" in rendered and "question 0 " not in rendered
    ok = http.post("/api/chat", json=body)
    assert ok.status_code == 200 and ok.json()["prompt_eval_count"] <= 256
    refused = http.post("/api/chat", json={**body, "truncate": False})
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("the prompt is longer than the context length")


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"", 400, "missing request body"),
        (b'{"model": "smollm2:135m", "messages": [ {"role": "user", ', 400, "unexpected EOF"),
        (b'{"model": "smollm2:135m", x}', 400, "invalid character 'x' looking for beginning of object key string"),
        (b'{"messages": []}', 400, "model is required"),
        (b"null", 400, "model is required"),
        (b'{"model": "bad name!"}', 400, "invalid model name"),
        (b'{"model": "nosuchmodel:latest", "messages": []}', 404, "model 'nosuchmodel:latest' not found"),
        (b'{"model": "NoSuch"}', 404, "model 'NoSuch' not found"),
        (b'{"model": "smollm2:135m", "messages": [{"role": "user", "content": 123}]}', 400,
         "json: cannot unmarshal number into Go struct field ChatRequest.messages.content of type string"),
        (b'{"model": "smollm2:135m", "messages": [{"role": "user", "content": "x"}], "options": {"num_predict": "a"}}',
         400, 'option "num_predict" must be of type integer'),
        (b'{"model": "smollm2:135m", "messages": [], "options": {"stop": [1]}}', 400,
         'option "stop" must be of an array of strings'),
        (b'{"model": "smollm2:135m", "think": true, "messages": [{"role": "user", "content": "x"}]}', 400,
         '"smollm2:135m" does not support thinking'),
        (b'{"model": "smollm2:135m", "think": "huge"}', 400,
         'invalid think value: "huge" (must be "high", "medium", "low", "max", true, or false)'),
        (b'{"model": "smollm2:135m", "think": 3}', 400,
         'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'),
        (b'{"model": "smollm2:135m", "keep_alive": "10"}', 400, 'time: missing unit in duration "10"'),
        (b'{"model": "smollm2:135m", "keep_alive": [1]}', 400, "Unsupported type: 'list'"),
        (b'{"model": "smollm2:135m", "top_logprobs": 21}', 400, "top_logprobs must be between 0 and 20"),
        (b'{"model": "smollm2:135m", "top_logprobs": -1}', 400, "top_logprobs must be between 0 and 20"),
        (b'{"model": "smollm2:135m", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}', 400,
         "registry.ollama.ai/library/smollm2:135m does not support vision"),
        (b'{"model": "smollm2:135m", "messages": [{"role": "user", "content": "x", "images": ["**"]}]}', 400,
         "illegal base64 data at input byte 0"),
    ],
)
def test_errors(http: httpx.Client, body: bytes, status: int, error: str) -> None:
    resp = http.post("/api/chat", content=body)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"error": error}


def test_tools_empty_list_is_no_tools(http: httpx.Client) -> None:
    assert chat(http, tools=[], stream=False, options={"num_predict": 2}).status_code == 200


def test_unknown_fields_and_legacy_options_are_ignored(http: httpx.Client) -> None:
    resp = chat(http, stream=False, whatever=1, options={"num_predict": 2, "mirostat": 0, "tfs_z": 1.0,
                                                          "use_mlock": False, "unknown_opt": "x"})
    assert resp.status_code == 200


def test_routes_and_methods(http: httpx.Client) -> None:
    root = http.get("/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert http.head("/").status_code == 200
    wrong = http.get("/api/chat")
    assert wrong.status_code == 405 and wrong.text == "405 method not allowed"
    assert wrong.headers["allow"] == "POST"
    assert http.post("/api/tags").headers["allow"] == "GET, HEAD"
    missing = http.get("/api/nosuch")
    assert missing.status_code == 404 and missing.text == "404 page not found"
    version = http.get("/api/version").json()["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)


def test_tags_and_show(http: httpx.Client) -> None:
    models = http.get("/api/tags").json()["models"]
    entry = next(m for m in models if m["name"] == MODEL)
    assert entry["model"] == MODEL and re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
    assert entry["details"]["family"] == "llama" and entry["details"]["quantization_level"] == "Q4_1"
    # Registered as Ollama's library model is: its template renders tools, so clients that always send tools work.
    assert entry["size"] > 90_000_000 and entry["capabilities"] == ["completion", "tools"]
    show = http.post("/api/show", json={"model": "smollm2"}).json()
    assert show["capabilities"] == ["completion", "tools"]
    assert show["system"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert show["parameters"].splitlines() == ['stop                           "<|im_start|>"',
                                               'stop                           "<|im_end|>"']
    assert show["model_info"]["llama.context_length"] == 8192
    assert show["model_info"]["general.architecture"] == "llama"
    assert "<|im_start|>" in show["template"] and show["modelfile"].startswith("# Modelfile generated by")
    assert "tokenizer.chat_template" not in show["model_info"]
    missing = http.post("/api/show", json={"model": "nosuchmodel"})
    assert missing.status_code == 404 and missing.json() == {"error": "model 'nosuchmodel:latest' not found"}
    # The name as sent: host, namespace and case are not normalised away.
    sent = "example.com/Team/NoSuch:Q4"
    assert http.post("/api/show", json={"model": sent}).json() == {"error": f"model '{sent}' not found"}
    assert http.post("/api/show", json={}).json() == {"error": "model is required"}


def test_model_names_are_case_insensitive_and_aliases_resolve(http: httpx.Client) -> None:
    for name in ("SmolLM2:135M", "smollm2", "smollm2:latest"):
        resp = http.post("/api/chat", json={"model": name, "messages": [], "stream": False})
        assert resp.status_code == 200, name
        assert resp.json()["model"] == name  # echoed as sent
