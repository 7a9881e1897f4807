"""GlmParser: golden raw outputs in the GLM-4.5/4.6 (newline-separated) and GLM-4.7 (compact) call formats, each
checked at every chunk boundary and char by char, plus the tag repairs and the streaming shape of the deltas.

What this proves: for these texts the parser gives the expected content, thinking and calls whatever the chunking;
failed or unknown calls come back as content byte for byte; truncated output becomes a call only when nothing but
`</tool_call>` is missing. What it cannot prove: that real GLM models write only these shapes. The goldens follow
the chat templates and the tag slips Ollama's parser repairs, not captured model output; no model runs here.
"""

from __future__ import annotations

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
from herd.parsing.glm import GlmParser
from herd.types import ToolDef

TOOLS = [
    tool("get_weather", {"city": {"type": "string"}, "days": {"type": "integer"}}, required=("city",)),
    tool("get_time", {"tz": {"type": "string"}}),
    tool("grep", {"pattern": {"type": "string"}, "path": {"type": "string"}}, required=("pattern", "path")),
    tool(
        "configure",
        {
            "ratio": {"type": "number"},
            "count": {"type": "integer"},
            "verbose": {"type": "boolean"},
            "tags": {"type": "array"},
            "options": {"type": "object"},
            "todos": {"anyOf": [{"type": "array"}, {"type": "string"}]},
            "note": {"type": "string"},
        },
    ),
]


def glm(thinking: bool = False, prefilled: bool = False, tools: list[ToolDef] = TOOLS) -> Callable[[], GlmParser]:
    return lambda: GlmParser(tools, thinking=thinking, prefilled=prefilled)


def call46(name: str, *args: tuple[str, str]) -> str:
    """A call as the GLM-4.5/4.6 templates render one."""
    pairs = "".join(f"\n<arg_key>{k}</arg_key>\n<arg_value>{v}</arg_value>" for k, v in args)
    return f"<tool_call>{name}{pairs}\n</tool_call>"


def call47(name: str, *args: tuple[str, str]) -> str:
    """A call as GLM-4.7 renders one: no newlines."""
    pairs = "".join(f"<arg_key>{k}</arg_key><arg_value>{v}</arg_value>" for k, v in args)
    return f"<tool_call>{name}{pairs}</tool_call>"


WEATHER = call46("get_weather", ("city", "Paris"), ("days", "3"))
TIME = call46("get_time", ("tz", "CET"))
WEATHER_ARGS = {"city": "Paris", "days": 3}
GREP_BODY = (
    "grep\n<arg_key>pattern</arg_key>\n<arg_value>needle</arg_value>\n<arg_key>path</arg_key>\n<arg_value>.</arg_value>"
)

CASES = [
    Case("single-call-glm46", glm(), WEATHER, calls=(("get_weather", WEATHER_ARGS),)),
    Case(
        "single-call-glm47-compact",
        glm(),
        call47("get_weather", ("city", "Paris"), ("days", "3")),
        calls=(("get_weather", WEATHER_ARGS),),
    ),
    Case(
        "several-calls-with-text-around",
        glm(),
        f"I'll look both up.\n{WEATHER}\n{TIME}\nDone.",
        content="I'll look both up.Done.",  # whitespace around calls is dropped, as in Ollama
        calls=(("get_weather", WEATHER_ARGS), ("get_time", {"tz": "CET"})),
    ),
    Case(
        "text-between-calls",
        glm(),
        f"{WEATHER} then {TIME}",
        content="then",
        calls=(("get_weather", WEATHER_ARGS), ("get_time", {"tz": "CET"})),
    ),
    Case("no-call-plain-text", glm(), "Plain answer.\n\n", content="Plain answer.\n\n"),
    Case(
        "multi-line-string-value",
        glm(),
        call46("configure", ("note", "line1\n\tindented line2\n\nline4")),
        calls=(("configure", {"note": "line1\n\tindented line2\n\nline4"}),),
    ),
    Case(
        "nested-object-and-array-values",
        glm(),
        call46(
            "configure",
            ("tags", '[1, "hello", true, null]'),
            ("options", '{"a": {"b": [1, {"c": "d"}]}, "z": 0}'),
            ("todos", '[{"content": "task 1", "status": "pending"}]'),
        ),
        calls=(
            (
                "configure",
                {
                    "tags": [1, "hello", True, None],
                    "options": {"a": {"b": [1, {"c": "d"}]}, "z": 0},
                    "todos": [{"content": "task 1", "status": "pending"}],
                },
            ),
        ),
    ),
    Case(
        "typed-values",
        glm(),
        call47(
            "configure",
            ("ratio", "3.14"),
            ("count", "42"),
            ("verbose", "false"),
            ("note", "42"),
            ("todos", "Error: could not load todos"),
            ("extra", "7"),
        ),
        calls=(
            (
                "configure",
                {
                    "ratio": 3.14,
                    "count": 42,
                    "verbose": False,
                    "note": "42",
                    "todos": "Error: could not load todos",
                    "extra": "7",
                },
            ),
        ),
    ),
    Case(
        "special-characters-and-entities-stay-raw",
        glm(),
        call46("configure", ("note", 'ls && echo "done" <>&<> &lt;&amp; <![CDATA[x]]>')),
        calls=(("configure", {"note": 'ls && echo "done" <>&<> &lt;&amp; <![CDATA[x]]>'}),),
    ),
    Case(
        "unicode",
        glm(tools=[*TOOLS, tool("获取天气", {"城市": {"type": "string"}})]),
        "好的。" + call46("获取天气", ("城市", "北京 🌟")),
        content="好的。",
        calls=(("获取天气", {"城市": "北京 🌟"}),),
    ),
    Case("call-without-arguments", glm(), "<tool_call>get_time</tool_call>", calls=(("get_time", {}),)),
    Case(
        "whitespace-around-name-and-keys-is-stripped",
        glm(),
        "<tool_call>\n  get_weather \n<arg_key> city </arg_key>\n\n<arg_value>Rome</arg_value>\n\n</tool_call>",
        calls=(("get_weather", {"city": "Rome"}),),
    ),
    Case(
        "empty-value",
        glm(),
        call47("get_time", ("tz", "")),
        calls=(("get_time", {"tz": ""}),),
    ),
    Case(
        "repeated-key-last-wins",
        glm(),
        call47("get_time", ("tz", "A"), ("other", "m"), ("tz", "B")),
        calls=(("get_time", {"tz": "B", "other": "m"}),),
    ),
    # --- tag repairs inside a closed call (Ollama's repairGLM46XML cases) -----------------------------------
    Case(
        "repair-missing-value-close-before-next-key",
        glm(),
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris<arg_key>days</arg_key>\n"
        "<arg_value>2</arg_value>\n</tool_call>",
        calls=(("get_weather", {"city": "Paris", "days": 2}),),
    ),
    Case(
        "repair-missing-value-close-at-end",
        glm(),
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris\n</tool_call>",
        calls=(("get_weather", {"city": "Paris"}),),
    ),
    Case(
        "repair-missing-value-open",
        glm(),
        "<tool_call>get_weather\n<arg_key>city</arg_key>\nNew York</arg_value>\n<arg_key>days</arg_key>\n1</arg_value>"
        "</tool_call>",
        calls=(("get_weather", {"city": "New York", "days": 1}),),
    ),
    Case(
        "repair-missing-key-close",
        glm(),
        "<tool_call>get_weather<arg_key>city<arg_value>Lima</arg_value></tool_call>",
        calls=(("get_weather", {"city": "Lima"}),),
    ),
    Case(
        "repair-missing-key-open-first-argument",
        glm(),
        "<tool_call>get_weather city</arg_key><arg_value>Lima</arg_value></tool_call>",
        calls=(("get_weather", {"city": "Lima"}),),
    ),
    Case(
        "repair-missing-key-open-later-argument",
        glm(),
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Lima</arg_value>\ndays</arg_key><arg_value>4"
        "</arg_value></tool_call>",
        calls=(("get_weather", {"city": "Lima", "days": 4}),),
    ),
    # --- thinking ---------------------------------------------------------------------------------------------
    Case(
        "thinking-then-call-glm45",
        glm(thinking=True),
        f"\n<think>The user wants the weather.</think>\nChecking.\n{WEATHER}",
        thinking="The user wants the weather.",
        content="Checking.",
        calls=(("get_weather", WEATHER_ARGS),),
    ),
    Case(
        "prefilled-thinking-glm47",
        glm(thinking=True, prefilled=True),
        "I need the time.</think>" + call47("get_time", ("tz", "UTC")),
        thinking="I need the time.",
        calls=(("get_time", {"tz": "UTC"}),),
    ),
    Case(
        "call-inside-thinking-is-thinking",
        glm(thinking=True, prefilled=True),
        f"maybe {TIME}</think>No call.",
        thinking=f"maybe {TIME}",
        content="No call.",
    ),
    Case(
        "thinking-off-empty-think-block-is-content",
        glm(),
        "<think></think>Hi",
        content="<think></think>Hi",
    ),
    # --- failures become content ----------------------------------------------------------------------------
    Case(
        "unknown-tool-is-content",
        glm(),
        "Sure.\n" + call46("shell", ("command", "rm -rf /")) + " ok",
        content="Sure.\n" + call46("shell", ("command", "rm -rf /")) + " ok",
    ),
    Case(
        "unknown-then-known",
        glm(),
        call47("nope") + TIME,
        content=call47("nope"),
        calls=(("get_time", {"tz": "CET"}),),
    ),
    Case(
        "malformed-key-without-value",
        glm(),
        "<tool_call>get_weather<arg_key>city</arg_key></tool_call>",
        content="<tool_call>get_weather<arg_key>city</arg_key></tool_call>",
    ),
    Case(
        "malformed-stray-text-between-arguments",
        glm(),
        "<tool_call>get_time<arg_key>tz</arg_key><arg_value>A</arg_value> and also <arg_key>x</arg_key>"
        "<arg_value>1</arg_value></tool_call>",
        content="<tool_call>get_time<arg_key>tz</arg_key><arg_value>A</arg_value> and also <arg_key>x</arg_key>"
        "<arg_value>1</arg_value></tool_call>",
    ),
    Case(
        "malformed-empty-name",
        glm(),
        "<tool_call>\n<arg_key>tz</arg_key><arg_value>A</arg_value></tool_call>",
        content="<tool_call>\n<arg_key>tz</arg_key><arg_value>A</arg_value></tool_call>",
    ),
    Case(
        "malformed-value-before-key",
        glm(),
        "<tool_call>get_time<arg_value>A</arg_value></tool_call>",
        content="<tool_call>get_time<arg_value>A</arg_value></tool_call>",
    ),
    Case("no-tools-offered", glm(tools=[]), TIME, content=TIME),
    Case("partial-tag-fakeout", glm(), "a <tool_cal> b <tool_", content="a <tool_cal> b <tool_"),
    # --- truncated output (Ollama's finalize-on-done cases) --------------------------------------------------
    Case(
        "truncated-complete-body-is-a-call",
        glm(),
        "<tool_call>" + GREP_BODY,
        calls=(("grep", {"pattern": "needle", "path": "."}),),
    ),
    Case(
        "truncated-partial-outer-close-is-a-call",
        glm(),
        "<tool_call>" + GREP_BODY + "\n</tool_",
        calls=(("grep", {"pattern": "needle", "path": "."}),),
    ),
    Case("truncated-empty-body", glm(), "<tool_call>", content="<tool_call>"),
    Case(
        "truncated-no-arguments-call",
        glm(),
        "Time: <tool_call>get_time",
        content="Time:",
        calls=(("get_time", {}),),
    ),
    Case("truncated-partial-name", glm(), "<tool_call>gr", content="<tool_call>gr"),
    Case(
        "truncated-inside-value-is-content",
        glm(),
        "<tool_call>grep\n<arg_key>pattern</arg_key>\n<arg_value>nee",
        content="<tool_call>grep\n<arg_key>pattern</arg_key>\n<arg_value>nee",
    ),
    Case(
        "truncated-missing-required-is-content",
        glm(),
        "<tool_call>grep\n<arg_key>pattern</arg_key>\n<arg_value>needle</arg_value>",
        content="<tool_call>grep\n<arg_key>pattern</arg_key>\n<arg_value>needle</arg_value>",
    ),
    Case(
        "truncated-undeclared-tool-is-content",
        glm(),
        "<tool_call>shell\n<arg_key>command</arg_key>\n<arg_value>echo unsafe</arg_value>",
        content="<tool_call>shell\n<arg_key>command</arg_key>\n<arg_value>echo unsafe</arg_value>",
    ),
    Case(
        "truncated-in-thinking",
        glm(thinking=True, prefilled=True),
        "hmm </thi",
        thinking="hmm </thi",
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
    "get_time",
    "nope",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
    "tz",
    "<think>",
    "</think>",
    TIME,
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
    whole = check_chunking_invariant(Case("random", glm(*mode), text), cuts)
    if mode == (False, False) and not whole[2]:
        assert whole[0] == text  # without thinking and without a parsed call, every character is content


def test_content_and_thinking_stream_before_the_call() -> None:
    p = GlmParser(TOOLS, thinking=True, prefilled=True)
    assert p.feed("Plan") == Delta(thinking="Plan")
    assert p.feed(".</think>Calling ") == Delta(thinking=".", content="Calling")
    assert p.feed("now.<tool_call>get_time<arg_key>tz</arg_key>") == Delta(content=" now.")
    assert p.feed("<arg_value>UTC</arg_value></tool_") == Delta()
    assert summary(p.feed("call>")) == ("", "", (("get_time", dump({"tz": "UTC"}), 0),))
    assert p.finish() == Delta()


def test_failures_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    out = parse_logged(
        caplog, "herd.parsing.glm", glm(), call47("shell", ("command", "x")), "<tool_call>grep<arg_key>pattern</arg_key>"
    )
    assert out.content == call47("shell", ("command", "x")) + "<tool_call>grep<arg_key>pattern</arg_key>"
    messages = [r.getMessage() for r in caplog.records]
    assert any("glm tool call returned as content" in m and "'shell' was not offered" in m for m in messages)
    assert any("glm unfinished call at end of output" in m for m in messages)


def test_arguments_keep_the_order_the_model_wrote() -> None:
    out = parse(glm(), call47("configure", ("note", "n"), ("count", "1"), ("ratio", "1.5")))
    assert list(out.tool_calls[0].arguments) == ["note", "count", "ratio"]
