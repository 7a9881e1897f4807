"""Request bodies of every odd shape on /api/chat, /api/generate, /api/embed and /v1/chat/completions (issue 12,
points 1 and 8), through a real server: none gets a 500, a plain-text error or a hang. Each one is answered with a
JSON error and a 4xx, or with a 200 where Ollama accepts the body too.

The table is built from one valid body per route: every field is replaced in turn by values of the wrong type,
huge or non-finite numbers, lone surrogate escapes, invalid UTF-8 and deep nesting; then whole-body oddities
(empty, BOM, UTF-16, NaN literals, truncation). Text that is not valid Unicode is read as U+FFFD, as Go does.
A bounded server (small context, short answers) keeps the accepted bodies cheap.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from herd.api.body import MAX_DEPTH
from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

BOUNDED_ENV = {
    "HERD_NUM_PARALLEL": "2", "HERD_CONTEXT_LENGTH": "256", "HERD_NUM_THREAD": "1", "HERD_MAX_NUM_PREDICT": "64",
    "HERD_MAX_EMBED_INPUTS": "8", "HERD_MAX_EMBED_TOKENS": "200", "HERD_MAX_STOP": "4", "HERD_MAX_STOP_LENGTH": "16",
}
SHORT = {"num_predict": 1, "temperature": 0}
# Ollama's one 500 for a request error (`format` neither "json" nor a schema), kept as Ollama sends it (test_fuzz.py).
DOCUMENTED_500 = '"invalid format: '

HI = [{"role": "user", "content": "hi"}]
# The default model with a one-token answer as its own PARAMETER: a body whose `options` or `max_tokens` is replaced
# still ends after one token (otherwise it would generate until the client gives up).
TERSE = "terse-smollm2"
BASES: dict[str, dict[str, object]] = {
    "/api/chat": {"model": TERSE, "messages": HI, "stream": False, "options": SHORT},
    "/api/generate": {"model": TERSE, "prompt": "hi", "stream": False, "options": SHORT},
    "/api/embed": {"model": TERSE, "input": "hi"},
    "/v1/chat/completions": {"model": TERSE, "messages": HI, "max_tokens": 1, "temperature": 0},
}
# Fields of each route, as paths into the base body (an int is a list index).
FIELDS: dict[str, list[tuple[object, ...]]] = {
    "/api/chat": [("model",), ("messages",), ("messages", 0), ("messages", 0, "role"), ("messages", 0, "content"),
                  ("messages", 0, "images"), ("messages", 0, "tool_calls"), ("messages", 0, "thinking"), ("tools",),
                  ("format",), ("options",), ("options", "temperature"), ("options", "num_predict"),
                  ("options", "stop"), ("options", "seed"), ("options", "num_ctx"), ("stream",), ("keep_alive",),
                  ("think",), ("logprobs",), ("top_logprobs",), ("truncate",)],
    "/api/generate": [("model",), ("prompt",), ("suffix",), ("system",), ("template",), ("context",), ("raw",),
                      ("images",), ("format",), ("options",), ("options", "stop"), ("options", "top_k"), ("stream",),
                      ("keep_alive",), ("think",)],
    "/api/embed": [("model",), ("input",), ("truncate",), ("dimensions",), ("options",), ("keep_alive",)],
    "/v1/chat/completions": [("model",), ("messages",), ("messages", 0), ("messages", 0, "role"),
                             ("messages", 0, "content"), ("tools",), ("tool_choice",), ("response_format",),
                             ("stop",), ("max_tokens",), ("temperature",), ("seed",), ("stream",), ("stream_options",),
                             ("logprobs",), ("top_logprobs",)],
}
# Raw JSON text put in place of a field: wrong types, edge numbers, text that is not valid Unicode.
VALUES = [
    "null", "true", "-1", "0", "1.5", '"x"', '""', "[]", "{}", "[1]", '["x"]', '{"a":1}', "1e308", "-1e308",
    "123456789012345678901234567890", "9223372036854775808", "1e999", "NaN", "-Infinity",
    '"hi \\ud83d there"', '"\\udc00"', '["\\ud83d"]', '{"\\ud800":"\\udfff"}', '"\xff\xfe"',
    "[" * 40 + "]" * 40, '{"a":' * 40 + "1" + "}" * 40, "[" * 900 + "]" * 900, "[" * 20000 + "]" * 20000,
]
WHOLE_BODIES = [
    b"", b" \n", b"null", b"[]", b"1", b'"x"', b"{", b'{"model":', b"{}}", b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00",
    b'{"model":NaN}', b"{\"model\":'x'}", b"\x00", b"[" * 50000, b'{"model":"\\ud83d"}', b'{"\\ud83d":1}',
]


def render(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def replaced(base: dict[str, object], path: tuple[object, ...], raw: str) -> bytes:
    """The base body as JSON text with the field at `path` replaced by raw JSON text (which may not be valid)."""
    marker = "\u0000FIELD\u0000"
    doc = json.loads(json.dumps(base))
    node = doc
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = marker  # type: ignore[index]
    text = render(doc).replace(render(marker), raw)
    return text.encode("utf-8", "surrogateescape") if "\xff" not in raw else text.encode("latin-1", "replace")


def cases() -> Iterator[tuple[str, str, bytes]]:
    """(route, a label for failure messages, body)."""
    for route, base in BASES.items():
        for path in FIELDS[route]:
            for raw in VALUES:
                yield route, f"{'.'.join(map(str, path))} = {raw[:40]!r}", replaced(base, path, raw)
        for body in WHOLE_BODIES:
            yield route, f"body {body[:40]!r}", body


def check(resp: httpx.Response, openai: bool) -> str | None:
    """None when the answer is acceptable, else what is wrong with it."""
    ctype = resp.headers.get("content-type", "")
    if resp.status_code == 500 and ctype.startswith("application/json") and DOCUMENTED_500 in resp.text:
        return None
    if resp.status_code >= 500:
        return f"status {resp.status_code}: {resp.text[:200]}"
    if resp.status_code == 200:
        if "ndjson" in ctype:
            for line in resp.text.splitlines():
                if line.strip():
                    json.loads(line)
            return None
        if "event-stream" in ctype:
            return None if resp.text.rstrip().endswith("[DONE]") or '"error"' in resp.text else "SSE without end"
        json.loads(resp.text)
        return None
    if not 400 <= resp.status_code < 500 or not ctype.startswith("application/json"):
        return f"status {resp.status_code} {ctype}: {resp.text[:200]}"
    error = resp.json().get("error")
    message = error.get("message") if openai and isinstance(error, dict) else error
    if not isinstance(message, str) or not message:
        return f"no error message: {resp.text[:200]}"
    return None


@pytest.fixture(scope="module")
def bounded() -> Iterator[HerdServer]:
    srv = HerdServer(env=BOUNDED_ENV).start()
    made = httpx.post(srv.url + "/api/create", json={"model": TERSE, "from": MODEL, "stream": False,
                                                    "parameters": {"num_predict": 1, "temperature": 0}}, timeout=60)
    assert made.status_code == 200, made.text
    yield srv
    srv.stop()


@pytest.fixture()
def h(bounded: HerdServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bounded.url, timeout=60) as client:
        yield client


@pytest.mark.parametrize("route", list(BASES))
def test_no_body_gets_a_500_or_a_non_json_error(h: httpx.Client, bounded: HerdServer, route: str) -> None:
    failures = []
    count = 0
    t0 = time.monotonic()
    for path, label, body in cases():
        if path != route:
            continue
        count += 1
        try:
            resp = h.post(path, content=body)
        except httpx.HTTPError as exc:
            failures.append((label, f"transport: {exc!r}"))
            continue
        problem = check(resp, openai=path.startswith("/v1"))
        if problem:
            failures.append((label, problem))
    assert count > 100 and time.monotonic() - t0 < 600
    assert not failures, f"{len(failures)} of {count} bodies:\n" + "\n".join(f"{b}: {p}" for b, p in failures[:40])
    assert h.get("/api/ps").status_code == 200  # the server is still up
    assert bounded.proc is not None and bounded.proc.poll() is None


# ---- text that is not valid Unicode is read as U+FFFD ------------------------------------------------------------


def test_lone_surrogates_and_invalid_utf8_are_read_as_replacement_characters(h: httpx.Client) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi \ud83d there \udc00"}], "stream": False,
            "options": SHORT}
    raw = json.dumps(body).encode()  # ensure_ascii: the surrogates go as \\ud83d escapes
    assert b"\\ud83d" in raw
    v1 = json.dumps({"model": MODEL, "messages": body["messages"], "max_tokens": 1}).encode()
    for route, data in (("/api/chat", raw), ("/v1/chat/completions", v1)):
        resp = h.post(route, content=data)
        assert resp.status_code == 200, resp.text
    # The replaced text is what the template saw: the debug render shows it.
    debug = dict(body, _debug_render_only=True)
    shown = h.post("/api/chat", content=json.dumps(debug).encode())
    assert shown.status_code == 200, shown.text
    rendered = shown.json()["_debug_info"]["rendered_template"]
    assert "hi \ufffd there \ufffd" in rendered
    invalid = ('{"model":"' + MODEL + '","messages":[{"role":"user","content":"caf\xe9 \xff"}],"stream":false,'
               '"_debug_render_only":true}').encode("latin-1")
    shown = h.post("/api/chat", content=invalid)
    assert shown.status_code == 200, shown.text
    assert "caf\ufffd \ufffd" in shown.json()["_debug_info"]["rendered_template"]
    # A valid pair stays one character.
    pair = h.post("/api/embed", content=b'{"model":"%s","input":"\\ud83d\\ude00"}' % MODEL.encode())
    assert pair.status_code == 200 and len(pair.json()["embeddings"]) == 1


@pytest.mark.parametrize(("body", "error"), [
    (b'{"model":"m","options":{"temperature":NaN}}', "invalid character 'N' looking for beginning of value"),
    (b'{"model":"m","options":{"temperature":-Infinity}}', "invalid character 'I' in numeric literal"),
    (b'{"model":"m","options":{"temperature":1e999}}', "cannot unmarshal number 1e999"),
    (b"\xef\xbb\xbf{}", "invalid character '\u00ef' looking for beginning of value"),  # Go reads a BOM's first byte
    (b"[" * 20000 + b"]" * 20000, "exceeded max depth"),
    (b"", "missing request body"),
])
def test_go_decoder_errors(h: httpx.Client, body: bytes, error: str) -> None:
    resp = h.post("/api/chat", content=body)
    assert resp.status_code == 400, resp.text
    assert error in resp.json()["error"]


# ---- degenerate prompts (point 1) --------------------------------------------------------------------------------


def test_a_prompt_of_zero_tokens_is_a_400_at_once(h: httpx.Client, bounded: HerdServer) -> None:
    """SmolLM2 adds no BOS: a template that renders nothing gives the runner zero tokens. That used to hang."""
    nothing = "{{ if false }}{{ .Prompt }}{{ end }}"
    body = {"model": MODEL, "prompt": "hi", "template": nothing, "stream": False}
    made = h.post("/api/create", json={"model": "renders-nothing", "from": MODEL, "template": nothing,
                                       "stream": False})
    assert made.status_code == 200, made.text
    requests = [("/api/generate", {**body, "stream": False}), ("/api/generate", {**body, "stream": True}),
                ("/api/chat", {"model": "renders-nothing", "messages": HI, "stream": False}),
                ("/api/chat", {"model": "renders-nothing", "messages": HI, "stream": True})]
    for path, doc in requests:
        t0 = time.monotonic()
        resp = h.post(path, json=doc, timeout=30)
        assert resp.status_code == 400, (path, doc, resp.text)
        assert resp.json() == {"error": "prompt is empty"}
        assert time.monotonic() - t0 < 10
    v1 = h.post("/v1/chat/completions", json={"model": "renders-nothing", "messages": HI, "max_tokens": 1})
    assert v1.status_code == 400 and v1.json()["error"]["message"] == "prompt is empty"
    with httpx.Client(base_url=bounded.url, timeout=30) as c:
        runners = c.get("/api/herd/runners").json()["runners"]
    assert runners and all(r["active"] == 0 for r in runners), runners  # no slot was taken, none is left busy
    # The same server still answers a real prompt.
    ok = h.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False, "options": SHORT})
    assert ok.status_code == 200, ok.text
    assert h.request("DELETE", "/api/delete", json={"model": "renders-nothing"}).status_code == 200


# ---- input bounds (point 8) --------------------------------------------------------------------------------------


def assert_400(resp: httpx.Response, text: str, openai: bool = False) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert text in (error["message"] if openai else error), error


def test_embed_inputs_are_bounded_before_any_work(h: httpx.Client) -> None:
    t0 = time.monotonic()
    assert_400(h.post("/api/embed", json={"model": MODEL, "input": ["x"] * 9}),
               "9 inputs exceed the limit of 8 per embed request")
    assert_400(h.post("/v1/embeddings", json={"model": MODEL, "input": ["x"] * 9}), "limit of 8", openai=True)
    # Refused before the model is even resolved: an unknown model gets the same 400.
    assert_400(h.post("/api/embed", json={"model": "nosuch", "input": ["x"] * 9}), "limit of 8")
    assert time.monotonic() - t0 < 5
    assert h.post("/api/embed", json={"model": MODEL, "input": ["x"] * 8}).status_code == 200


def test_embed_tokens_are_bounded(h: httpx.Client) -> None:
    # 8 inputs of ~30 tokens each: past 200 in total, though each fits the context and the count is allowed.
    text = " ".join(["word"] * 30)
    assert_400(h.post("/api/embed", json={"model": MODEL, "input": [text] * 8}), "exceed the limit of 200")
    assert_400(h.post("/api/embeddings", json={"model": MODEL, "prompt": " ".join(["word"] * 250)}),
               "exceed the limit of 200")
    assert h.post("/api/embed", json={"model": MODEL, "input": [text] * 2}).status_code == 200


def test_stop_sequences_are_bounded_on_generate(h: httpx.Client) -> None:
    base = {"model": MODEL, "prompt": "hi", "stream": False}
    assert_400(h.post("/api/generate", json={**base, "options": {**SHORT, "stop": ["a"] * 5}}),
               "5 stop sequences exceed the limit of 4")
    assert_400(h.post("/api/generate", json={**base, "options": {**SHORT, "stop": ["x" * 17]}}),
               "a stop sequence of 17 characters exceeds the limit of 16 characters")
    assert_400(h.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1,
                                               "stop": ["a"] * 5}), "limit of 4", openai=True)
    assert h.post("/api/generate", json={**base, "options": {**SHORT, "stop": ["a"] * 4}}).status_code == 200


def test_stop_sequences_are_bounded_on_chat(h: httpx.Client) -> None:
    assert_400(h.post("/api/chat", json={"model": MODEL, "messages": HI, "stream": False,
                                         "options": {**SHORT, "stop": ["a"] * 5}}), "limit of 4")
    assert_400(h.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 1,
                                                    "stop": ["a"] * 5}), "limit of 4", openai=True)


# ---- nesting -----------------------------------------------------------------------------------------------------


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [150, MAX_DEPTH - 4, MAX_DEPTH + 1, 5000])
def test_deep_values_in_schemas_tools_and_arguments_never_get_a_500(h: httpx.Client, depth: int) -> None:
    """Nesting inside format, tool parameters and tool-call arguments reaches recursive code (grammars, templates);
    past MAX_DEPTH the body reader refuses it, below it every service must answer cleanly."""
    chat = '{"model":"' + TERSE + '","stream":false,"options":{"num_predict":1,"temperature":0},'
    user = '{"role":"user","content":"hi"}'
    bodies = [
        chat + '"messages":[' + user + '],"format":{"type":"object","properties":' + nested(depth) + "}}",
        chat + '"messages":[' + user + '],"tools":[{"type":"function","function":{"name":"f","parameters":'
        '{"type":"object","properties":{"x":' + nested(depth) + "}}}}]}",
        chat + '"messages":[{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":'
        + nested(depth) + "}}]}," + user + "]}",
    ]
    for body in bodies:
        resp = h.post("/api/chat", content=body.encode())
        assert check(resp, openai=False) is None, (depth, resp.text[:300])
        if depth > MAX_DEPTH:
            assert resp.status_code == 400 and resp.json()["error"] == "exceeded max depth"


def test_deep_tool_call_arguments_string_on_v1_is_a_400(h: httpx.Client) -> None:
    body = {"model": TERSE, "max_tokens": 1, "messages": [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": "[" * 5000 + "]" * 5000}}]},
        {"role": "user", "content": "hi"}]}
    resp = h.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
