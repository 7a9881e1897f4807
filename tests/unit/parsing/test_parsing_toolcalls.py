"""ToolCallParser: golden cases per family (spec 2.9, 7.4), each also checked at every chunk boundary."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parsing_support import (
    CALL_ID_RE,
    Case,
    check_calls_stream,
    check_case_all_chunkings,
    check_chunking_invariant,
    check_injected_id,
    check_random_chunking,
    dump,
    fragment_texts,
    run,
    summary,
)

from herd.parsing.base import Delta
from herd.parsing.pipeline import parse_all
from herd.parsing.toolcalls import ToolCallParser, ToolCallState, ToolFormat, detect_tool_format, new_call_id

NAMES = ("get_weather", "get_time")


def parser(
    family: ToolFormat, tag: str | None = None, unparsed_as_content: bool = True
) -> Callable[[], ToolCallParser]:
    return lambda: ToolCallParser(NAMES, family, tag, unparsed_as_content=unparsed_as_content)


hermes = parser(ToolFormat.HERMES)
llama3 = parser(ToolFormat.LLAMA3)
mistral = parser(ToolFormat.MISTRAL)
bare_json = parser(ToolFormat.GENERIC)


def call(name: str, args: object) -> str:
    return json.dumps({"name": name, "arguments": args}, ensure_ascii=False)


WEATHER = call("get_weather", {"city": "Paris", "unit": "celsius"})
TIME = call("get_time", {"tz": "CET"})

HERMES_CASES = [
    Case(
        "hermes-single",
        hermes,
        f"<tool_call>\n{WEATHER}\n</tool_call>",
        calls=(("get_weather", {"city": "Paris", "unit": "celsius"}),),
    ),
    Case(
        "hermes-multiple",
        hermes,
        f"<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n{TIME}\n</tool_call>",
        calls=(("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"tz": "CET"})),
    ),
    Case(
        "hermes-text-before",
        hermes,
        f"Let me check that for you.\n<tool_call>\n{TIME}\n</tool_call>",
        content="Let me check that for you.\n",
        calls=(("get_time", {"tz": "CET"}),),
    ),
    Case(
        "hermes-text-after-is-discarded",
        hermes,
        f"<tool_call>{TIME}</tool_call>\nI have called the tool {{ok}}.",
        calls=(("get_time", {"tz": "CET"}),),
    ),
    Case(
        "hermes-unknown-tool-becomes-content",
        hermes,
        '<tool_call>{"name": "launch_rockets", "arguments": {"count": 3}}</tool_call>',
        content='<tool_call>{"name": "launch_rockets", "arguments": {"count": 3}}</tool_call>',
    ),
    Case(
        "hermes-unknown-tool-dropped-like-ollama",
        parser(ToolFormat.HERMES, unparsed_as_content=False),
        'Sure. <tool_call>{"name": "launch_rockets", "arguments": {"count": 3}}</tool_call>',
        content="Sure. ",
    ),
    Case(
        "hermes-unknown-then-known",
        hermes,
        f'<tool_call>{{"name": "nope", "arguments": {{}}}}</tool_call><tool_call>{TIME}</tool_call>',
        calls=(("get_time", {"tz": "CET"}),),
    ),
    Case(
        "hermes-arguments-as-json-string",
        hermes,
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Tokyo\\", \\"days\\": 3}"}</tool_call>',
        calls=(("get_weather", {"city": "Tokyo", "days": 3}),),
    ),
    Case(
        "hermes-braces-and-quotes-inside-strings",
        hermes,
        '<tool_call>{"name": "get_weather", "arguments": {"city": "}{ we\\"ird } [city] {"}}</tool_call>',
        calls=(("get_weather", {"city": '}{ we"ird } [city] {'}),),
    ),
    Case(
        "hermes-escaped-backslash-before-quote",
        hermes,
        '<tool_call>{"name": "get_weather", "arguments": {"path": "C:\\\\dir\\\\", "n": "}"}}</tool_call>',
        calls=(("get_weather", {"path": "C:\\dir\\", "n": "}"}),),
    ),
    Case(
        "hermes-unicode",
        hermes,
        "天気を調べます。<tool_call>\n"
        + call("get_weather", {"city": "東京", "note": "café ☕ 🌧️", "esc": "\u00e9"})
        + '\n</tool_call><tool_call>{"name": "get_time", "arguments": {"tz": "\\u6771\\u4eac"}}</tool_call>',
        content="天気を調べます。",
        calls=(
            ("get_weather", {"city": "東京", "note": "café ☕ 🌧️", "esc": "é"}),
            ("get_time", {"tz": "東京"}),
        ),
    ),
    Case(
        "hermes-key-order-preserved",
        hermes,
        '<tool_call>{"name": "get_weather", "arguments": {"z": 1, "a": {"y": 2, "b": [3, {"q": 4, "c": 5}]}, '
        '"m": null}}</tool_call>',
        calls=(("get_weather", {"z": 1, "a": {"y": 2, "b": [3, {"q": 4, "c": 5}]}, "m": None}),),
    ),
    Case(
        "hermes-parameters-key",
        hermes,
        '<tool_call>{"name": "get_time", "parameters": {"tz": "UTC"}}</tool_call>',
        calls=(("get_time", {"tz": "UTC"}),),
    ),
    Case(
        "hermes-no-arguments",
        hermes,
        '<tool_call>{"name": "get_time"}</tool_call>',
        calls=(("get_time", {}),),
    ),
    Case(
        "hermes-no-tag",
        hermes,
        'Plain answer with {"name": "get_time"} and <tool_ca',
        content='Plain answer with {"name": "get_time"} and <tool_ca',
    ),
    Case(
        "hermes-incomplete-call-at-finish",
        hermes,
        'ok <tool_call>{"name": "get_weather", "arguments": {"city": "Par',
        content='ok <tool_call>{"name": "get_weather", "arguments": {"city": "Par',
    ),
    Case(
        "hermes-malformed-json",
        hermes,
        "<tool_call>{'name': 'get_weather', 'arguments': {}}</tool_call>",
        content="<tool_call>{'name': 'get_weather', 'arguments': {}}</tool_call>",
    ),
    Case(
        "hermes-arguments-not-an-object",
        hermes,
        '<tool_call>{"name": "get_weather", "arguments": [1, 2]}</tool_call>',
        content='<tool_call>{"name": "get_weather", "arguments": [1, 2]}</tool_call>',
    ),
    Case(
        "hermes-stray-bracket-after-call",
        hermes,
        f"<tool_call>{WEATHER}</tool_call> see [note <tool_call>{TIME}</tool_call>",
        calls=(("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"tz": "CET"})),
    ),
]

LLAMA3_CASES = [
    Case(
        "llama3-python-tag",
        llama3,
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        calls=(("get_weather", {"city": "Paris"}),),
    ),
    Case(
        "llama3-bare-json",
        llama3,
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        calls=(("get_weather", {"city": "Paris"}),),
    ),
    Case(
        "llama3-bare-json-after-whitespace",
        llama3,
        '\n\n{"name": "get_time", "parameters": {}}',
        content="\n\n",
        calls=(("get_time", {}),),
    ),
    Case(
        "llama3-json-not-first-is-content",
        llama3,
        'Here is JSON: {"name": "get_weather", "parameters": {}}',
        content='Here is JSON: {"name": "get_weather", "parameters": {}}',
    ),
    Case(
        "llama3-bare-json-not-a-call",
        llama3,
        '{"answer": 42} and then {"name": "get_time"}',
        content='{"answer": 42} and then {"name": "get_time"}',
    ),
    Case(
        "llama3-text-then-python-tag",
        llama3,
        'Sure.<|python_tag|>{"name": "get_time", "parameters": {"tz": "UTC"}}',
        content="Sure.",
        calls=(("get_time", {"tz": "UTC"}),),
    ),
    Case(
        "llama3-several-separated",
        llama3,
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "A"}}; '
        '{"name": "get_time", "parameters": {}}',
        calls=(("get_weather", {"city": "A"}), ("get_time", {})),
    ),
    Case(
        "llama3-unknown-tool-bare-json",
        llama3,
        '{"name": "brave_search", "parameters": {"query": "x"}}',
        content='{"name": "brave_search", "parameters": {"query": "x"}}',
    ),
]

MISTRAL_CASES = [
    Case(
        "mistral-array",
        mistral,
        f"[TOOL_CALLS] [{WEATHER}, {TIME}]",
        calls=(("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"tz": "CET"})),
    ),
    Case(
        "mistral-object",
        mistral,
        f"[TOOL_CALLS]{TIME}",
        calls=(("get_time", {"tz": "CET"}),),
    ),
    Case(
        "mistral-args-form",
        mistral,
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[CALL_ID]a1b2c3[ARGS]{}',
        calls=(("get_weather", {"city": "Paris"}), ("get_time", {})),
    ),
    Case(
        "mistral-text-before",
        mistral,
        f"Checking both. [TOOL_CALLS][{TIME}]",
        content="Checking both. ",
        calls=(("get_time", {"tz": "CET"}),),
    ),
    Case(
        "mistral-plain-brackets",
        mistral,
        "Use [brackets] like [TOOL_CALL",
        content="Use [brackets] like [TOOL_CALL",
    ),
    Case(
        "mistral-unknown-in-array-skipped",
        mistral,
        '[TOOL_CALLS][{"name": "nope", "arguments": {}}, {"name": "get_time", "arguments": {"tz": "A"}}]',
        calls=(("get_time", {"tz": "A"}),),
    ),
]

GENERIC_CASES = [
    Case(
        "generic-bare-json",
        bare_json,
        f"{WEATHER}",
        calls=(("get_weather", {"city": "Paris", "unit": "celsius"}),),
    ),
    Case(
        "generic-bare-json-several",
        bare_json,
        f"{WEATHER}\n{TIME}",
        calls=(("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"tz": "CET"})),
    ),
    Case(
        "generic-bare-json-not-first",
        bare_json,
        f"The call would be {TIME}",
        content=f"The call would be {TIME}",
    ),
    Case(
        "generic-bare-json-not-a-call",
        bare_json,
        '{"result": "ok", "n": "{"} trailing {x}',
        content='{"result": "ok", "n": "{"} trailing {x}',
    ),
    Case(
        "generic-bare-json-incomplete",
        bare_json,
        '  {"name": "get_weather", "arguments": {"ci',
        content='  {"name": "get_weather", "arguments": {"ci',
    ),
    Case(
        "generic-array-tag",
        parser(ToolFormat.GENERIC, "["),
        f"[{WEATHER}, {TIME}] trailing",
        calls=(("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"tz": "CET"})),
    ),
    Case(
        "generic-array-tag-not-first",
        parser(ToolFormat.GENERIC, "["),
        f"See [{TIME}]",
        content=f"See [{TIME}]",
    ),
    Case(
        "generic-array-tag-not-calls",
        parser(ToolFormat.GENERIC, "["),
        "[1, 2, 3] is a list",
        content="[1, 2, 3] is a list",
    ),
    Case(
        "generic-xlam-nested-list",
        parser(ToolFormat.GENERIC, "### Response:"),
        f'### Response:\n{{"tool_calls": [{WEATHER}, {TIME}]}}',
        calls=(("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {"tz": "CET"})),
    ),
    Case(
        "generic-openai-wrapper",
        bare_json,
        '{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}}',
        calls=(("get_weather", {"city": "Oslo"}),),
    ),
    Case(
        "generic-key-is-tool-name",
        bare_json,
        '{"get_weather": {"city": "Rome"}}',
        calls=(("get_weather", {"city": "Rome"}),),
    ),
    Case(
        "generic-command-r",
        parser(ToolFormat.GENERIC, "Action: ```json"),
        'Action: ```json\n[\n    {\n        "tool_name": "get_time",\n        "parameters": {"tz": "UTC"}\n    }\n]```',
        calls=(("get_time", {"tz": "UTC"}),),
    ),
    Case(
        "generic-no-tools-offered",
        lambda: ToolCallParser([], ToolFormat.GENERIC),
        f"{TIME}",
        content=f"{TIME}",
    ),
]

ALL_CASES = HERMES_CASES + LLAMA3_CASES + MISTRAL_CASES + GENERIC_CASES


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_golden_at_every_chunk_boundary(case: Case) -> None:
    check_case_all_chunkings(case)


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c.calls], ids=lambda c: c.id)
def test_streamed_call_chunks_carry_no_content(case: Case) -> None:
    """Token by token, calls arrive in deltas whose content is "" (spec 2.9), and before finish."""
    check_calls_stream(case)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_chunkings_agree(data: st.DataObject) -> None:
    check_random_chunking(data, ALL_CASES)


_FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<tool_",
    "<|python_tag|>",
    "[TOOL_CALLS]",
    "[ARGS]",
    "get_time",
    TIME,
    '{"name": "get_weather", "arguments": {"city": "}"}}',
    '{"name": "nope"}',
    "{",
    "}",
    "[",
    "]",
    '"',
    "\\",
    " ",
    "\n",
    "x",
    "é",
]


@settings(max_examples=300, deadline=None)
@given(
    text=fragment_texts(_FRAGMENTS, max_size=12),
    cuts=st.lists(st.integers(0, 400)),
    make=st.sampled_from([hermes, llama3, mistral, bare_json, parser(ToolFormat.GENERIC, "[")]),
)
def test_random_text_is_chunking_invariant(text: str, cuts: list[int], make: Callable[[], ToolCallParser]) -> None:
    check_chunking_invariant(Case("random", make, text), cuts)


def test_text_before_the_tag_streams_and_partial_tag_is_held() -> None:
    p = ToolCallParser(NAMES, ToolFormat.HERMES)
    assert p.feed("Hi <tool") == Delta(content="Hi ")
    assert p.feed("_call>") == Delta()
    assert p.state is ToolCallState.TOOL_CALLING
    delta = p.feed(TIME)
    assert summary(delta) == ("", "", (("get_time", dump({"tz": "CET"}), 0),))
    assert p.feed("</tool_call> bye") == Delta()
    assert p.finish() == Delta()


def test_bracket_json_that_is_not_a_call_streams_at_once() -> None:
    p = ToolCallParser(NAMES, ToolFormat.GENERIC)
    assert p.feed('{"a": ') == Delta()
    assert p.feed("1} ok") == Delta(content='{"a": 1} ok')
    assert p.state is ToolCallState.DONE
    assert p.feed(" more") == Delta(content=" more")


def test_ids_are_fresh_and_well_formed() -> None:
    ids = {new_call_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(CALL_ID_RE.fullmatch(i) for i in ids)
    check_injected_id(partial(ToolCallParser, NAMES, ToolFormat.HERMES), f"<tool_call>{TIME}</tool_call>")


def test_arguments_keep_key_order() -> None:
    case = next(c for c in HERMES_CASES if c.id == "hermes-key-order-preserved")
    delta = run(case, [case.text])
    args = delta.tool_calls[0].arguments
    assert list(args) == ["z", "a", "m"]
    inner = args["a"]
    assert isinstance(inner, dict) and list(inner) == ["y", "b"]


# --- detect_tool_format -----------------------------------------------------------------------------------

QWEN_JINJA = """{%- if tools %}<|im_start|>system
# Tools
<tools>{%- for tool in tools %}{{ tool | tojson }}{%- endfor %}</tools>
For each function call, return a json object within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{%- endif %}"""

LLAMA31_JINJA = """{{- bos_token }}{%- if tools is not none %}{%- set tools_in_user_message = true %}{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{%- if builtin_tools is defined %}{{- '<|python_tag|>' + tool_call.name }}{%- endif %}"""

LLAMA32_GO = """<|start_header_id|>system<|end_header_id|>
{{- if .Tools }}You have access to the following functions.{{ range .Tools }}{{ . }}{{ end }}{{ end }}
{{- range .Messages }}{{- if and (eq .Role "assistant") .ToolCalls }}<|start_header_id|>assistant<|end_header_id|>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- end }}{{- end }}"""

MISTRAL_GO = """{{- range $index, $_ := .Messages }}
{{- if eq .Role "assistant" }}
{{- if .Content }} {{ .Content }}
{{- else if .ToolCalls }}[TOOL_CALLS] [
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- end }}]
{{- end }}</s>
{{- end }}{{- end }}"""

XLAM_GO = """{{- range $i, $_ := .Messages }}
{{- if eq .Role "user" }}### Instruction:
{{ .Content }}
{{- else if .ToolCalls }}### Response:
{"tool_calls": [{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}{{ end }}]}
<|EOT|>
{{ else if eq .Role "assistant" }}### Response:
{{ .Content }}
{{ end }}{{- end }}### Response:"""

BARE_GO = """{{- range .Messages }}<|user|>{{ .Content }}
{{- if .ToolCalls }}
{{- range .ToolCalls }}
{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- end }}
{{- end }}{{ end }}"""

NESTED_TAG_GO = """{{ range .Messages }}{{ if .ToolCalls }}{{ range $i, $c := .ToolCalls }}{{ if $i }}
{{ end }}<|tool▁call|>{"name": "{{ $c.Function.Name }}"}{{ end }}{{ end }}{{ end }}"""

EMPTY_BLOCK_GO = """{{ range .Messages }}{{ if .ToolCalls }}{{ end }}Answer: {{ .Content }}{{ end }}"""


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (QWEN_JINJA, (ToolFormat.HERMES, "<tool_call>")),
        (LLAMA31_JINJA, (ToolFormat.LLAMA3, "<|python_tag|>")),
        (LLAMA32_GO, (ToolFormat.LLAMA3, "<|python_tag|>")),
        (MISTRAL_GO, (ToolFormat.MISTRAL, "[TOOL_CALLS]")),
        ("{% for m in messages %}{{ m.content }}{% endfor %}", (ToolFormat.GENERIC, "{")),
        (XLAM_GO, (ToolFormat.GENERIC, "### Response:")),
        (BARE_GO, (ToolFormat.GENERIC, "{")),
        (NESTED_TAG_GO, (ToolFormat.GENERIC, "<|tool▁call|>")),
        (EMPTY_BLOCK_GO, (ToolFormat.GENERIC, "{")),
    ],
    ids=[
        "qwen-jinja",
        "llama31-jinja",
        "llama32-go",
        "mistral-go",
        "plain-jinja",
        "xlam-go",
        "bare-go",
        "nested-go",
        "empty-block-go",
    ],
)
def test_detect_tool_format(template: str, expected: tuple[ToolFormat, str]) -> None:
    assert detect_tool_format(template) == expected


def test_detected_format_parses_its_own_output() -> None:
    family, tag = detect_tool_format(XLAM_GO)
    p = ToolCallParser(NAMES, family, tag)
    out = parse_all(p, [f'### Response:\n{{"tool_calls": [{TIME}]}}\n<|EOT|>'])
    assert summary(out) == ("", "", (("get_time", dump({"tz": "CET"}), 0),))
