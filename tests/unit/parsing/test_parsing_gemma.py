"""GemmaParser: golden raw outputs of Gemma 4 (native calls, thinking channel) and Gemma 3 (prompted JSON, pythonic
and ```tool_code calls, FunctionGemma), each checked at every chunk boundary.

What this proves: for the outputs below (written from Gemma 4's chat template and Ollama's gemma4 / functiongemma
parsers, and from Google's Gemma 3 function-calling prompts; see herd.parsing.gemma), the parser gives the same
content, thinking and calls whatever the chunking; Gemma 4's `<|"|>` strings keep quotes, commas, braces and
backslashes verbatim; failures come back as content with a warning; random mixtures of markers never raise and never
depend on the chunking.
What it cannot prove: how often a real Gemma 3 follows the prompted format (it has no tool tokens at all), or that a
given Gemma 4 checkpoint writes exactly these bytes. Those need a real model.
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
from herd.parsing.gemma import (
    CALL_CLOSE,
    CALL_OPEN,
    CHANNEL_CLOSE,
    CHANNEL_OPEN,
    STRING_DELIM,
    TOOL_RESPONSE,
    Gemma3Parser,
    Gemma4Parser,
    GemmaParser,
)
from herd.types import ToolDef

TOOLS = (
    WEATHER_TOOL,
    TIME_TOOL,
    ToolDef("edit", "Edit a file", {"type": "object", "properties": {"edits": {"type": "array"}}}),
)
Q = STRING_DELIM  # <|"|>


def gemma(
    version: int = 4, thinking: bool = False, prefilled: bool = False, tools: tuple[ToolDef, ...] = TOOLS
) -> Callable[[], GemmaParser]:
    return lambda: GemmaParser(tools, thinking=thinking, prefilled=prefilled, version=version)


g4 = gemma(4)
g4_think = gemma(4, thinking=True)
g3 = gemma(3)


def c4(name: str, args: str) -> str:
    """A Gemma 4 call with its arguments already in Gemma's notation."""
    return f"{CALL_OPEN}call:{name}{{{args}}}{CALL_CLOSE}"


PARIS4 = c4("get_weather", f"city:{Q}Paris{Q}")

GEMMA4_CASES = [
    Case("g4-plain-content", g4, "This is a simple response.", content="This is a simple response."),
    Case("g4-single-call", g4, PARIS4, calls=(("get_weather", PARIS),)),
    Case(
        "g4-thinking-then-content",
        g4_think,
        f"{CHANNEL_OPEN}thought\nLet me think about this...\n{CHANNEL_CLOSE}\n\nThe answer is 42.",
        content="The answer is 42.",
        thinking="Let me think about this...",
    ),
    Case(
        "g4-thinking-then-call",
        g4_think,
        f"{CHANNEL_OPEN}thought\nI need the weather.\n{CHANNEL_CLOSE}{PARIS4}",
        thinking="I need the weather.",
        calls=(("get_weather", PARIS),),
    ),
    Case(
        "g4-content-then-calls",
        g4,
        f"Let me check that for you.{PARIS4}{c4('get_time', f'tz:{Q}CET{Q}')}",
        content="Let me check that for you.",
        calls=(("get_weather", PARIS), ("get_time", CET)),
    ),
    Case(
        "g4-value-types",
        g4,
        c4("get_weather", "a:42,b:-1.5e2,c:true,d:false,e:null,f:[1,2,[]],g:{},h:" + f'{Q}x{Q},i:"json \\"str\\""'),
        calls=(
            (
                "get_weather",
                {
                    "a": 42,
                    "b": -150.0,
                    "c": True,
                    "d": False,
                    "e": None,
                    "f": [1, 2, []],
                    "g": {},
                    "h": "x",
                    "i": 'json "str"',
                },
            ),
        ),
    ),
    Case(
        "g4-strings-are-verbatim",
        g4,
        c4("get_weather", f'city:{Q}say "hi", then {{x}}: [y]{Q},path:{Q}C:\\users\\bob\\{Q},esc:{Q}a \\"b\\"{Q}'),
        calls=(("get_weather", {"city": 'say "hi", then {x}: [y]', "path": "C:\\users\\bob\\", "esc": 'a \\"b\\"'}),),
    ),
    Case(
        "g4-nested-multiline",
        g4,
        c4(
            "edit",
            f'edits:[\n  {{newText:{Q}# Title\n\nUse "x".\n{Q},\n   oldText:{Q}old\n{Q}}},\n'
            f"  {{newText:{Q}b{Q}, oldText:{Q}{Q}, n:{{deep:[{{k:1}}]}}}}\n]",
        ),
        calls=(
            (
                "edit",
                {
                    "edits": [
                        {"newText": '# Title\n\nUse "x".\n', "oldText": "old\n"},
                        {"newText": "b", "oldText": "", "n": {"deep": [{"k": 1}]}},
                    ]
                },
            ),
        ),
    ),
    Case(
        "g4-quoted-keys-and-spaces",
        g4,
        f'{CALL_OPEN}call: get_time {{ {Q}tz{Q} : {Q}UTC{Q} , "max-n":3 }}{CALL_CLOSE}',
        calls=(("get_time", {"tz": "UTC", "max-n": 3}),),
    ),
    Case("g4-no-arguments", g4, c4("get_time", ""), calls=(("get_time", {}),)),
    Case(
        "g4-post-call-noise-dropped",
        g4,
        f"{PARIS4}{CALL_CLOSE} {TOOL_RESPONSE}\nDone.",
        content="Done.",
        calls=(("get_weather", PARIS),),
    ),
    Case(
        "g4-interleaved-thinking",
        g4_think,
        f"{CHANNEL_OPEN}thought\nfirst{CHANNEL_CLOSE}{PARIS4}{CHANNEL_OPEN}thought\nsecond\n{CHANNEL_CLOSE}Both done.",
        content="Both done.",
        thinking="firstsecond",
        calls=(("get_weather", PARIS),),
    ),
    Case(
        "g4-thinking-off-channel-dropped",
        g4,
        f"{CHANNEL_OPEN}thought\nhidden{CHANNEL_CLOSE}actual content",
        content="actual content",
    ),
    Case(
        "g4-prefilled-after-tool-response",
        gemma(4, thinking=True, prefilled=True),
        f"The user asked for files.{CHANNEL_CLOSE}go.mod and go.sum",
        content="go.mod and go.sum",
        thinking="The user asked for files.",
    ),
    Case(
        "g4-other-channel-name-kept",
        g4_think,
        f"{CHANNEL_OPEN}analysis: x{CHANNEL_CLOSE}y",
        content="y",
        thinking="analysis: x",
    ),
    Case(
        "g4-unterminated-thinking",
        g4_think,
        f"{CHANNEL_OPEN}thought\nstill <chan ",
        thinking="still <chan",
    ),
    Case(
        "g4-unknown-tool-is-content",
        g4,
        f"Sure. {c4('launch', 'n:3')} ok",
        content=f"Sure. {c4('launch', 'n:3')} ok",
    ),
    Case(
        "g4-unterminated-string-is-content",
        g4,
        c4("get_weather", f"city:{Q}Paris"),
        content=c4("get_weather", f"city:{Q}Paris"),
    ),
    Case(
        "g4-bare-string-value-is-content",
        g4,
        c4("get_weather", "city:Paris"),
        content=c4("get_weather", "city:Paris"),
    ),
    Case(
        "g4-no-call-prefix",
        g4,
        f"{CALL_OPEN}get_weather{{}}{CALL_CLOSE}",
        content=f"{CALL_OPEN}get_weather{{}}{CALL_CLOSE}",
    ),
    Case(
        "g4-flush-unclosed-call",
        g4,
        f'{CALL_OPEN}call:get_weather{{city:{Q}say "hi"{Q}}}',
        calls=(("get_weather", {"city": 'say "hi"'}),),
    ),
    Case(
        "g4-incomplete-call-at-finish",
        g4,
        f"ok {CALL_OPEN}call:get_weather{{city:{Q}Par",
        content=f"ok {CALL_OPEN}call:get_weather{{city:{Q}Par",
    ),
    Case("g4-partial-marker-at-end", g4, "The end <|tool_", content="The end <|tool_"),
    Case(
        "g4-no-tools-offered",
        gemma(4, tools=()),
        PARIS4,
        content=PARIS4,
    ),
]

FUNCTIONGEMMA_CALL = (
    "<start_function_call>call:get_weather{city:<escape>New York, NY<escape>,days:2}<end_function_call>"
)

GEMMA3_CASES = [
    Case("g3-plain-content", g3, "Hello! How can I help?", content="Hello! How can I help?"),
    Case(
        "g3-json-parameters",
        g3,
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        calls=(("get_weather", PARIS),),
    ),
    Case(
        "g3-json-arguments-leading-whitespace",
        g3,
        '\n {"name": "get_time", "arguments": {"tz": "CET"}}\n',
        content="\n ",
        calls=(("get_time", CET),),
    ),
    Case(
        "g3-json-list",
        g3,
        '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_time", "parameters": {"tz": "CET"}}]',
        calls=(("get_weather", PARIS), ("get_time", CET)),
    ),
    Case(
        "g3-two-json-objects",
        g3,
        '{"name": "get_weather", "parameters": {"city": "Paris"}}\n{"name": "get_time", "parameters": {"tz": "CET"}}',
        calls=(("get_weather", PARIS), ("get_time", CET)),
    ),
    Case(
        "g3-json-then-text",
        g3,
        '{"name": "get_time", "parameters": {"tz": "CET"}}\n\nI called it.',
        content="I called it.",
        calls=(("get_time", CET),),
    ),
    Case(
        "g3-pythonic-list",
        g3,
        "[get_weather(city='Paris'), get_time(tz=\"CET\")]",
        calls=(("get_weather", PARIS), ("get_time", CET)),
    ),
    Case(
        "g3-pythonic-literals",
        g3,
        "[edit(edits=[{'a': (1, -2.5)}, {'b': None, 'c': True}], n=null, m=false, s='it\\'s ]')]",
        calls=(("edit", {"edits": [{"a": [1, -2.5]}, {"b": None, "c": True}], "n": None, "m": False, "s": "it's ]"}),),
    ),
    Case(
        "g3-tool-code-print",
        g3,
        'I will look it up.\n```tool_code\nprint(get_weather(city="Paris"))\n```\nOne moment.',
        content="I will look it up.\nOne moment.",
        calls=(("get_weather", PARIS),),
    ),
    Case(
        "g3-tool-code-several-lines",
        g3,
        '```tool_code\nget_weather(city="Paris")\nget_time(tz="CET")\n```',
        calls=(("get_weather", PARIS), ("get_time", CET)),
    ),
    Case(
        "g3-json-fence",
        g3,
        'Calling:\n```json\n{\n  "name": "get_weather",\n  "parameters": {"city": "Paris"}\n}\n```',
        content="Calling:\n",
        calls=(("get_weather", PARIS),),
    ),
    Case(
        "g3-json-fence-not-a-call",
        g3,
        'Example:\n```json\n{"city": "Paris"}\n```\nand ```python\nprint(1)\n```',
        content='Example:\n```json\n{"city": "Paris"}\n```\nand ```python\nprint(1)\n```',
    ),
    Case(
        "g3-functiongemma",
        g3,
        f"{FUNCTIONGEMMA_CALL}<start_function_call>call:get_time{{}}<end_function_call>",
        calls=(("get_weather", {"city": "New York, NY", "days": 2}), ("get_time", {})),
    ),
    Case(
        "g3-leading-json-not-a-call",
        g3,
        '{"answer": 42} is the JSON.',
        content='{"answer": 42} is the JSON.',
    ),
    Case(
        "g3-leading-list-not-a-call",
        g3,
        "[1, 2, 3] and [x] too",
        content="[1, 2, 3] and [x] too",
    ),
    Case(
        "g3-json-not-first-is-content",
        g3,
        'The call is {"name": "get_time", "parameters": {}}',
        content='The call is {"name": "get_time", "parameters": {}}',
    ),
    Case(
        "g3-unknown-tool-json",
        g3,
        '{"name": "launch", "parameters": {}}',
        content='{"name": "launch", "parameters": {}}',
    ),
    Case(
        "g3-list-with-unknown-given-back-whole",
        g3,
        '[get_time(tz="CET"), launch(n=1)]',
        content='[get_time(tz="CET"), launch(n=1)]',
    ),
    Case(
        "g3-tool-code-positional",
        g3,
        '```tool_code\nget_weather("Paris")\n```',
        content='```tool_code\nget_weather("Paris")\n```',
    ),
    Case(
        "g3-tool-code-not-python",
        g3,
        "```tool_code\nlook up the weather\n```",
        content="```tool_code\nlook up the weather\n```",
    ),
    Case(
        "g3-tool-code-expression-argument",
        g3,
        "```tool_code\nget_time(tz=os.environ['TZ'])\n```",
        content="```tool_code\nget_time(tz=os.environ['TZ'])\n```",
    ),
    Case(
        "g3-unterminated-fence",
        g3,
        '```tool_code\nget_time(tz="CET")',
        content='```tool_code\nget_time(tz="CET")',
    ),
    Case(
        "g3-incomplete-leading-json",
        g3,
        '{"name": "get_time", "parameters": {"tz": "C',
        content='{"name": "get_time", "parameters": {"tz": "C',
    ),
    Case("g3-partial-fence-at-end", g3, "Here: ```tool_co", content="Here: ```tool_co"),
    Case(
        "g3-no-tools-offered",
        gemma(3, tools=()),
        '{"name": "get_time", "parameters": {}}',
        content='{"name": "get_time", "parameters": {}}',
    ),
]

CASES = GEMMA4_CASES + GEMMA3_CASES
# Ollama's behaviour: a Gemma 4 call left open when the output ends is parsed at finish.
_CALLS_AT_FINISH = {"g4-flush-unclosed-call"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_golden_at_every_chunk_boundary(case: Case) -> None:
    check_case_all_chunkings(case)


@pytest.mark.parametrize("case", [c for c in CASES if c.calls and c.id not in _CALLS_AT_FINISH], ids=lambda c: c.id)
def test_calls_arrive_before_finish_and_without_content_after_them(case: Case) -> None:
    check_calls_stream(case)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_chunkings_agree(data: st.DataObject) -> None:
    check_random_chunking(data, CASES)


_FRAGMENTS_4 = [
    CHANNEL_OPEN,
    CHANNEL_CLOSE,
    "thought\n",
    CALL_OPEN,
    CALL_CLOSE,
    TOOL_RESPONSE,
    "call:get_time",
    "{",
    "}",
    Q,
    "tz:",
    ",",
    "[",
    "]",
    "<|",
    " ",
    "\n",
    "x",
    "é",
]

_FRAGMENTS_3 = [
    "```tool_code\n",
    "```json\n",
    "```",
    "`",
    "<start_function_call>",
    "<end_function_call>",
    "call:get_time{}",
    'get_time(tz="CET")',
    '{"name": "get_time", "parameters": {}}',
    "print(",
    ")",
    "{",
    "}",
    "[",
    "]",
    '"',
    "'",
    "\\",
    " ",
    "\n",
    "x",
]


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    cuts=st.lists(st.integers(0, 500)),
    version=st.sampled_from([3, 4]),
    thinking=st.booleans(),
    prefilled=st.booleans(),
)
def test_random_text_is_chunking_invariant(
    data: st.DataObject, cuts: list[int], version: int, thinking: bool, prefilled: bool
) -> None:
    text = data.draw(fragment_texts(_FRAGMENTS_4 if version == 4 else _FRAGMENTS_3), label="text")
    check_chunking_invariant(Case("random", gemma(version, thinking, prefilled), text), cuts)


def test_gemma4_content_streams_and_partial_markers_are_held() -> None:
    p = Gemma4Parser(TOOLS, thinking=True)
    assert p.feed("<|chan") == Delta()
    assert p.feed("nel>thought") == Delta()
    assert p.feed("\nthinking here ") == Delta(thinking="thinking here")
    assert p.feed("<chan") == Delta()
    assert p.feed("nel|>Let me check <|tool_") == Delta(content="Let me check ")
    assert p.feed(f"call>call:get_weather{{city:{Q}Par") == Delta()
    delta = p.feed(f"is{Q}}}{CALL_CLOSE}")
    assert summary(delta) == ("", "", (("get_weather", dump(PARIS), 0),))
    assert p.feed("<tool_") == Delta()  # a stray close marker may be arriving
    assert p.feed("call|> Done.") == Delta(content="Done.")


def test_gemma3_text_streams_and_a_leading_bracket_waits() -> None:
    p = Gemma3Parser(TOOLS)
    assert p.feed('{"name": "get_time", ') == Delta()
    delta = p.feed('"parameters": {"tz": "CET"}}')
    assert summary(delta) == ("", "", (("get_time", dump(CET), 0),))
    assert p.feed(" Now text ``") == Delta(content="Now text ")
    assert p.feed("` more") == Delta(content="``` more")


def test_failed_calls_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    out4 = parse_logged(caplog, "herd.parsing.gemma", g4, c4("nope", ""))
    out3 = parse_logged(caplog, "herd.parsing.gemma", g3, "```tool_code\nnope(a=1)\n```")
    assert out4.content == c4("nope", "")
    assert out3.content == "```tool_code\nnope(a=1)\n```"
    assert caplog.text.count("'nope' was not offered") == 2


def test_ordinary_json_fence_is_not_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    parse_logged(caplog, "herd.parsing.gemma", g3, '```json\n{"a": 1}\n```')
    assert caplog.text == ""


def test_version_selects_the_implementation() -> None:
    assert isinstance(GemmaParser(TOOLS)._impl, Gemma4Parser)
    assert isinstance(GemmaParser(TOOLS, version=3)._impl, Gemma3Parser)
    with pytest.raises(ValueError):
        GemmaParser(TOOLS, version=5)


def test_ids_and_key_order() -> None:
    text = c4("get_weather", "z:1,a:{y:2,b:3}") + c4("get_time", "")
    out = parse(g4, text)
    args = out.tool_calls[0].arguments
    assert list(args) == ["z", "a"]
    inner = args["a"]
    assert isinstance(inner, dict) and list(inner) == ["y", "b"]
    assert [c.index for c in out.tool_calls] == [0, 1]
    assert len({c.id for c in out.tool_calls}) == 2
    check_injected_id(partial(GemmaParser, TOOLS, version=3), json.dumps({"name": "get_time"}))
