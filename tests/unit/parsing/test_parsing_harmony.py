"""HarmonyParser (gpt-oss): golden raw outputs -> content, thinking and tool calls, at every chunk boundary.

What it proves: each golden output (reasoning then answer, one call, two calls, a multi-line and a nested call, a
preamble, a call to a tool that was not offered, bad JSON, no markup at all, a call cut off at the end, and the
header variants gpt-oss writes) gives the same Delta whole, split in two at every character, fed character by
character, fed token by token (markers and words as a tokenizer would cut them) and cut at random; that text
streams as it arrives while a call waits for its end; that failed calls come back as content with a warning; and
the `think` -> `Reasoning:` mapping. The header forms follow OpenAI's Harmony guide and the cases of Ollama's
harmony parser tests (read, not copied).
What it cannot prove: that a real gpt-oss writes only these forms, or that the engine passes the special tokens
through as text (it must, for `<|channel|>` and `<|message|>`; `<|call|>` and `<|return|>` may be absent, which the
"without a terminator" cases cover).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parsing_support import (
    Case,
    check_case_all_chunkings,
    check_chunking_invariant,
    check_random_chunking,
    feed_deltas,
    fragment_texts,
    parse,
    parse_logged,
    run,
    split_at,
    summary,
)

from herd.parsing.base import Delta
from herd.parsing.harmony import (
    HarmonyParser,
    harmony_function_names,
    harmony_reasoning_effort,
    parse_header,
)
from herd.types import Think, ToolDef

TOOLS = (
    ToolDef("get_weather", "Weather for a city.", {"type": "object", "properties": {"city": {"type": "string"}}}),
    ToolDef("get_time", "The time in a zone.", {"type": "object", "properties": {"tz": {"type": "string"}}}),
    ToolDef("book-flight", "Books a flight.", {"type": "object", "properties": {"to": {"type": "string"}}}),
    ToolDef("browser.search", "", {"type": "object", "properties": {"query": {"type": "string"}}}),
)


def harmony(thinking: bool = True, prefilled: bool = False, channel: str = "analysis") -> Callable[[], HarmonyParser]:
    return lambda: HarmonyParser(TOOLS, thinking=thinking, prefilled=prefilled, prefill_channel=channel)


h = harmony()

A = "<|channel|>analysis<|message|>"  # the usual start: the prompt ended with <|start|>assistant
NEXT = "<|end|><|start|>assistant"


def call_header(name: str) -> str:
    return f"<|start|>assistant<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"


CASES = [
    Case(
        "analysis-then-final",
        h,
        f"{A}User asks 2+2. Simple.{NEXT}<|channel|>final<|message|>2 + 2 = 4.<|return|>",
        content="2 + 2 = 4.",
        thinking="User asks 2+2. Simple.",
    ),
    Case(
        "final-only-no-terminator",
        h,
        "<|channel|>final<|message|>Hello! How can I help?",
        content="Hello! How can I help?",
    ),
    Case(
        "analysis-then-call",
        h,
        f"{A}Need the weather tool.<|end|>" + call_header("get_weather") + '{"city":"Paris"}<|call|>',
        thinking="Need the weather tool.",
        calls=(("get_weather", {"city": "Paris"}),),
    ),
    Case(
        "call-without-call-terminator",  # the engine stopped on <|call|> and did not pass it on
        h,
        f"{A}Weather.<|end|>" + call_header("get_weather") + '{"city":"Oslo"}',
        thinking="Weather.",
        calls=(("get_weather", {"city": "Oslo"}),),
    ),
    Case(
        "two-calls",
        h,
        f"{A}Both tools.<|end|>"
        + call_header("get_weather")
        + '{"city":"Rome"}<|call|>'
        + call_header("get_time")
        + '{"tz":"CET"}<|call|>',
        thinking="Both tools.",
        calls=(("get_weather", {"city": "Rome"}), ("get_time", {"tz": "CET"})),
    ),
    Case(
        "multi-line-json-call",
        h,
        call_header("get_weather") + '{\n  "city": "New York",\n  "days": 3\n}<|call|>',
        calls=(("get_weather", {"city": "New York", "days": 3}),),
    ),
    Case(
        "nested-arguments",
        h,
        call_header("get_weather")
        + '{"z": 1, "where": {"city": "Lyon", "geo": [45.76, 4.84], "tags": {"b": null, "a": true}}, '
        '"note": "braces } { and <|end in a string"}<|call|>',
        calls=(
            (
                "get_weather",
                {
                    "z": 1,
                    "where": {"city": "Lyon", "geo": [45.76, 4.84], "tags": {"b": None, "a": True}},
                    "note": "braces } { and <|end in a string",
                },
            ),
        ),
    ),
    Case(
        "preamble-commentary-then-call",
        h,
        f"{A}Plan first.<|end|><|start|>assistant<|channel|>commentary<|message|>**Plan**:\n1. weather\n2. time"
        "<|end|>" + call_header("get_weather") + '{"city":"Kyiv"}<|call|>',
        content="**Plan**:\n1. weather\n2. time",
        thinking="Plan first.",
        calls=(("get_weather", {"city": "Kyiv"}),),
    ),
    Case(
        "recipient-before-channel",
        h,
        ' to=functions.get_time<|channel|>commentary json<|message|>{"tz":"UTC"}<|call|>',
        calls=(("get_time", {"tz": "UTC"}),),
    ),
    Case(
        "recipient-before-channel-after-start",
        h,
        f'{A}t<|end|><|start|>assistant to=functions.get_time<|channel|>commentary <|constrain|>json<|message|>'
        '{"tz":"PST"}<|call|>',
        thinking="t",
        calls=(("get_time", {"tz": "PST"}),),
    ),
    Case(
        "constrain-without-space",
        h,
        '<|channel|>commentary to=functions.get_time<|constrain|>json<|message|>{"tz":"JST"}<|call|>',
        calls=(("get_time", {"tz": "JST"}),),
    ),
    Case(
        "renamed-tool-maps-back",  # the prompt showed book-flight as book_flight
        h,
        call_header("book_flight") + '{"to":"LIS"}<|call|>',
        calls=(("book-flight", {"to": "LIS"}),),
    ),
    Case(
        "offered-name-as-given",
        h,
        call_header("book-flight") + '{"to":"OPO"}<|call|>',
        calls=(("book-flight", {"to": "OPO"}),),
    ),
    Case(
        "builtin-tool-on-analysis",
        h,
        f'{A}Search it.<|end|><|start|>assistant<|channel|>analysis to=browser.search <|constrain|>json<|message|>'
        '{"query":"harmony"}<|call|>',
        thinking="Search it.",
        calls=(("browser.search", {"query": "harmony"}),),
    ),
    Case(
        "empty-body-call-takes-no-arguments",
        h,
        call_header("get_time") + "<|call|>",
        calls=(("get_time", {}),),
    ),
    Case(
        "unknown-tool-is-content",
        h,
        f"{A}Launch.<|end|>" + call_header("launch_rockets") + '{"count":3}<|call|>',
        content='{"count":3}',
        thinking="Launch.",
    ),
    Case(
        "bad-json-is-content",
        h,
        call_header("get_weather") + "{'city': 'Paris'}<|call|>",
        content="{'city': 'Paris'}",
    ),
    Case(
        "arguments-not-an-object-are-content",
        h,
        call_header("get_weather") + '["Paris"]<|call|>',
        content='["Paris"]',
    ),
    Case(
        "bad-call-then-good-call-keeps-index-0",
        h,
        call_header("get_weather") + "{oops<|call|>" + call_header("get_time") + '{"tz":"EST"}<|call|>',
        content="{oops",
        calls=(("get_time", {"tz": "EST"}),),
    ),
    Case(
        "cut-off-mid-call-is-content",  # num_predict ran out inside the arguments
        h,
        f"{A}Go.<|end|>" + call_header("get_weather") + '{"city": "Par',
        content='{"city": "Par',
        thinking="Go.",
    ),
    Case(
        "no-markup-is-content",
        h,
        "The capital of France is Paris. 1 < 2 and <b>bold</b> and to be.",
        content="The capital of France is Paris. 1 < 2 and <b>bold</b> and to be.",
    ),
    Case(
        "no-markup-leading-whitespace-kept",
        h,
        "\n  to do: nothing <| here",
        content="\n  to do: nothing <| here",
    ),
    Case(
        "only-a-partial-marker",
        h,
        "<|chan",
    ),
    Case(
        "text-with-angle-brackets-in-final",
        h,
        "<|channel|>final<|message|>Use a < b, x <| y, and <|en without an end.<|return|>",
        content="Use a < b, x <| y, and <|en without an end.",
    ),
    Case(
        "missing-end-before-start",
        h,
        f"{A}thought<|start|>assistant<|channel|>final<|message|>answer<|end|>",
        content="answer",
        thinking="thought",
    ),
    Case(
        "channel-right-after-end",  # <|start|>assistant left out
        h,
        f"{A}thought<|end|><|channel|>final<|message|>answer",
        content="answer",
        thinking="thought",
    ),
    Case(
        "whitespace-between-messages-dropped",
        h,
        f"{A}a<|end|>\n\n<|start|>assistant<|channel|>final<|message|>b<|return|>\n",
        content="b",
        thinking="a",
    ),
    Case(
        "stray-text-between-messages-is-content",
        h,
        f"{A}a<|end|> plain words <|start|>assistant<|channel|>final<|message|>b",
        content=" plain words b",
        thinking="a",
    ),
    Case(
        "several-analysis-messages-concatenate",
        h,
        f"{A}one. {NEXT}{A}two.{NEXT}<|channel|>final<|message|>done",
        content="done",
        thinking="one. two.",
    ),
    Case(
        "start-repeated-at-the-top",
        h,
        f"<|start|>assistant{A}x{NEXT}<|channel|>final<|message|>y",
        content="y",
        thinking="x",
    ),
    Case(
        "unknown-channel-is-content",
        h,
        "<|channel|>notes<|message|>visible",
        content="visible",
    ),
    Case(
        "unicode",
        h,
        f"{A}東京の天気 ☕{NEXT}<|channel|>final<|message|>晴れ 🌤️" + call_header("get_weather")
        + '{"city":"東京","esc":"\\u00e9"}<|call|>',
        content="晴れ 🌤️",
        thinking="東京の天気 ☕",
        calls=(("get_weather", {"city": "東京", "esc": "é"}),),
    ),
    Case(
        "thinking-off-drops-analysis",
        harmony(thinking=False),
        f"{A}secret reasoning{NEXT}<|channel|>final<|message|>visible answer",
        content="visible answer",
    ),
    Case(
        "prefilled-analysis",
        harmony(prefilled=True),
        "still thinking<|end|><|start|>assistant<|channel|>final<|message|>now the answer",
        content="now the answer",
        thinking="still thinking",
    ),
    Case(
        "prefilled-final-continues-the-answer",
        harmony(prefilled=True, channel="final"),
        " and the rest of it.<|return|>",
        content=" and the rest of it.",
    ),
    Case(
        "header-too-long-is-content",
        h,
        "<|channel|>" + "x" * 300 + "<|message|>tail",
        content="<|channel|>" + "x" * 300 + "<|message|>tail",
    ),
]


# A tokenizer-like cut: special markers whole, runs of word characters, runs of whitespace, single other chars.
_TOKEN_RE = re.compile(r"<\|[a-z]+\|>|\w+|\s+|.", re.S)


def tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_golden_at_every_chunk_boundary(case: Case) -> None:
    check_case_all_chunkings(case)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_golden_token_by_token(case: Case) -> None:
    pieces = tokens(case.text)
    assert "".join(pieces) == case.text
    assert summary(run(case, pieces)) == case.expected()
    # every cut at a token boundary, in three pieces: after each token, and again two tokens later
    bounds = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces) + 1)]
    for i, cut in enumerate(bounds):
        later = bounds[min(i + 2, len(bounds) - 1)]
        assert summary(run(case, split_at(case.text, [cut, later]))) == case.expected(), cut


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_chunkings_agree(data: st.DataObject) -> None:
    check_random_chunking(data, CASES)


_FRAGMENTS = [
    "<|start|>", "assistant", "<|channel|>", "analysis", "final", "commentary", " to=functions.get_time", " ",
    "<|constrain|>", "json", "<|message|>", "<|end|>", "<|call|>", "<|return|>", '{"tz":"UTC"}', "{", "}",
    "hello", "\n", "<|", "<", "to", "x <| y", ' to=functions.nope',
]


@settings(max_examples=400, deadline=None)
@given(text=fragment_texts(_FRAGMENTS), cuts=st.lists(st.integers(0, 300)))
def test_random_markup_is_chunking_invariant_and_never_raises(text: str, cuts: list[int]) -> None:
    check_chunking_invariant(Case("random", h, text), cuts)


def test_text_streams_as_it_arrives() -> None:
    p = HarmonyParser(TOOLS)
    assert p.feed("<|channel|>analysis<|message|>Let me") == Delta(thinking="Let me")
    assert p.feed(" think<|") == Delta(thinking=" think")  # "<|" may begin <|end|>: held
    assert p.feed("end|><|start|>assistant<|channel|>final<|message|>Hel") == Delta(content="Hel")
    assert p.feed("lo") == Delta(content="lo")
    assert p.finish() == Delta()


def test_plain_text_streams_at_once() -> None:
    p = HarmonyParser(TOOLS)
    assert p.feed("Hi") == Delta(content="Hi")
    assert p.feed(" there") == Delta(content=" there")


def test_call_is_released_when_complete_and_not_before() -> None:
    text = call_header("get_weather") + '{"city":"Paris"}'
    deltas = feed_deltas(HarmonyParser(TOOLS), [*tokens(text), "<|call|>"])
    assert all(not d for d in deltas[:-2])
    assert [c.name for c in deltas[-2].tool_calls] == ["get_weather"]
    assert deltas[-2].content == "" and deltas[-1] == Delta()


def test_ids_are_fresh_and_indexes_count_calls() -> None:
    text = "".join(call_header("get_time") + json.dumps({"tz": tz}) + "<|call|>" for tz in ("A", "B", "C"))
    delta = parse(h, text)
    assert [c.index for c in delta.tool_calls] == [0, 1, 2]
    assert len({c.id for c in delta.tool_calls}) == 3


def test_injected_ids() -> None:
    ids = iter(["call_aaaaaaaa", "call_bbbbbbbb"])
    p = HarmonyParser(TOOLS, new_id=lambda: next(ids))
    d = p.feed(call_header("get_time") + "{}<|call|>" + call_header("get_time") + "{}<|call|>")
    assert [c.id for c in d.tool_calls] == ["call_aaaaaaaa", "call_bbbbbbbb"]


def test_arguments_keep_key_order() -> None:
    text = call_header("get_weather") + '{"z": 1, "a": {"y": 2, "b": 3}, "m": 0}<|call|>'
    (c,) = parse(h, text).tool_calls
    assert json.dumps(c.arguments) == '{"z": 1, "a": {"y": 2, "b": 3}, "m": 0}'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (call_header("launch_rockets") + "{}<|call|>", "not offered"),
        (call_header("get_weather") + "{bad<|call|>", "not a JSON object"),
        ("<|channel|>" + "y" * 300, "not a message header"),
    ],
)
def test_failed_calls_and_headers_warn(caplog: pytest.LogCaptureFixture, text: str, message: str) -> None:
    parse_logged(caplog, "herd.parsing.harmony", h, text)
    assert message in caplog.text


def test_no_tools_offered_every_call_is_content() -> None:
    text = call_header("get_weather") + '{"city":"Paris"}<|call|>'
    delta = parse(lambda: HarmonyParser(()), text)
    assert delta == Delta(content='{"city":"Paris"}')


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("<|channel|>analysis", ("", "analysis", "")),
        ("assistant<|channel|>final", ("assistant", "final", "")),
        ("<|channel|>commentary to=functions.f <|constrain|>json", ("", "commentary", "functions.f")),
        ("<|channel|>commentary to=functions.f<|constrain|>json", ("", "commentary", "functions.f")),
        (" to=functions.f<|channel|>commentary json", ("", "commentary", "functions.f")),
        ("assistant to=functions.f<|channel|>commentary<|constrain|>json", ("assistant", "commentary", "functions.f")),
        ("assistant to=functions.f extra<|channel|>analysis", ("assistant", "analysis", "functions.f")),
        ("assistant<|channel|>analysis to=browser.search", ("assistant", "analysis", "browser.search")),
        ("assistant", ("assistant", "", "")),
        ("<|channel|> final", ("final", "", "")),  # a space after <|channel|>: no channel name (as Ollama reads it)
    ],
)
def test_parse_header(header: str, expected: tuple[str, str, str]) -> None:
    assert parse_header(header) == expected


def test_harmony_function_names() -> None:
    names = harmony_function_names(["get_weather", "get-weather", "my tool.v2", "9lives", "日本語", "!!", "python"])
    assert names == {
        "get_weather": "get_weather",
        "get-weather": "get_weather_2",
        "my tool.v2": "my_tool_v2",
        "9lives": "_9lives",
        "日本語": "日本語",
        "!!": "unnamed",
        "python": "python",
    }


def test_clashing_renamed_tools_map_back_to_what_the_model_was_shown() -> None:
    tools = (ToolDef("get-weather", "", {}), ToolDef("get_weather", "", {}))
    text = call_header("get_weather") + "{}<|call|>" + call_header("get_weather_2") + "{}<|call|>"
    delta = parse(lambda: HarmonyParser(tools), text)
    assert [c.name for c in delta.tool_calls] == ["get-weather", "get_weather"]


@pytest.mark.parametrize(
    ("think", "expected"),
    [
        (None, "medium"),
        (Think(True), "medium"),
        (Think(True, "low"), "low"),
        (Think(True, "medium"), "medium"),
        (Think(True, "high"), "high"),
        (Think(True, "max"), "high"),
        (Think(False), None),  # gpt-oss cannot stop reasoning; Ollama leaves the line out
    ],
)
def test_harmony_reasoning_effort(think: Think | None, expected: str | None) -> None:
    assert harmony_reasoning_effort(think) == expected
