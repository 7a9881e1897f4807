"""GraniteParser: golden raw outputs of Granite 3.x and 4.x, each checked at every chunk boundary.

What this proves: for the outputs below (written from the formats in Granite's chat templates and IBM's
granite-common output processors, see herd.parsing.granite), the parser gives the same content, thinking and calls
whatever the chunking; 3.2 phrase reasoning and 3.3 <think>/<response> reasoning are split out; `<|tool_call|>`
lists and 4.x `<tool_call>` blocks become calls as soon as their JSON is complete; failures come back whole as content
with a warning; random mixtures of the markers never raise and never depend on the chunking.
What it cannot prove: that a given Granite checkpoint writes these exact bytes (whether `<|tool_call|>` survives
detokenization, which spelling of the reasoning phrases a quantization prefers). That needs a real model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parsing_support import (
    CET,
    PARIS,
    TIME_TOOL,
    WEATHER_TOOL,
    Case,
    check_calls_stream,
    check_case_all_chunkings,
    check_chunking_invariant,
    check_injected_id,
    check_random_chunking,
    dump,
    fragment_texts,
    parse,
    parse_logged,
    summary,
)

from herd.parsing.base import Delta
from herd.parsing.granite import GraniteParser, GraniteState
from herd.parsing.jsoncalls import BracketScanner
from herd.types import ToolDef

TOOLS = (WEATHER_TOOL, TIME_TOOL)


def granite(
    thinking: bool = False, prefilled: bool = False, tools: tuple[ToolDef, ...] = TOOLS
) -> Callable[[], GraniteParser]:
    return lambda: GraniteParser(tools, thinking=thinking, prefilled=prefilled)


def call(name: str, args: object, key: str = "arguments") -> str:
    return json.dumps({"name": name, key: args}, ensure_ascii=False)


def g4(name: str, args: object) -> str:
    """One Granite 4.0 call block as its template renders it."""
    return f"<tool_call>\n{call(name, args)}\n</tool_call>"


NESTED = {"city": "Zürich", "opts": {"units": ["c", "f"], "deep": {"x": [1, {"y": None}]}}, "note": "a}b{c]\"d'"}

CASES = [
    Case("plain-content", granite(), "Granite here. [not a call]", content="Granite here. [not a call]"),
    Case(
        "g3-list-single",
        granite(),
        f"<|tool_call|>[{call('get_weather', PARIS)}]",
        calls=(("get_weather", PARIS),),
    ),
    Case(
        "g3-list-several",
        granite(),
        f"<|tool_call|>[{call('get_weather', PARIS)}, {call('get_time', CET)}]",
        calls=(("get_weather", PARIS), ("get_time", CET)),
    ),
    Case(
        "g3-text-before-and-after",
        granite(),
        f"Checking both.\n<|tool_call|> [{call('get_time', CET)}]\n\nDone.",
        content="Checking both.\nDone.",
        calls=(("get_time", CET),),
    ),
    Case(
        "g3-object-and-parameters-key",
        granite(),
        f"<|tool_call|>{call('get_time', CET, key='parameters')}",
        calls=(("get_time", CET),),
    ),
    Case(
        "g3-plain-text-tag-with-list",
        granite(),
        f"<tool_call>[{call('get_weather', PARIS)}, {call('get_time', CET)}]",
        calls=(("get_weather", PARIS), ("get_time", CET)),
    ),
    Case(
        "g3-nested-multiline",
        granite(),
        "<|tool_call|>" + json.dumps([{"name": "get_weather", "arguments": NESTED}], indent=4, ensure_ascii=False),
        calls=(("get_weather", NESTED),),
    ),
    Case(
        "g3-arguments-as-json-string",
        granite(),
        '<|tool_call|>[{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}, {"name": "get_time"}]',
        calls=(("get_weather", {"city": "Oslo"}), ("get_time", {})),
    ),
    Case(
        "g4-single",
        granite(),
        g4("get_weather", PARIS),
        calls=(("get_weather", PARIS),),
    ),
    Case(
        "g4-several-with-text",
        granite(),
        f"Let me look that up.\n{g4('get_weather', PARIS)}\n{g4('get_time', CET)}\nAnything else?",
        content="Let me look that up.\nAnything else?",
        calls=(("get_weather", PARIS), ("get_time", CET)),
    ),
    Case(
        "g4-nested",
        granite(),
        g4("get_weather", NESTED),
        calls=(("get_weather", NESTED),),
    ),
    Case(
        "g33-think-response",
        granite(thinking=True),
        "<think>The user asks 2+2.\nThat is 4.\n</think>\n<response>2 + 2 = 4.</response>",
        content="2 + 2 = 4.",
        thinking="The user asks 2+2.\nThat is 4.",
    ),
    Case(
        "g33-think-then-call",
        granite(thinking=True),
        f"<think>Need weather.</think><response><|tool_call|>[{call('get_weather', PARIS)}]</response>",
        thinking="Need weather.",
        calls=(("get_weather", PARIS),),
    ),
    Case(
        "g33-second-response-close-is-content",
        granite(thinking=True),
        "<think>a</think><response>b</response> c </response>",
        content="b c </response>",
        thinking="a",
    ),
    Case(
        "g32-phrases",
        granite(thinking=True),
        "Here is my thought process:\nFirst, 2+2.\nSo 4.\n\nHere is my response:\nThe answer is 4.",
        content="The answer is 4.",
        thinking="First, 2+2.\nSo 4.",
    ),
    Case(
        "g32-contracted-phrases",
        granite(thinking=True),
        "Here's my thought process:\nhmm\nHere's my response:\nok",
        content="ok",
        thinking="hmm",
    ),
    Case(
        "g32-think-close-does-not-end-phrase-reasoning",
        granite(thinking=True),
        "Here is my thought process: a </think> b Here is my response: c",
        content="c",
        thinking="a </think> b",
    ),
    Case(
        "prefilled-thinking",
        granite(thinking=True, prefilled=True),
        "\nreasoning</think>\n\nanswer",
        content="answer",
        thinking="reasoning",
    ),
    Case(
        "thinking-on-but-not-first-is-content",
        granite(thinking=True),
        "Sure! <think>no</think> Here is my response: x",
        content="Sure! <think>no</think> Here is my response: x",
    ),
    Case(
        "thinking-off-think-tag-is-content",
        granite(),
        "<think>x</think>y",
        content="<think>x</think>y",
    ),
    Case(
        "unterminated-thinking",
        granite(thinking=True),
        "<think>still going  ",
        thinking="still going",
    ),
    Case(
        "unknown-tool-gives-list-back",
        granite(),
        f"<|tool_call|>[{call('get_time', CET)}, {call('launch', {})}] after",
        content=f"<|tool_call|>[{call('get_time', CET)}, {call('launch', {})}] after",
    ),
    Case(
        "g4-unknown-tool-block-is-content",
        granite(),
        g4("launch", {"n": 1}),
        content=g4("launch", {"n": 1}),
    ),
    Case(
        "malformed-json",
        granite(),
        "<|tool_call|>[{'name': 'get_time'}]",
        content="<|tool_call|>[{'name': 'get_time'}]",
    ),
    Case(
        "arguments-not-an-object",
        granite(),
        '<|tool_call|>[{"name": "get_time", "arguments": [1]}]',
        content='<|tool_call|>[{"name": "get_time", "arguments": [1]}]',
    ),
    Case(
        "empty-list",
        granite(),
        "<|tool_call|>[]",
        content="<|tool_call|>[]",
    ),
    Case(
        "marker-without-json",
        granite(),
        "<|tool_call|> I cannot call tools.",
        content="<|tool_call|> I cannot call tools.",
    ),
    Case(
        "incomplete-call-at-finish",
        granite(),
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',
        content='<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',
    ),
    Case(
        "partial-marker-at-end",
        granite(),
        "Done <tool_ca",
        content="Done <tool_ca",
    ),
    Case(
        "bare-list-is-content",
        granite(),
        f"[{call('get_time', CET)}]",
        content=f"[{call('get_time', CET)}]",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_golden_at_every_chunk_boundary(case: Case) -> None:
    check_case_all_chunkings(case)


@pytest.mark.parametrize("case", [c for c in CASES if c.calls], ids=lambda c: c.id)
def test_calls_arrive_before_finish_and_without_content_after_them(case: Case) -> None:
    check_calls_stream(case)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_chunkings_agree(data: st.DataObject) -> None:
    check_random_chunking(data, CASES)


_FRAGMENTS = [
    "<|tool_call|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_",
    "<think>",
    "</think>",
    "<response>",
    "</response>",
    "Here is my thought process:",
    "Here is my response:",
    "Here",
    call("get_time", CET),
    '{"name": "nope"}',
    "[",
    "]",
    "{",
    "}",
    '"',
    "'",
    "\\",
    " ",
    "\n",
    "x",
]


@settings(max_examples=300, deadline=None)
@given(
    text=fragment_texts(_FRAGMENTS),
    cuts=st.lists(st.integers(0, 500)),
    thinking=st.booleans(),
    prefilled=st.booleans(),
)
def test_random_text_is_chunking_invariant(text: str, cuts: list[int], thinking: bool, prefilled: bool) -> None:
    check_chunking_invariant(Case("random", granite(thinking, prefilled), text), cuts)


def test_content_streams_and_the_call_comes_when_its_json_closes() -> None:
    p = GraniteParser(TOOLS)
    assert p.feed("Let me check. <|tool") == Delta(content="Let me check. ")
    assert p.feed("_call|>[") == Delta()
    assert p.state is GraniteState.CALL_VALUE
    assert p.feed(call("get_time", CET)) == Delta()
    delta = p.feed("]")
    assert summary(delta) == ("", "", (("get_time", dump(CET), 0),))
    assert p.feed(" bye") == Delta(content="bye")
    assert p.finish() == Delta()


def test_reasoning_streams_but_holds_trailing_whitespace() -> None:
    p = GraniteParser(TOOLS, thinking=True)
    assert p.feed("Here is my") == Delta()  # could still be the opener
    assert p.feed(" thought process:\nstep one") == Delta(thinking="step one")
    assert p.feed(" \n\nHere is") == Delta()  # whitespace before a possible closer waits
    assert p.feed(" not it") == Delta(thinking=" \n\nHere is not it")
    assert p.feed("\n\nHere is my response: ok") == Delta(content="ok")


def test_failed_calls_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    out = parse_logged(caplog, "herd.parsing.granite", granite(), g4("nope", {}))
    assert out.content == g4("nope", {})
    assert "'nope' was not offered" in caplog.text


def test_bracket_scanner_skips_brackets_in_strings() -> None:
    text = """{"a": "}]", 'b': '"}', "c": "\\"}"} tail"""
    scanner = BracketScanner()
    assert scanner.advance(text[:10]) is None
    assert scanner.advance(text) == text.index(" tail")


def test_ids_are_fresh_and_arguments_keep_key_order() -> None:
    text = '<|tool_call|>[{"name": "get_weather", "arguments": {"z": 1, "a": 2}}, {"name": "get_time"}]'
    out = parse(granite(), text)
    assert list(out.tool_calls[0].arguments) == ["z", "a"]
    assert len({c.id for c in out.tool_calls}) == 2
    check_injected_id(partial(GraniteParser, TOOLS), g4("get_time", CET))
