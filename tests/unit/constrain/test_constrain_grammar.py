"""grammar.py without a model: which formats are accepted, the error texts, tool-grammar shapes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from herd.constrain.grammar import (
    ToolSpec,
    check_grammar,
    grammar_for_forced_tool_call,
    grammar_for_format,
    grammar_for_tool_calls,
)
from herd.errors import InvalidFormat, InvalidRequest

EXPECTED = 'expected "json" or a valid JSON Schema object'


@pytest.mark.parametrize("fmt", [None, ""])
def test_unconstrained_formats(fmt: object) -> None:
    assert grammar_for_format(fmt) is None


def test_json_and_schema_formats_give_grammars() -> None:
    assert grammar_for_format("json")
    assert grammar_for_format({"type": "object", "properties": {"a": {"type": "string"}}})
    assert grammar_for_format({})  # schema {} accepts any JSON value, as with Ollama


def test_invalid_format_text_matches_ollama() -> None:
    with pytest.raises(InvalidFormat) as info:
        grammar_for_format("xml")
    assert info.value.message == f'invalid format: "\\"xml\\""; {EXPECTED}'
    assert str(info.value) == info.value.message


@pytest.mark.parametrize(
    ("fmt", "quoted"),
    [(5, '"5"'), ([1, 2], '"[1, 2]"'), (True, '"true"'), ("JSON", '"\\"JSON\\""'), ("null", '"\\"null\\""')],
)
def test_other_invalid_formats(fmt: object, quoted: str) -> None:
    with pytest.raises(InvalidFormat) as info:
        grammar_for_format(fmt)
    assert info.value.message == f"invalid format: {quoted}; {EXPECTED}"


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "strin"}, "Invalid type"),
        ({"$ref": "#/$defs/missing"}, "does not exist"),
        ({"type": "string", "pattern": "(("}, "regex parse error"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "Unsatisfiable"),
    ],
)
def test_uncompilable_schema_is_invalid_request(schema: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        grammar_for_format(schema)
    message = info.value.message
    assert message.startswith("invalid JSON schema in format: ")
    assert reason in message
    assert "\n" not in message  # one line, fit for an error body


def test_unimplemented_keywords_are_ignored_like_llama_cpp() -> None:
    # uniqueItems / not / unknown formats: Ollama (llama.cpp) ignores them, so a request must not fail here.
    assert grammar_for_format({"type": "array", "uniqueItems": True, "items": {"not": {"type": "null"}}})
    assert grammar_for_format({"type": "string", "format": "uri-reference"})


def test_schema_is_not_mutated() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    before = json.dumps(schema)
    grammar_for_format(schema)
    assert json.dumps(schema) == before


def test_client_x_guidance_cannot_unbound_whitespace() -> None:
    grammar = grammar_for_format({"type": "object", "x-guidance": {"whitespace_flexible": True}})
    assert grammar is not None
    assert "whitespace_pattern" in grammar


def test_grammar_module_does_not_import_llama_cpp() -> None:
    code = "import sys, herd.constrain, herd.constrain.grammar; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


WEATHER = ToolSpec(
    "get_weather",
    "Weather for a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
    },
)


def test_tool_grammars_compile() -> None:
    tools = [WEATHER, ToolSpec("ping", "", {})]
    check_grammar(grammar_for_tool_calls(tools), what="tools")
    check_grammar(grammar_for_tool_calls(tools, "", ""), what="tools")
    check_grammar(grammar_for_tool_calls(tools, "[TOOL_CALLS]", "", arguments_key="parameters"))
    check_grammar(grammar_for_forced_tool_call(tools))
    check_grammar(grammar_for_forced_tool_call(tools, "ping"))


def test_forced_call_with_unknown_name() -> None:
    with pytest.raises(InvalidRequest):
        grammar_for_forced_tool_call([WEATHER], "nope")


def test_tool_grammar_needs_tools() -> None:
    with pytest.raises(ValueError):
        grammar_for_tool_calls([])


def test_unusable_tool_schema_falls_back_to_any_object() -> None:
    # Ollama never validates tool definitions, so a broken one must not fail the request.
    broken = ToolSpec("broken", "", {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}})
    grammar = grammar_for_tool_calls([broken, WEATHER])
    check_grammar(grammar)
    assert "#/nowhere" not in grammar


def test_tool_schema_refs_are_rebased() -> None:
    tree = ToolSpec(
        "tree",
        "",
        {
            "type": "object",
            "properties": {
                "root": {"$ref": "#/$defs/node"},
                "again": {"$ref": "#"},
                "props": {"properties": {"$ref": {"type": "string"}}},
            },
            "$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}}}},
        },
    )
    grammar = grammar_for_tool_calls([tree])
    check_grammar(grammar)
    assert '"#/$defs/node"' in grammar
    assert '"#/properties/arguments"' in grammar
    assert '"$ref": {"type": "string"}' in grammar  # a property named $ref is data, not a reference


def test_duplicate_tool_names_keep_first() -> None:
    grammar = grammar_for_tool_calls([WEATHER, ToolSpec("get_weather", "", {"type": "object"})])
    assert grammar.count('"const": "get_weather"') == 1
