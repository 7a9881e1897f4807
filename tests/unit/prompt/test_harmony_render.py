"""render_harmony (gpt-oss's Harmony prompt): known conversations -> the exact expected prompt text.

What it proves: the system message (identity, cutoff, date, `Reasoning:` present or left out, the channels line and
the functions line), the developer message (`# Instructions` from system and developer messages, `# Tools` with
TypeScript-like declarations: comments, `?` for optional fields, enum unions, defaults, arrays, nested objects,
nullable, tools without parameters, names rewritten into identifiers), the built-in browser and python sections,
and the turns (thinking kept only after the last user message, preambles, one message per tool call, tool results
named by tool_name, by call id or by position); and that a rendered call parses back through HarmonyParser.

What the expected text was checked against: the system message, developer message, tool declarations and
built-in sections were compared byte for byte, in a scratch script outside the repository, with the golden
renderings shipped in the openai/harmony repository (`test-data/*.txt`: render_functions_with_parameters, including
its oneOf/title/examples/nullable "kitchensink" tool, browser_and_function_tool, browser_and_python_tool,
browser_tool_only, no_tools), all identical; a whole tool-calling conversation was compared with the complete
example in the Harmony guide (docs/format.md), identical but for a stray vertical tab in the guide. The turns
were also compared with the official gpt-oss Jinja template's message loop: same choice of which thinking to drop;
it differs, on purpose, in writing `to=` before the channel, spaces in the arguments JSON and JSON-quoting tool
results (see the renderer's docstring). The `openai-harmony` package itself could not be used: it downloads its
o200k vocabulary on first use and fails offline.

What it cannot prove: that gpt-oss answers well to these prompts; only a run with the real model shows that.
"""

from __future__ import annotations

from herd.parsing.harmony import HarmonyParser
from herd.parsing.pipeline import parse_all
from herd.prompt.builder import leave_last_assistant_open
from herd.prompt.harmony import render_harmony, schema_to_typescript
from herd.types import Message, ToolCallIn, ToolDef

DATE = "2025-08-05"
SYSTEM_HEAD = (
    "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\n"
    f"Current date: {DATE}\n\n"
)
CHANNELS = "# Valid channels: analysis, commentary, final. Channel must be included for every message."
FUNCTIONS = "Calls to these tools must go to the commentary channel: 'functions'."

WEATHER = ToolDef(
    "get_weather",
    "Current weather for a city.",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name, e.g. Paris"},
            "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
            "days": {"type": "integer", "description": "How many days\nof forecast", "default": 1},
        },
        "required": ["city"],
    },
)
SEARCH = ToolDef(
    "search-docs",
    "Searches the docs.",
    {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "filters": {
                "type": "object",
                "properties": {"lang": {"type": "string"}, "year": {"type": "number"}},
                "required": ["lang"],
            },
            "limit": {"type": ["integer", "null"], "default": None},
            "cursor": {"type": "string", "nullable": True, "default": "start"},
        },
        "required": ["query"],
    },
)
PING = ToolDef("ping", "", {"type": "object", "properties": {}})

TOOLS_NAMESPACE = """# Tools

## functions

namespace functions {

// Current weather for a city.
type get_weather = (_: {
// City name, e.g. Paris
city: string,
unit?: "c" | "f", // default: c
// How many days
// of forecast
days?: number, // default: 1
}) => any;

// Searches the docs.
type search_docs = (_: {
query: string,
tags?: string[],
filters?: {
    lang: string,
    year?: number,
    },
limit?: number | null, // default: null
cursor?: string | null, // default: "start"
}) => any;

type ping = () => any;

} // namespace functions"""


def test_plain_conversation() -> None:
    got = render_harmony([Message("user", "What is 2 + 2?")], [], "medium", date=DATE)
    assert got == (
        SYSTEM_HEAD + "Reasoning: medium\n\n" + CHANNELS + "<|end|>"
        "<|start|>user<|message|>What is 2 + 2?<|end|><|start|>assistant"
    )


def test_no_reasoning_line_when_none_or_empty() -> None:
    for reasoning in (None, ""):
        got = render_harmony([Message("user", "hi")], [], reasoning, date=DATE)
        assert got == SYSTEM_HEAD + CHANNELS + "<|end|><|start|>user<|message|>hi<|end|><|start|>assistant"


def test_instructions_from_system_and_developer_messages() -> None:
    msgs = [
        Message("system", "Be brief."),
        Message("user", "Hello"),
        Message("developer", "Answer in French."),
    ]
    got = render_harmony(msgs, [], "low", date=DATE)
    assert got == (
        SYSTEM_HEAD + "Reasoning: low\n\n" + CHANNELS + "<|end|>"
        "<|start|>developer<|message|># Instructions\n\nBe brief.\n\nAnswer in French.<|end|>"
        "<|start|>user<|message|>Hello<|end|><|start|>assistant"
    )


def test_tool_declarations() -> None:
    got = render_harmony(
        [Message("system", "Use tools."), Message("user", "Weather in Paris?")],
        [WEATHER, SEARCH, PING],
        "high",
        date=DATE,
    )
    assert got == (
        SYSTEM_HEAD + "Reasoning: high\n\n" + CHANNELS + "\n" + FUNCTIONS + "<|end|>"
        "<|start|>developer<|message|># Instructions\n\nUse tools.\n\n" + TOOLS_NAMESPACE + "<|end|>"
        "<|start|>user<|message|>Weather in Paris?<|end|><|start|>assistant"
    )


def test_tools_without_instructions() -> None:
    got = render_harmony([Message("user", "ping it")], [PING], "medium", date=DATE)
    assert got == (
        SYSTEM_HEAD + "Reasoning: medium\n\n" + CHANNELS + "\n" + FUNCTIONS + "<|end|>"
        "<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {\n\n"
        "type ping = () => any;\n\n} // namespace functions<|end|>"
        "<|start|>user<|message|>ping it<|end|><|start|>assistant"
    )


def test_tool_calling_chain_keeps_its_thinking() -> None:
    msgs = [
        Message("user", "Weather in Paris and the time in Tokyo?"),
        Message(
            "assistant",
            thinking="Need both tools.",
            tool_calls=(
                ToolCallIn("get_weather", {"city": "Paris"}, 0, "call_aaaaaaaa"),
                ToolCallIn("search-docs", {"query": "tokyo time", "filters": {"lang": "en"}}, 1, "call_bbbbbbbb"),
            ),
        ),
        Message("tool", "sunny, 21°C", tool_name="get_weather"),
        Message("tool", '{"result": "JST"}', tool_call_id="call_bbbbbbbb"),
    ]
    got = render_harmony(msgs, [WEATHER, SEARCH], "medium", date=DATE)
    turns = got[got.index("<|start|>user") :]
    assert turns == (
        "<|start|>user<|message|>Weather in Paris and the time in Tokyo?<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>Need both tools.<|end|>"
        '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}'
        "<|call|>"
        "<|start|>assistant<|channel|>commentary to=functions.search_docs <|constrain|>json<|message|>"
        '{"query":"tokyo time","filters":{"lang":"en"}}<|call|>'
        "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>sunny, 21°C<|end|>"
        '<|start|>functions.search_docs to=assistant<|channel|>commentary<|message|>{"result": "JST"}<|end|>'
        "<|start|>assistant"
    )


def test_tool_result_without_name_or_id_takes_the_next_unanswered_call() -> None:
    msgs = [
        Message("user", "go"),
        Message("assistant", tool_calls=(ToolCallIn("get_weather", {"city": "A"}), ToolCallIn("ping", {}))),
        Message("tool", "r1"),
        Message("tool", "r2"),
    ]
    got = render_harmony(msgs, [WEATHER, PING], "medium", date=DATE)
    assert got.endswith(
        "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>r1<|end|>"
        "<|start|>functions.ping to=assistant<|channel|>commentary<|message|>r2<|end|><|start|>assistant"
    )


def test_finished_turns_lose_their_thinking() -> None:
    msgs = [
        Message("user", "What is 2 + 2?"),
        Message("assistant", "4", thinking="Simple arithmetic."),
        Message("user", "And 9 / 2?"),
        Message("assistant", tool_calls=(ToolCallIn("ping", {}),), thinking="old chain"),
        Message("tool", "pong", tool_name="ping"),
        Message("assistant", "4.5", thinking="Half of nine."),
        Message("user", "Thanks"),
    ]
    got = render_harmony(msgs, [PING], "medium", date=DATE)
    turns = got[got.index("<|start|>user") :]
    assert turns == (
        "<|start|>user<|message|>What is 2 + 2?<|end|>"
        "<|start|>assistant<|channel|>final<|message|>4<|end|>"
        "<|start|>user<|message|>And 9 / 2?<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.ping <|constrain|>json<|message|>{}<|call|>"
        "<|start|>functions.ping to=assistant<|channel|>commentary<|message|>pong<|end|>"
        "<|start|>assistant<|channel|>final<|message|>4.5<|end|>"
        "<|start|>user<|message|>Thanks<|end|><|start|>assistant"
    )
    assert "Simple arithmetic." not in got and "old chain" not in got and "Half of nine." not in got


def test_content_with_tool_calls_is_a_preamble() -> None:
    msgs = [
        Message("user", "plan"),
        Message("assistant", "First the weather.", tool_calls=(ToolCallIn("get_weather", {"city": "Oslo"}),)),
    ]
    got = render_harmony(msgs, [WEATHER], "medium", date=DATE)
    assert got.endswith(
        "<|start|>user<|message|>plan<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>First the weather.<|end|>"
        '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Oslo"}'
        "<|call|><|start|>assistant"
    )


def test_trailing_assistant_message_can_be_left_open() -> None:
    msgs = [Message("user", "Write a haiku"), Message("assistant", "Autumn moonlight", thinking="A haiku.")]
    text = leave_last_assistant_open(render_harmony(msgs, [], "medium", date=DATE), msgs)
    assert text.endswith(
        "<|start|>user<|message|>Write a haiku<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>A haiku.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Autumn moonlight"
    )


def test_builtin_tools() -> None:
    got = render_harmony([Message("user", "look it up")], [WEATHER], "medium", date=DATE,
                         builtin_tools=("browser", "python"))
    system = got[: got.index("<|end|>")]
    assert "\n\n# Tools\n\n## browser\n\n// Tool for browsing.\n" in system
    assert "type search = (_: {\nquery: string,\ntopn?: number, // default: 10\nsource?: string,\n}) => any;" in system
    assert "id?: number | string, // default: -1\n" in system
    assert "} // namespace browser\n\n## python\n\nUse this tool to execute Python code" in system
    assert system.endswith("Depends on the cluster.\n\n" + CHANNELS + "\n" + FUNCTIONS)
    assert "<|start|>developer<|message|># Tools\n\n## functions" in got


def test_builtin_tools_named_in_tools_stay_out_of_functions() -> None:
    search = ToolDef("browser.search", "web search", {"type": "object", "properties": {"query": {"type": "string"}}})
    msgs = [
        Message("user", "search"),
        Message("assistant", tool_calls=(ToolCallIn("browser.search", {"query": "gpt-oss"}),)),
        Message("tool", "results", tool_name="browser.search"),
    ]
    got = render_harmony(msgs, [search], "medium", date=DATE)
    system = got[: got.index("<|end|>")]
    assert "type search = " in system and "type open = " not in system and "type find = " not in system
    assert FUNCTIONS not in system and "<|start|>developer" not in got  # no function tools left
    assert got.endswith(
        '<|start|>assistant<|channel|>analysis to=browser.search <|constrain|>json<|message|>{"query":"gpt-oss"}'
        "<|call|><|start|>browser.search to=assistant<|channel|>commentary<|message|>results<|end|>"
        "<|start|>assistant"
    )


def test_rendered_calls_parse_back() -> None:
    calls = (
        ToolCallIn("get_weather", {"city": "Zürich", "unit": "c", "nested": {"a": [1, {"b": None}]}}),
        ToolCallIn("search-docs", {"query": "x"}),
    )
    msgs = [Message("user", "go"), Message("assistant", "preamble", thinking="why", tool_calls=calls)]
    got = render_harmony(msgs, [WEATHER, SEARCH], "medium", date=DATE)
    # What the model would have written after the prompt's <|start|>assistant for that assistant message.
    generated = got[got.index("<|start|>assistant<|channel|>analysis") + len("<|start|>assistant") :]
    generated = generated.removesuffix("<|start|>assistant")
    delta = parse_all(HarmonyParser([WEATHER, SEARCH]), [generated])
    assert delta.thinking == "why"
    assert delta.content == "preamble"
    assert [(c.name, c.arguments) for c in delta.tool_calls] == [(c.name, c.arguments) for c in calls]


def test_schema_shapes() -> None:
    assert schema_to_typescript({"type": "array"}) == "Array<any>"
    assert schema_to_typescript({"type": "array", "items": {"type": "integer"}}) == "number[]"
    assert schema_to_typescript({"anyOf": [{"type": "string"}]}) == "any"
    assert schema_to_typescript({"type": "boolean"}) == "boolean"
    assert schema_to_typescript({"type": ["string", "integer"]}) == "string | number"
    assert schema_to_typescript({"type": "string", "enum": ["a", "b"]}) == '"a" | "b"'
    assert schema_to_typescript("not a schema") == "any"
    one_of = {
        "type": "object",
        "properties": {
            "v": {
                "description": "a value",
                "default": 3,
                "oneOf": [{"type": "string", "default": "x"}, {"type": "number", "description": "a number"}],
            }
        },
        "required": ["v"],
    }
    assert schema_to_typescript(one_of) == (
        '{\n// a value\n// default: 3\nv:\n | string // default: "x"\n | number // a number\n,\n}'
    )
