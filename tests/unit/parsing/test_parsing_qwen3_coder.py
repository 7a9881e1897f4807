"""Qwen3CoderParser: golden raw outputs in the Qwen3-Coder / Qwen3.5 XML call format, each checked at every chunk
boundary and char by char, plus the value-typing table and the streaming shape of the deltas.

What this proves: for these texts the parser gives the expected content, thinking and calls whatever the chunking;
failed or unknown calls come back as content byte for byte; complete calls arrive in the delta that closes them.
What it cannot prove: that real Qwen models write only these shapes. The goldens follow the chat templates (and
the quirks Ollama's parsers handle), not captured model output; no model runs here.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parsing_support import (
    Case,
    check_calls_stream,
    check_case_all_chunkings,
    check_chunking_invariant,
    check_random_chunking,
    dump,
    fragment_texts,
    parse,
    parse_logged,
    summary,
    tool,
)

from herd.parsing.base import Delta
from herd.parsing.qwen3_coder import Qwen3CoderParser
from herd.parsing.xmlcalls import parse_value
from herd.types import ToolDef

TOOLS = [
    tool("get_weather", {"city": {"type": "string"}, "days": {"type": "integer"}}, required=("city",)),
    tool("get_time", {"tz": {"type": "string"}}),
    tool(
        "write_file",
        {"path": {"type": "string"}, "content": {"type": "string"}, "append": {"type": "boolean"}},
        required=("path", "content"),
    ),
    tool(
        "configure",
        {
            "ratio": {"type": "number"},
            "scale": {"type": "number"},
            "count": {"type": "integer"},
            "verbose": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "options": {"type": "object"},
            "limit": {"type": ["integer", "null"]},
            "mode": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "note": {"type": "string"},
        },
    ),
]


def qwen(
    thinking: bool = False, prefilled: bool = False, tools: list[ToolDef] = TOOLS
) -> Callable[[], Qwen3CoderParser]:
    return lambda: Qwen3CoderParser(tools, thinking=thinking, prefilled=prefilled)


def call(name: str, *params: tuple[str, str]) -> str:
    """A call exactly as the Qwen3-Coder template renders one."""
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params)
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


WEATHER = call("get_weather", ("city", "Paris"), ("days", "3"))
TIME = call("get_time", ("tz", "CET"))
WEATHER_ARGS = {"city": "Paris", "days": 3}

CODE = 'def f(x):\n    if x < 3 and x > 1:\n        return "a & b"\n\n    return {"k": [x]}\n'

CASES = [
    Case("single-call", qwen(), WEATHER, calls=(("get_weather", WEATHER_ARGS),)),
    Case(
        "several-calls-with-text-around",
        qwen(),
        f"I'll check both.\n\n{WEATHER}\n{TIME}\n\nBack soon.",
        content="I'll check both.Back soon.",  # whitespace around calls is dropped, as in Ollama
        calls=(("get_weather", WEATHER_ARGS), ("get_time", {"tz": "CET"})),
    ),
    Case(
        "text-between-calls",
        qwen(),
        f"First:\n{WEATHER}\nand then:\n{TIME}",
        content="First:and then:",
        calls=(("get_weather", WEATHER_ARGS), ("get_time", {"tz": "CET"})),
    ),
    Case(
        "no-call-plain-text",
        qwen(),
        "Just an answer.\n\nWith  spaces.  \n",
        content="Just an answer.\n\nWith  spaces.  \n",
    ),
    Case(
        "multi-line-string-value",
        qwen(),
        call("write_file", ("path", "src/f.py"), ("content", CODE)),
        # one leading and one trailing newline are the template's; the value's own final newline stays
        calls=(("write_file", {"path": "src/f.py", "content": CODE}),),
    ),
    Case(
        "string-value-keeps-inner-newlines-and-spaces",
        qwen(),
        "<tool_call>\n<function=get_time>\n<parameter=tz>\n\n  two  \n\n</parameter>\n</function>\n</tool_call>",
        calls=(("get_time", {"tz": "\n  two  \n"}),),
    ),
    Case(
        "nested-object-and-array-values",
        qwen(),
        call(
            "configure",
            ("tags", '["a", "b c", {"x": [1, 2]}]'),
            ("options", '{"z": {"deep": [true, null, 1.5]}, "a": "</x>"}'),
        ),
        calls=(
            (
                "configure",
                {"tags": ["a", "b c", {"x": [1, 2]}], "options": {"z": {"deep": [True, None, 1.5]}, "a": "</x>"}},
            ),
        ),
    ),
    Case(
        "typed-values",
        qwen(),
        call(
            "configure",
            ("ratio", "0.25"),
            ("scale", "2.0"),
            ("count", "-7"),
            ("verbose", "True"),
            ("limit", "NULL"),
            ("mode", "12"),
            ("note", "42"),
            ("undeclared", "5"),
        ),
        calls=(
            (
                "configure",
                {
                    "ratio": 0.25,
                    "scale": 2,  # integral numbers come back as ints (Ollama)
                    "count": -7,
                    "verbose": True,
                    "limit": None,
                    "mode": 12,
                    "note": "42",
                    "undeclared": "5",
                },
            ),
        ),
    ),
    Case(
        "values-that-do-not-convert-stay-strings",
        qwen(),
        call(
            "configure",
            ("count", "3 apples"),
            ("verbose", "maybe"),
            ("tags", "[1, 2"),
            ("options", "[1]"),
            ("mode", "auto"),
        ),
        calls=(
            ("configure", {"count": "3 apples", "verbose": "maybe", "tags": "[1, 2", "options": "[1]", "mode": "auto"}),
        ),
    ),
    Case(
        "special-characters-in-values",
        qwen(),
        call("get_time", ("tz", 'a < b && c > d "q" &amp; <tag> <![CDATA[x]]>')),
        calls=(("get_time", {"tz": 'a < b && c > d "q" &amp; <tag> <![CDATA[x]]>'}),),
    ),
    Case(
        "unicode",
        qwen(),
        "天気を調べます。 " + call("get_weather", ("city", "東京 🌧️")) + "\u3000",
        content="天気を調べます。",
        calls=(("get_weather", {"city": "東京 🌧️"}),),
    ),
    Case(
        "compact-call-without-newlines",
        qwen(),
        "<tool_call><function=get_time><parameter=tz>UTC</parameter></function></tool_call>",
        calls=(("get_time", {"tz": "UTC"}),),
    ),
    Case(
        "call-without-parameters",
        qwen(),
        "<tool_call>\n<function=get_time>\n</function>\n</tool_call>",
        calls=(("get_time", {}),),
    ),
    Case(
        "two-functions-in-one-tool-call",
        qwen(),
        "<tool_call>\n<function=get_time>\n</function>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n"
        "</function>\n</tool_call>",
        calls=(("get_time", {}), ("get_weather", {"city": "Rome"})),
    ),
    Case(
        "missing-parameter-close-is-tolerated",
        qwen(),
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n<parameter=days>\n2\n</function>\n</tool_call>",
        calls=(("get_weather", {"city": "Oslo", "days": 2}),),
    ),
    Case(
        "missing-function-close-is-tolerated",
        qwen(),
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</tool_call>",
        calls=(("get_weather", {"city": "Oslo"}),),
    ),
    Case(
        "json-body-hermes-style",
        qwen(),
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima", "days": 1}}\n</tool_call>',
        calls=(("get_weather", {"city": "Lima", "days": 1}),),
    ),
    Case(
        "repeated-parameter-last-wins",
        qwen(),
        call("get_time", ("tz", "A"), ("tz", "B")),
        calls=(("get_time", {"tz": "B"}),),
    ),
    # --- thinking ---------------------------------------------------------------------------------------------
    Case(
        "thinking-then-call",
        qwen(thinking=True),
        f"<think>\nThe user wants weather.\n</think>\n\nChecking.\n{WEATHER}",
        content="Checking.",
        thinking="The user wants weather.\n",
        calls=(("get_weather", WEATHER_ARGS),),
    ),
    Case(
        "thinking-on-but-model-did-not-think",
        qwen(thinking=True),
        f"Sure.\n{TIME}",
        content="Sure.",
        calls=(("get_time", {"tz": "CET"}),),
    ),
    Case(
        "prefilled-thinking-qwen35",
        qwen(thinking=True, prefilled=True),
        f"I should call the tool.\n</think>\n\n{WEATHER}",
        thinking="I should call the tool.\n",
        calls=(("get_weather", WEATHER_ARGS),),
    ),
    Case(
        "prefilled-thinking-repeated-open-tag-dropped",
        qwen(thinking=True, prefilled=True),
        f"\n<think>\nPlan.\n</think>\nAnswer {TIME}",
        thinking="Plan.\n",
        content="Answer",
        calls=(("get_time", {"tz": "CET"}),),
    ),
    Case(
        "prefilled-thinking-tool-call-without-think-close",
        qwen(thinking=True, prefilled=True),
        f"Need the time. {TIME}",
        thinking="Need the time. ",  # a <tool_call> inside reasoning ends it (Ollama's qwen35.go)
        calls=(("get_time", {"tz": "CET"}),),
    ),
    Case(
        "prefilled-thinking-skipped-straight-to-call",
        qwen(thinking=True, prefilled=True),
        TIME,
        calls=(("get_time", {"tz": "CET"}),),
    ),
    Case(
        "prefilled-thinking-empty-reasoning",
        qwen(thinking=True, prefilled=True),
        "\n</think>\n\nHi there.",
        content="Hi there.",
    ),
    Case(
        "call-mentioned-after-think-close-in-thinking-text",
        qwen(thinking=True),
        "<think>the tag </tool_call> and <tool_ is fine</think>Done.",
        thinking="the tag </tool_call> and <tool_ is fine",
        content="Done.",
    ),
    Case(
        "think-tag-is-content-when-thinking-is-off",
        qwen(),
        "<think>x</think>y",
        content="<think>x</think>y",
    ),
    Case(
        "prefilled-output-truncated-in-thinking",
        qwen(thinking=True, prefilled=True),
        "still thinking </thi",
        thinking="still thinking </thi",
    ),
    # --- failures become content ----------------------------------------------------------------------------
    Case(
        "unknown-tool-is-content",
        qwen(),
        "Trying.\n" + call("launch_rockets", ("count", "3")) + "\nok",
        content="Trying.\n" + call("launch_rockets", ("count", "3")) + "\nok",
    ),
    Case(
        "unknown-then-known",
        qwen(),
        call("nope") + "\n" + TIME,
        content=call("nope"),
        calls=(("get_time", {"tz": "CET"}),),
    ),
    Case(
        "malformed-stray-text-is-content",
        qwen(),
        "<tool_call>\nplease call get_time\n</tool_call> after",
        content="<tool_call>\nplease call get_time\n</tool_call> after",
    ),
    Case(
        "malformed-unterminated-function-tag",
        qwen(),
        "<tool_call><function=get_time</tool_call>",
        content="<tool_call><function=get_time</tool_call>",
    ),
    Case(
        "malformed-json-body",
        qwen(),
        "<tool_call>{'name': 'get_time'}</tool_call>",
        content="<tool_call>{'name': 'get_time'}</tool_call>",
    ),
    Case(
        "empty-call",
        qwen(),
        "x <tool_call></tool_call>",
        content="x <tool_call></tool_call>",
    ),
    Case(
        "no-tools-offered",
        qwen(tools=[]),
        TIME,
        content=TIME,
    ),
    Case(
        "partial-tag-fakeout",
        qwen(),
        "a <tool_cal> b <tool_ca",
        content="a <tool_cal> b <tool_ca",
    ),
    # --- truncated output -----------------------------------------------------------------------------------
    Case(
        "truncated-after-function-close-is-a-call",
        qwen(),
        "Ok.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_",
        content="Ok.",
        calls=(("get_weather", {"city": "Paris"}),),
    ),
    Case(
        "truncated-inside-value-is-content",
        qwen(),
        "<tool_call>\n<function=write_file>\n<parameter=path>\na.txt\n</parameter>\n<parameter=content>\nhalf",
        content="<tool_call>\n<function=write_file>\n<parameter=path>\na.txt\n</parameter>\n<parameter=content>\nhalf",
    ),
    Case(
        "truncated-without-function-close-is-content",
        qwen(),
        "<tool_call>\n<function=get_time>\n<parameter=tz>\nUTC\n</parameter>\n",
        content="<tool_call>\n<function=get_time>\n<parameter=tz>\nUTC\n</parameter>\n",
    ),
    Case(
        "truncated-missing-required-is-content",
        qwen(),
        "<tool_call>\n<function=write_file>\n<parameter=path>\na.txt\n</parameter>\n</function>",
        content="<tool_call>\n<function=write_file>\n<parameter=path>\na.txt\n</parameter>\n</function>",
    ),
    Case(
        "truncated-after-open-tag",
        qwen(),
        "Let me see. \n<tool_call>\n<func",
        content="Let me see. \n<tool_call>\n<func",
    ),
    Case(
        "complete-call-then-truncated-call",
        qwen(),
        f"{TIME}\n<tool_call>\n<function=get_weather>\n<parameter=ci",
        content="<tool_call>\n<function=get_weather>\n<parameter=ci",  # whitespace after a call is dropped
        calls=(("get_time", {"tz": "CET"}),),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_golden_at_every_chunk_boundary(case: Case) -> None:
    check_case_all_chunkings(case)


@pytest.mark.parametrize("case", [c for c in CASES if c.calls and not c.id.startswith("truncated")], ids=lambda c: c.id)
def test_calls_arrive_when_they_close_in_deltas_without_content(case: Case) -> None:
    check_calls_stream(case)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_chunkings_agree(data: st.DataObject) -> None:
    check_random_chunking(data, CASES)


_FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<tool_",
    "<function=get_time>",
    "<function=nope>",
    "</function>",
    "<parameter=tz>",
    "</parameter>",
    "<think>",
    "</think>",
    TIME,
    "{",
    " ",
    "\n",
    "x",
    "é",
    "<",
]


@settings(max_examples=400, deadline=None)
@given(
    text=fragment_texts(_FRAGMENTS),
    cuts=st.lists(st.integers(0, 400)),
    mode=st.sampled_from([(False, False), (True, False), (True, True)]),
)
def test_random_text_is_chunking_invariant_and_loses_nothing(text: str, cuts: list[int], mode: tuple[bool, bool]) -> None:
    whole = check_chunking_invariant(Case("random", qwen(*mode), text), cuts)
    if mode == (False, False) and not whole[2]:
        assert whole[0] == text  # without thinking and without a parsed call, every character is content


def test_content_streams_and_only_a_partial_tag_and_whitespace_are_held() -> None:
    p = Qwen3CoderParser(TOOLS)
    assert p.feed("Hello wor") == Delta(content="Hello wor")
    assert p.feed("ld \n<tool") == Delta(content="ld")
    assert p.feed("_call>\n<function=get_time>\n") == Delta()
    delta = p.feed("</function>\n</tool_call>")
    assert summary(delta) == ("", "", (("get_time", dump({}), 0),))
    assert p.feed("\n\nAfter.") == Delta(content="After.")
    assert p.feed("  ") == Delta()
    assert p.finish() == Delta(content="  ")  # trailing whitespace at the very end is kept


def test_thinking_streams_before_the_call() -> None:
    p = Qwen3CoderParser(TOOLS, thinking=True, prefilled=True)
    assert p.feed("Let me ") == Delta(thinking="Let me ")
    assert p.feed("think.</think>\n") == Delta(thinking="think.")
    assert p.feed(TIME[:20]) == Delta()
    assert summary(p.feed(TIME[20:])) == ("", "", (("get_time", dump({"tz": "CET"}), 0),))
    assert p.finish() == Delta()


def test_failures_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    out = parse_logged(
        caplog, "herd.parsing.qwen3_coder", qwen(), call("launch_rockets"), "<tool_call>\n<function=get_time>\n<parameter="
    )
    assert out.content == call("launch_rockets") + "<tool_call>\n<function=get_time>\n<parameter="
    messages = [r.getMessage() for r in caplog.records]
    assert any("'launch_rockets' was not offered" in m for m in messages)
    assert any("unfinished call at end of output" in m for m in messages)


def test_arguments_keep_the_order_the_model_wrote() -> None:
    out = parse(qwen(), call("configure", ("note", "n"), ("count", "1"), ("ratio", "1.5")))
    assert list(out.tool_calls[0].arguments) == ["note", "count", "ratio"]


def test_ids_are_distinct_and_indexes_count_across_feeds() -> None:
    p = Qwen3CoderParser(TOOLS)
    first = p.feed(TIME)
    second = p.feed(WEATHER)
    assert [c.index for c in first.tool_calls + second.tool_calls] == [0, 1]
    assert first.tool_calls[0].id != second.tool_calls[0].id


@pytest.mark.parametrize(
    ("raw", "types", "expected"),
    [
        ("hello", (), "hello"),
        ("\nhello\n", ("string",), "hello"),
        ("\n\nhello\n\n", ("string",), "\nhello\n"),
        (" \nhello", ("string",), " \nhello"),
        ("null", ("string",), None),
        ("Null", ("integer",), None),
        ("42", ("integer",), 42),
        ("-0042", ("integer",), -42),
        ("+5", ("integer",), 5),
        ("9223372036854775807", ("integer",), 9223372036854775807),
        ("9223372036854775808", ("integer",), "9223372036854775808"),
        ("4.2", ("integer",), "4.2"),
        ("9" * 5000, ("integer",), "9" * 5000),
        ("9" * 5000, ("number",), "9" * 5000),
        (" 42", ("integer",), " 42"),
        ("١٢", ("integer",), "١٢"),
        ("1_000", ("integer",), "1_000"),
        ("3.14", ("number",), 3.14),
        ("5.0", ("number",), 5),
        ("1e3", ("number",), 1000),
        ("-1.5e-3", ("number",), -0.0015),
        (".5", ("number",), 0.5),
        ("1e400", ("number",), "1e400"),
        ("nan", ("number",), "nan"),
        ("Infinity", ("number",), "Infinity"),
        ("TRUE", ("boolean",), True),
        ("false", ("boolean",), False),
        ("yes", ("boolean",), "yes"),  # Ollama gives false here; herd keeps what the model wrote
        ('["a", 1]', ("array",), ["a", 1]),
        ("[]", ("array",), []),
        ('{"a": 1}', ("array",), '{"a": 1}'),
        ('{"a": {"b": []}}', ("object",), {"a": {"b": []}}),
        ("[NaN]", ("array",), "[NaN]"),
        ("{'a': 1}", ("object",), "{'a': 1}"),
        ("123", ("string", "number"), 123),
        ("abc", ("number", "string"), "abc"),
        ("true", ("integer", "boolean"), True),
        ("7", ("integer", "null"), 7),
        ("[1]", ("string", "array"), [1]),
    ],
)
def test_parse_value(raw: str, types: tuple[str, ...], expected: object) -> None:
    got = parse_value(raw, types)
    assert json.dumps(got) == json.dumps(expected)
    assert type(got) is type(expected)
