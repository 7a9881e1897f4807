"""OutputParser: thinking first, tool calls in the content that remains; golden cases at every chunk boundary."""

from __future__ import annotations

import json
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
)

from herd.parsing.base import Delta, IncrementalParser, PassThrough
from herd.parsing.pipeline import OutputParser, parse_all
from herd.parsing.thinking import ThinkingParser
from herd.parsing.toolcalls import ToolCallParser, ToolFormat

NAMES = ("get_weather", "get_time")
WEATHER = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})


def output(
    family: ToolFormat | None = ToolFormat.HERMES, thinking: bool = True, prefilled: bool = False
) -> Callable[[], OutputParser]:
    def make() -> OutputParser:
        return OutputParser(
            ThinkingParser(prefilled=prefilled) if thinking else None,
            ToolCallParser(NAMES, family) if family is not None else None,
        )

    return make


PIPELINE_CASES = [
    Case(
        "think-then-hermes-call",
        output(),
        f"<think>\nI should call get_weather: <tool_call>{WEATHER}</tool_call>\n</think>\n\n"
        f"<tool_call>\n{WEATHER}\n</tool_call>",
        thinking=f"I should call get_weather: <tool_call>{WEATHER}</tool_call>\n",
        calls=(("get_weather", {"city": "Paris"}),),
    ),
    Case(
        "think-then-text-then-call",
        output(),
        f"<think>plan</think>On it.\n<tool_call>{WEATHER}</tool_call>",
        content="On it.\n",
        thinking="plan",
        calls=(("get_weather", {"city": "Paris"}),),
    ),
    Case(
        "think-then-plain-answer",
        output(),
        "<think>\n2+2 is 4\n</think>\n\nThe answer is 4.",
        content="The answer is 4.",
        thinking="2+2 is 4\n",
    ),
    Case(
        "prefilled-then-llama3-bare-json",
        output(ToolFormat.LLAMA3, prefilled=True),
        'hmm</think>\n{"name": "get_time", "parameters": {"tz": "UTC"}}',
        thinking="hmm",
        calls=(("get_time", {"tz": "UTC"}),),
    ),
    Case(
        "think-then-bare-json-not-a-call",
        output(ToolFormat.GENERIC),
        '<think>x</think>{"a": 1} done',
        content='{"a": 1} done',
        thinking="x",
    ),
    Case(
        "no-thinking-parser-keeps-tags-in-content",
        output(ToolFormat.HERMES, thinking=False),
        f"<think>x</think><tool_call>{WEATHER}</tool_call>",
        content="<think>x</think>",
        calls=(("get_weather", {"city": "Paris"}),),
    ),
    Case(
        "thinking-only",
        output(None),
        "<think>a</think>b <tool_call>{}</tool_call>",
        content="b <tool_call>{}</tool_call>",
        thinking="a",
    ),
    Case(
        "unterminated-thinking-with-tools",
        output(ToolFormat.MISTRAL),
        "<think>[TOOL_CALLS] is a tag",
        thinking="[TOOL_CALLS] is a tag",
    ),
    Case(
        "unicode-everywhere",
        output(ToolFormat.MISTRAL),
        '<think>東京の天気 🌧️</think> 調べます [TOOL_CALLS][{"name": "get_weather", '
        '"arguments": {"city": "東京"}}]',
        content="調べます ",
        thinking="東京の天気 🌧️",
        calls=(("get_weather", {"city": "東京"}),),
    ),
    Case("nothing-configured", lambda: OutputParser(None, None), "<think>a</think>b", "<think>a</think>b"),
]


@pytest.mark.parametrize("case", PIPELINE_CASES, ids=lambda c: c.id)
def test_golden_at_every_chunk_boundary(case: Case) -> None:
    check_case_all_chunkings(case)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_chunkings_agree(data: st.DataObject) -> None:
    check_random_chunking(data, PIPELINE_CASES)


_FRAGMENTS = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<thi",
    WEATHER,
    "{",
    "}",
    '"',
    " ",
    "\n",
    "é",
]


@settings(max_examples=300, deadline=None)
@given(
    text=fragment_texts(_FRAGMENTS, max_size=10),
    cuts=st.lists(st.integers(0, 300)),
    family=st.sampled_from([ToolFormat.HERMES, ToolFormat.GENERIC, ToolFormat.LLAMA3]),
    prefilled=st.booleans(),
)
def test_random_text_is_chunking_invariant(text: str, cuts: list[int], family: ToolFormat, prefilled: bool) -> None:
    check_chunking_invariant(Case("random", output(family, prefilled=prefilled), text), cuts)


def test_thinking_streams_out_while_tools_wait() -> None:
    p = output()()
    deltas = feed_deltas(p, ["<think>", "a", "</think>", "<tool_call>", WEATHER, "</tool_call>"])
    assert [d.thinking for d in deltas] == ["", "a", "", "", "", "", ""]
    assert [len(d.tool_calls) for d in deltas] == [0, 0, 0, 0, 1, 0, 0]
    assert all(d.content == "" for d in deltas)


def test_parse_all_sums_deltas() -> None:
    class Scripted:
        def feed(self, text: str) -> Delta:
            return Delta(content=text.upper(), thinking=text)

        def finish(self) -> Delta:
            return Delta(content="!")

    parser: IncrementalParser = Scripted()
    assert parse_all(parser, ["ab", "c"]) == Delta(content="ABC!", thinking="abc")
    assert parse_all(PassThrough(), []) == Delta()
