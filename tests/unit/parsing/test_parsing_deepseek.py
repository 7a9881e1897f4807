"""DeepSeekParser: golden raw outputs of R1, V3, V3.1 and V3.2, each checked at every chunk boundary.

What this proves: for the outputs below (written from the formats in the models' chat templates, see the module
docstring of herd.parsing.deepseek), the parser yields the same content, thinking and calls whether the text comes
in one piece, in two pieces split anywhere, or one character at a time; calls arrive as soon as their end marker
does; failed or unknown calls come back as content with a warning; random mixtures of the markers never raise and
never depend on the chunking.
What it cannot prove: that a real DeepSeek checkpoint writes exactly these bytes (tokenizer detokenization of the
special tokens, spacing habits of a given quantization). Those need the integration tests with a real model.
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
from herd.parsing.deepseek import (
    CALL_BEGIN,
    CALL_END,
    CALLS_BEGIN,
    CALLS_END,
    DSML_BEGIN,
    DSML_END,
    TOOL_SEP,
    DeepSeekParser,
    DeepSeekState,
)
from herd.types import ToolDef

TOOLS = (WEATHER_TOOL, TIME_TOOL)


def ds(
    thinking: bool = False, prefilled: bool = False, tools: tuple[ToolDef, ...] = TOOLS
) -> Callable[[], DeepSeekParser]:
    return lambda: DeepSeekParser(tools, thinking=thinking, prefilled=prefilled)


def v31(name: str, args: object) -> str:
    """One V3.1 call as its template renders it."""
    return f"{CALL_BEGIN}{name}{TOOL_SEP}{json.dumps(args, ensure_ascii=False)}{CALL_END}"


def r1(name: str, args: object) -> str:
    """One R1 / V3 call as its template renders it."""
    return f"{CALL_BEGIN}function{TOOL_SEP}{name}\n```json\n{json.dumps(args, ensure_ascii=False)}\n```{CALL_END}"


NESTED = {"city": "Zürich", "opts": {"units": ["c", "f"], "deep": {"x": [1, {"y": None}]}}, "note": 'a}b{c"d'}

CASES = [
    Case("plain-content", ds(), "Hello, how are you?", content="Hello, how are you?"),
    Case(
        "v31-single",
        ds(),
        f"I'll check the weather.{CALLS_BEGIN}{v31('get_weather', PARIS)}{CALLS_END}",
        content="I'll check the weather.",
        calls=(("get_weather", PARIS),),
    ),
    Case(
        "v31-multiple-chained",
        ds(),
        f"{CALLS_BEGIN}{v31('get_weather', PARIS)}{v31('get_time', CET)}{CALLS_END}",
        calls=(("get_weather", PARIS), ("get_time", CET)),
    ),
    Case(
        "v31-text-around-calls",
        ds(),
        f"Before.\n{CALLS_BEGIN}{v31('get_time', CET)}{CALLS_END}\n\nAfter the call 完成 ✅",
        content="Before.\nAfter the call 完成 ✅",
        calls=(("get_time", CET),),
    ),
    Case(
        "v31-nested-arguments",
        ds(),
        f"{CALLS_BEGIN}{v31('get_weather', NESTED)}{CALLS_END}",
        calls=(("get_weather", NESTED),),
    ),
    Case(
        "v31-multiline-arguments",
        ds(),
        f'{CALLS_BEGIN}{CALL_BEGIN} get_weather {TOOL_SEP}\n{{\n  "city": "Paris",\n  "days": [1,\n 2]\n}}\n'
        f"{CALL_END}{CALLS_END}",
        calls=(("get_weather", {"city": "Paris", "days": [1, 2]}),),
    ),
    Case(
        "v31-empty-arguments",
        ds(),
        f"{CALLS_BEGIN}{CALL_BEGIN}get_time{TOOL_SEP}{{}}{CALL_END}{CALL_BEGIN}get_time{TOOL_SEP}{CALL_END}{CALLS_END}",
        calls=(("get_time", {}), ("get_time", {})),
    ),
    Case(
        "v31-thinking-prefilled-then-call",
        ds(thinking=True, prefilled=True),
        f"The user wants weather.\n</think>\n\nLet me look.{CALLS_BEGIN}{v31('get_weather', PARIS)}{CALLS_END}",
        content="Let me look.",
        thinking="The user wants weather.\n",
        calls=(("get_weather", PARIS),),
    ),
    Case(
        "v31-thinking-off-think-tag-is-content",
        ds(),
        "<think>not reasoning</think>ok",
        content="<think>not reasoning</think>ok",
    ),
    Case(
        "thinking-open-tag-not-prefilled",
        ds(thinking=True),
        "<think>\nstep 1\nstep 2</think>\n\nAnswer: 4",
        content="Answer: 4",
        thinking="step 1\nstep 2",
    ),
    Case(
        "call-inside-thinking-is-not-a-call",
        ds(thinking=True, prefilled=True),
        f"maybe {CALLS_BEGIN}{v31('get_time', CET)}{CALLS_END}?</think>No call.",
        content="No call.",
        thinking=f"maybe {CALLS_BEGIN}{v31('get_time', CET)}{CALLS_END}?",
    ),
    Case(
        "r1-single",
        ds(thinking=True, prefilled=True),
        f"Need the weather.\n</think>\n\n{CALLS_BEGIN}{r1('get_weather', PARIS)}{CALLS_END}",
        thinking="Need the weather.\n",
        calls=(("get_weather", PARIS),),
    ),
    Case(
        "r1-multiple-newline-separated",
        ds(),
        f"{CALLS_BEGIN}{r1('get_weather', PARIS)}\n{r1('get_time', CET)}{CALLS_END}",
        calls=(("get_weather", PARIS), ("get_time", CET)),
    ),
    Case(
        "r1-without-fence-and-without-section",
        ds(),
        f'Text {CALL_BEGIN}function{TOOL_SEP}get_time\n{{"tz": "UTC"}}{CALL_END} tail',
        content="Text tail",
        calls=(("get_time", {"tz": "UTC"}),),
    ),
    Case(
        "r1-nested-multiline",
        ds(),
        f"{CALLS_BEGIN}{CALL_BEGIN}function{TOOL_SEP}get_weather\n```json\n"
        + json.dumps(NESTED, indent=2, ensure_ascii=False)
        + f"\n```{CALL_END}{CALLS_END}",
        calls=(("get_weather", NESTED),),
    ),
    Case(
        "dsml-v32",
        ds(thinking=True, prefilled=True),
        "Plan.</think>Checking.\n\n"
        f'{DSML_BEGIN}\n<｜DSML｜invoke name="get_weather">\n'
        '<｜DSML｜parameter name="city" string="true">杭州 "west"</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="days" string="false">[1, 2]</｜DSML｜parameter>\n'
        '</｜DSML｜invoke>\n<｜DSML｜invoke name="get_time">\n</｜DSML｜invoke>\n'
        f"{DSML_END}",
        content="Checking.\n\n",
        thinking="Plan.",
        calls=(("get_weather", {"city": '杭州 "west"', "days": [1, 2]}), ("get_time", {})),
    ),
    Case(
        "unknown-tool-is-content",
        ds(),
        f"{CALLS_BEGIN}{v31('launch_rockets', {'n': 3})}{CALLS_END}",
        content=v31("launch_rockets", {"n": 3}),
    ),
    Case(
        "unknown-then-known",
        ds(),
        f"{CALLS_BEGIN}{v31('nope', {})}{v31('get_time', CET)}{CALLS_END}",
        content=v31("nope", {}),
        calls=(("get_time", CET),),
    ),
    Case(
        "malformed-json-is-content",
        ds(),
        f"{CALLS_BEGIN}{CALL_BEGIN}get_weather{TOOL_SEP}{{'city': 'Paris'}}{CALL_END}{CALLS_END}",
        content=f"{CALL_BEGIN}get_weather{TOOL_SEP}{{'city': 'Paris'}}{CALL_END}",
    ),
    Case(
        "arguments-not-an-object",
        ds(),
        f"{CALLS_BEGIN}{CALL_BEGIN}get_weather{TOOL_SEP}[1, 2]{CALL_END}{CALLS_END}",
        content=f"{CALL_BEGIN}get_weather{TOOL_SEP}[1, 2]{CALL_END}",
    ),
    Case(
        "no-separator",
        ds(),
        f"{CALLS_BEGIN}{CALL_BEGIN}get_weather{CALL_END}{CALLS_END}",
        content=f"{CALL_BEGIN}get_weather{CALL_END}",
    ),
    Case(
        "unterminated-call-at-finish",
        ds(),
        f'ok {CALLS_BEGIN}{CALL_BEGIN}get_weather{TOOL_SEP}{{"city": "Par',
        content=f'ok {CALL_BEGIN}get_weather{TOOL_SEP}{{"city": "Par',
    ),
    Case(
        "dsml-unknown-tool-gives-block-back",
        ds(),
        f'{DSML_BEGIN}<｜DSML｜invoke name="nope"></｜DSML｜invoke>{DSML_END}',
        content=f'{DSML_BEGIN}<｜DSML｜invoke name="nope"></｜DSML｜invoke>{DSML_END}',
    ),
    Case(
        "dsml-bad-json-parameter",
        ds(),
        f'{DSML_BEGIN}<｜DSML｜invoke name="get_time"><｜DSML｜parameter name="tz" string="false">CET'
        f"</｜DSML｜parameter></｜DSML｜invoke>{DSML_END}",
        content=f'{DSML_BEGIN}<｜DSML｜invoke name="get_time"><｜DSML｜parameter name="tz" string="false">CET'
        f"</｜DSML｜parameter></｜DSML｜invoke>{DSML_END}",
    ),
    Case(
        "text-inside-section-is-content",
        ds(),
        f"{CALLS_BEGIN} oops, text {v31('get_time', CET)}{CALLS_END}",
        content="oops, text ",
        calls=(("get_time", CET),),
    ),
    Case(
        "partial-marker-at-end-is-content",
        ds(),
        "The answer <｜tool▁cal",
        content="The answer <｜tool▁cal",
    ),
    Case(
        "lookalike-markers-are-content",
        ds(),
        "Use <|tool_calls_begin|> or <｜tool▁calls｜> freely",
        content="Use <|tool_calls_begin|> or <｜tool▁calls｜> freely",
    ),
    Case(
        "no-tools-offered",
        ds(tools=()),
        f"{CALLS_BEGIN}{v31('get_time', CET)}{CALLS_END}",
        content=v31("get_time", CET),
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
    CALLS_BEGIN,
    CALLS_END,
    CALL_BEGIN,
    CALL_END,
    TOOL_SEP,
    DSML_BEGIN,
    DSML_END,
    "<｜tool▁",
    "<think>",
    "</think>",
    "get_time",
    "function",
    "\n```json\n",
    "```",
    '{"tz": "CET"}',
    "{",
    "}",
    " ",
    "\n",
    "x",
    "é",
]


@settings(max_examples=300, deadline=None)
@given(
    text=fragment_texts(_FRAGMENTS),
    cuts=st.lists(st.integers(0, 500)),
    thinking=st.booleans(),
    prefilled=st.booleans(),
)
def test_random_text_is_chunking_invariant(text: str, cuts: list[int], thinking: bool, prefilled: bool) -> None:
    check_chunking_invariant(Case("random", ds(thinking, prefilled), text), cuts)


def test_content_streams_and_only_a_partial_marker_is_held() -> None:
    p = DeepSeekParser(TOOLS)
    assert p.feed("Let me check") == Delta(content="Let me check")
    assert p.feed(" <｜tool▁") == Delta(content=" ")
    assert p.feed("calls▁begin｜>") == Delta()
    assert p.state is DeepSeekState.SECTION
    assert p.feed(f"{CALL_BEGIN}get_time{TOOL_SEP}{{") == Delta()
    delta = p.feed(f'"tz": "CET"}}{CALL_END}')
    assert summary(delta) == ("", "", (("get_time", dump(CET), 0),))
    assert p.feed(f"{CALLS_END} Bye") == Delta(content="Bye")
    assert p.finish() == Delta()


def test_thinking_streams_before_the_close_tag() -> None:
    p = DeepSeekParser(TOOLS, thinking=True, prefilled=True)
    assert p.feed("\nstep one, ") == Delta(thinking="step one, ")
    assert p.feed("step two</thi") == Delta(thinking="step two")
    assert p.feed("nk>\n\nDone") == Delta(content="Done")


def test_failed_calls_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    out = parse_logged(caplog, "herd.parsing.deepseek", ds(), f"{CALLS_BEGIN}{v31('nope', {})}{CALLS_END}")
    assert out.content == v31("nope", {})
    assert "'nope' was not offered" in caplog.text


def test_ids_are_fresh_and_indexes_count_across_sections() -> None:
    text = f"{CALLS_BEGIN}{v31('get_time', CET)}{CALLS_END} and {CALLS_BEGIN}{r1('get_weather', PARIS)}{CALLS_END}"
    out = parse(ds(), text)
    assert [(c.name, c.index) for c in out.tool_calls] == [("get_time", 0), ("get_weather", 1)]
    assert out.content == "and "
    check_injected_id(partial(DeepSeekParser, TOOLS), v31("get_time", CET))


def test_arguments_keep_key_order() -> None:
    text = f'{CALLS_BEGIN}{CALL_BEGIN}get_weather{TOOL_SEP}{{"z": 1, "a": {{"y": 2, "b": 3}}}}{CALL_END}{CALLS_END}'
    args = parse(ds(), text).tool_calls[0].arguments
    assert list(args) == ["z", "a"]
    inner = args["a"]
    assert isinstance(inner, dict) and list(inner) == ["y", "b"]
