"""Model families end to end, with real generation: each family's template, parser and call grammar on the default
model's weights.

For each family herd knows (families.py), a model is made through `POST /api/create` from the default model
(SmolLM2-135M) with that family's chat template and its PARSER name (and RENDERER harmony for gpt-oss, so herd's own
Harmony renderer writes the prompt). A call is then forced through `/v1/chat/completions` (`tool_choice: "required"`
and a named function), streamed and not, and asked for unforced through `/api/chat`.

What this proves: the format machinery. For each family, the constraint built from the tools makes the model write a
call in that family's own markup (spelled out in SmolLM2's ordinary tokens: none of the markers is a special token
in its vocabulary), the family's parser reads it back, and the call arrives in `message.tool_calls` with an offered
name and arguments that validate against the tool's JSON schema, with `finish_reason: "tool_calls"` and no call markup
left in `content`; streaming gives the same calls as the non-streamed answer (greedy decoding, same output); the
prompt the family's template renders carries the tools; `format` on a thinking family constrains only the answer.
Gemma 4, which herd parses but does not constrain, refuses a forced call with a clear 400.

What it cannot prove: anything about a real model's willingness to call a tool, or the quality of its arguments.
A 135M model that was never trained on these formats only writes a call because the grammar leaves it nothing else
(its arguments are often nonsense, but valid nonsense); unforced, it mostly does not call at all, so the /api/chat
case only checks that whatever calls do come are valid and that raw call markup never reaches `content`. Nor does it
cover the real models' special tokens (`special_markers` finds none here), so the single-token path of each grammar's
markers is not exercised (tests/unit/constrain covers the grammars token by token).

Templates (tests/integration/fixtures/templates/, each the file as llama.cpp ships it in models/templates/, which
copies the model's tokenizer_config.json chat_template; line endings normalised to LF):
- qwen3: qwen3.jinja, Qwen/Qwen3-0.6B's template (Qwen-Qwen3-0.6B.jinja): tools in <tools>, calls in <tool_call> JSON.
- qwen3-coder: qwen3-coder.jinja, Qwen3-Coder's template (Qwen3-Coder.jinja): XML <function=…><parameter=…> calls.
- deepseek3: deepseek-v3.1.jinja (deepseek-ai-DeepSeek-V3.1.jinja); PARSER deepseek3.1. It does not render `tools`
  (so only the grammar tells the model the call's form); with thinking on (the /v1 default for a thinking model)
  the prompt ends in `<｜Assistant｜><think>`.
- granite: granite-3.3.jinja (ibm-granite-granite-3.3-2B-Instruct.jinja): "respond only with <|tool_call|> followed by
  a JSON list", which selects the Granite 3 grammar.
- glm-4.7: glm-4.6.jinja (GLM-4.6.jinja) with GLM-4.7's generation prompt: `<|assistant|><think>` with thinking on,
  `<|assistant|></think>` off (Ollama's glm47 renderer, as parsing/glm.py describes it). A stand-in derived from the
  real 4.6 template: GLM-4.7's own template is not among llama.cpp's.
- qwen3.5: a stand-in, qwen3-coder.jinja whose generation prompt pre-opens `<think>\n` (`<think>\n\n</think>\n\n` with
  thinking off), which is what Qwen3.5's template adds to Qwen3-Coder's call format (parsing/qwen3_coder.py).
- gemma3: a stand-in (GEMMA3_TEMPLATE below): Gemma's turn markup with the prompt of Google's function-calling guide.
  Gemma 3's own template has no tools at all.
- harmony (gpt-oss): no template; RENDERER harmony renders the prompt (prompt/harmony.py).
- gemma4: a minimal stand-in; only the 400 is tested.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"


def _template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def _derive(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the upstream template changed: {old!r}"
    return text.replace(old, new)


QWEN35_TEMPLATE = _derive(
    _template("qwen3-coder.jinja"),
    "{{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n",
    "{{- '<|im_start|>assistant\\n' }}\n"
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<think>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n",
)
GLM47_TEMPLATE = _derive(
    _template("glm-4.6.jinja"),
    "<|assistant|>{{- '\\n<think></think>' if (enable_thinking is defined and not enable_thinking) else '' -}}",
    "<|assistant|>{{- '</think>' if (enable_thinking is defined and not enable_thinking) else '<think>' -}}",
)
GEMMA3_TEMPLATE = """{{ bos_token }}{%- if tools -%}<start_of_turn>user
You have access to functions. If you decide to invoke any of the function(s), you MUST put it in the format of
{"name": function name, "parameters": dictionary of argument name and its value}
You SHOULD NOT include any other text in the response if you call a function
{% for t in tools %}{{ t | tojson }}
{% endfor %}<end_of_turn>
{% endif -%}
{%- for message in messages -%}<start_of_turn>{{ 'model' if message.role == 'assistant' else 'user' }}
{{ message.content | trim }}<end_of_turn>
{% endfor -%}
{%- if add_generation_prompt %}<start_of_turn>model
{% endif -%}"""
GEMMA4_TEMPLATE = """{%- for m in messages %}<|turn>{{ m.role }}
{{ m.content }}<turn|>
{% endfor %}<|turn>model
"""

# family -> the /api/create fields that make it, the markup its calls are written in (never to be seen in content),
# and whether the family thinks (capability "thinking").
FAMILIES: dict[str, dict[str, Any]] = {
    "harmony": {"create": {"parser": "harmony", "renderer": "harmony"}, "thinks": True,
                "markup": ("<|channel|>", "<|message|>", "<|call|>", "<|constrain|>", "to=functions.")},
    "qwen3": {"create": {"parser": "qwen3", "template": _template("qwen3.jinja")}, "thinks": True,
              "markup": ("<tool_call>", "</tool_call>")},
    "qwen3-coder": {"create": {"parser": "qwen3-coder", "template": _template("qwen3-coder.jinja")}, "thinks": False,
                    "markup": ("<tool_call>", "</tool_call>", "<function=", "<parameter=")},
    "qwen3.5": {"create": {"parser": "qwen3.5", "template": QWEN35_TEMPLATE}, "thinks": True,
                "markup": ("<tool_call>", "</tool_call>", "<function=", "<parameter=")},
    "glm-4.7": {"create": {"parser": "glm-4.7", "template": GLM47_TEMPLATE}, "thinks": True,
                "markup": ("<tool_call>", "</tool_call>", "<arg_key>", "<arg_value>")},
    "deepseek3": {"create": {"parser": "deepseek3.1", "template": _template("deepseek-v3.1.jinja")}, "thinks": True,
                  "markup": ("tool▁calls▁begin", "tool▁call▁begin", "tool▁sep", "tool▁call▁end")},
    "granite": {"create": {"parser": "granite", "template": _template("granite-3.3.jinja")}, "thinks": True,
                "markup": ("<|tool_call|>", "<tool_call>")},
    "gemma3": {"create": {"parser": "gemma3", "template": GEMMA3_TEMPLATE}, "thinks": False,
               # A bare-JSON format: the prompt itself shows `"parameters": {`, and a 135M model may echo it as
               # text; a call left unparsed would name an offered tool.
               "markup": ("```tool_code", '{"name": "book_event"', '{"name": "get_time"')},
}
THINK_MARKUP = ("<think>", "</think>")

# A nested schema: a required string, an integer, an enum and an array of strings. The bounds keep a 135M model's
# valid-but-endless arguments short (the XML families cannot bound a string parameter: its value is raw text).
BOOK = {"type": "object", "properties": {
    "title": {"type": "string", "description": "what the event is", "maxLength": 40},
    "guests": {"type": "integer", "description": "number of people"},
    "room": {"type": "string", "enum": ["red", "blue", "green"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 2}},
    "required": ["title", "guests", "room", "tags"]}
TIME = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [
    {"type": "function", "function": {"name": "book_event", "description": "Book a room for an event",
                                      "parameters": BOOK}},
    {"type": "function", "function": {"name": "get_time", "description": "The current time in a city",
                                      "parameters": TIME}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "Book the blue room for a team lunch for 6 people, tagged food and team."}]
CHOICES = {"required": "required", "named": {"type": "function", "function": {"name": "book_event"}}}
LIMIT = 200


def model_of(family: str) -> str:
    return f"families/{family}:latest"


@pytest.fixture(scope="module")
def fam_server() -> Iterator[HerdServer]:
    # No prompt cache: a prompt whose prefix comes from a slot's KV cache has its last token evaluated on its own,
    # and those logits differ in the last bits from the batched prefill of a cold prompt: enough to flip a near-tie
    # of a 135M model, so greedy answers to one request would differ between its first and its later runs.
    srv = HerdServer(env={"HERD_NUM_PARALLEL": "2", "HERD_PROMPT_CACHE": "0"}).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as http:
            for family, spec in FAMILIES.items():
                r = http.post("/api/create", json={"model": model_of(family), "from": MODEL, "stream": False,
                                                   **spec["create"]})
                assert r.status_code == 200, (family, r.text)
            r = http.post("/api/create", json={"model": model_of("gemma4"), "from": MODEL, "stream": False,
                                               "parser": "gemma4", "template": GEMMA4_TEMPLATE})
            assert r.status_code == 200, r.text
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def fam_http(fam_server: HerdServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fam_server.url, timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def fam_client(fam_server: HerdServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=fam_server.url + "/v1", api_key="herd", timeout=300, max_retries=0)


def check_call(name: str, arguments: object) -> dict[str, object]:
    """An offered tool, and arguments (a JSON text on /v1, an object on /api/chat) valid for its schema."""
    assert name in SCHEMAS, f"a call to a tool that was not offered: {name!r}"
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    assert isinstance(args, dict)
    jsonschema.validate(args, SCHEMAS[name])
    return args


def check_content(family: str, content: str | None) -> None:
    text = content or ""
    leaked = [m for m in (*FAMILIES[family]["markup"], *THINK_MARKUP) if m in text]
    assert not leaked, f"raw markup {leaked} in content: {text!r}"


# ---- capabilities ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_show_reports_tools_and_thinking(fam_http: httpx.Client, family: str) -> None:
    doc = fam_http.post("/api/show", json={"model": model_of(family)}).json()
    caps = doc["capabilities"]
    assert "tools" in caps
    assert ("thinking" in caps) == FAMILIES[family]["thinks"], caps


def test_prompt_carries_the_tools_in_the_family_format(fam_http: httpx.Client) -> None:
    """The templates render the offered tools (so the model is asked in its family's own words)."""
    expect = {"harmony": "namespace functions", "qwen3": "<tools>", "qwen3-coder": "<function>\n<name>book_event",
              "qwen3.5": "<function>\n<name>book_event", "glm-4.7": "<arg_key>", "granite": "available_tools",
              "gemma3": '"name": "book_event"'}
    for family, needle in expect.items():
        doc = fam_http.post("/api/chat", json={"model": model_of(family), "messages": ASK, "tools": TOOLS,
                                               "_debug_render_only": True, "stream": False}).json()
        rendered = doc["_debug_info"]["rendered_template"]
        assert needle in rendered and "book_event" in rendered, (family, rendered[-600:])


# ---- forced calls through /v1 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("choice", sorted(CHOICES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forced_call_is_valid_and_parsed(fam_client: openai.OpenAI, family: str, choice: str) -> None:
    kwargs: dict[str, Any] = {"model": model_of(family), "messages": ASK, "tools": TOOLS,
                              "tool_choice": CHOICES[choice], "temperature": 0, "max_tokens": LIMIT}
    resp = fam_client.chat.completions.create(**kwargs)
    answer = resp.choices[0]
    calls = answer.message.tool_calls or []
    assert calls, (f"no parsed call; content={answer.message.content!r} "
                   f"reasoning={(answer.message.model_extra or {}).get('reasoning')!r}")
    got = [(c.function.name, check_call(c.function.name, c.function.arguments)) for c in calls]
    if choice == "named":
        assert {name for name, _ in got} == {"book_event"}
    check_content(family, answer.message.content)
    assert not (answer.message.content or "").strip(), "a forced call starts at the first token"
    assert answer.finish_reason == "tool_calls", (answer.finish_reason, got, answer.message.content)

    # Streamed: the same calls (greedy decoding), complete in the deltas, and the same finish reason.
    streamed: dict[int, dict[str, str]] = {}
    content: list[str] = []
    finish = None
    for chunk in fam_client.chat.completions.create(**kwargs, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content.append(delta.content or "")
        for tc in delta.tool_calls or []:
            entry = streamed.setdefault(tc.index, {"name": "", "arguments": ""})
            entry["name"] += (tc.function.name or "") if tc.function else ""
            entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
        finish = chunk.choices[0].finish_reason or finish
    joined = [(c["name"], check_call(c["name"], c["arguments"])) for _, c in sorted(streamed.items())]
    assert joined == got
    check_content(family, "".join(content))
    assert finish == "tool_calls"


# ---- /api/chat: no tool_choice, so the call is constrained only once the model opens it ---------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_native_chat_calls_if_any_are_valid(fam_http: httpx.Client, family: str) -> None:
    """herd's native API has no tool_choice: free text first, and a call only if the model opens one. The 135M
    model may well not call; what it must never do is leave call markup in content or give an invalid call."""
    doc = fam_http.post("/api/chat", json={"model": model_of(family), "messages": ASK, "tools": TOOLS,
                                           "stream": False,
                                           "options": {"temperature": 0, "num_predict": 80}}).json()
    message = doc["message"]
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        check_call(fn["name"], fn["arguments"])
        assert fn["index"] == i
    check_content(family, message.get("content"))


# ---- format on a thinking family ---------------------------------------------------------------------------------

ANSWER = {"type": "object", "properties": {"legs": {"type": "integer"},
                                           "animal": {"type": "string", "enum": ["cat", "dog", "bird"]}},
          "required": ["legs", "animal"]}
QUESTIONS = [
    [{"role": "system", "content": "Think in one short sentence, then answer in JSON."},
     {"role": "user", "content": "How many legs does a cat have?"}],
    [{"role": "user", "content": "How many legs does a cat have? Answer in JSON."}],
]


@pytest.mark.parametrize("family", ["qwen3", "qwen3.5"])
def test_format_with_thinking_constrains_the_answer(fam_http: httpx.Client, family: str) -> None:
    """qwen3's template leaves opening the reasoning to the model (one grammar: optional <think>…</think>, then
    the answer); qwen3.5's pre-opens it (two phases: free reasoning up to </think>, then the constrained answer).
    A 135M model may think until the limit: such an answer has nothing to check, so the first of two questions
    that completes is checked, and one must."""
    completed = 0
    for messages in QUESTIONS:
        doc = fam_http.post("/api/chat", json={"model": model_of(family), "messages": messages, "format": ANSWER,
                                               "think": True, "stream": False,
                                               "options": {"temperature": 0, "num_predict": 150}}).json()
        if doc["done_reason"] == "length":
            continue
        completed += 1
        content = doc["message"]["content"]
        check_content(family, content)
        jsonschema.validate(json.loads(content), ANSWER)
        assert not any(m in (doc["message"].get("thinking") or "") for m in THINK_MARKUP)
        break
    assert completed == 1


# ---- what is refused -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", sorted(CHOICES))
def test_gemma4_forced_call_is_a_clear_400(fam_http: httpx.Client, choice: str, stream: bool) -> None:
    """Gemma 4's calls are parsed but not constrained, so a call cannot be forced: refused before any work."""
    r = fam_http.post("/v1/chat/completions", json={"model": model_of("gemma4"), "messages": ASK, "tools": TOOLS,
                                                    "tool_choice": CHOICES[choice], "stream": stream})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == ("tool_choice cannot force a call in the gemma4 format: herd parses its "
                                            "calls but does not constrain them")


@pytest.mark.parametrize("field", ["parser", "renderer"])
def test_unknown_parser_or_renderer_is_refused_at_create(fam_http: httpx.Client, field: str) -> None:
    r = fam_http.post("/api/create", json={"model": "families/unknown:latest", "from": MODEL, "stream": False,
                                           field: "no-such-family"})
    assert r.status_code == 400
    assert r.json()["error"].startswith(f'{field.upper()} "no-such-family" is not supported by herd (known: ')
    assert fam_http.post("/api/show", json={"model": "families/unknown:latest"}).status_code == 404


@pytest.mark.parametrize("route", ["/api/chat", "/api/generate"])
def test_think_max_maps_onto_the_family_level(fam_http: httpx.Client, route: str) -> None:
    """think "max" (Ollama 0.22) is accepted on both native routes and reaches the family as its top level:
    Harmony's highest reasoning effort is "high", and Qwen's switch is just on. Rendered only: what the model does
    with it is not a 135M model's to show."""
    def render(family: str, think: object) -> str:
        body: dict[str, Any] = {"model": model_of(family), "think": think, "_debug_render_only": True,
                                "stream": False}
        if route == "/api/chat":
            body["messages"] = ASK
        else:
            body["prompt"] = ASK[0]["content"]
        r = fam_http.post(route, json=body)
        assert r.status_code == 200, r.text
        doc = r.json()
        return str(doc.get("_debug_info", doc).get("rendered_template", ""))

    top = render("harmony", "max")
    assert "Reasoning: high" in top and top == render("harmony", "high")
    assert "Reasoning: low" in render("harmony", "low")
    assert render("qwen3", "max") == render("qwen3", True)
