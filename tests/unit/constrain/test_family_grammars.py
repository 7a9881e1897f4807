"""Each family's call grammar (constrain/families.py) against that family's parser (parsing/<family>.py).

What it proves: the canonical call a family's grammar lets the model write (spelled out in the default model's
tokens) is accepted by the grammar to the end, and the family's parser reads it back as exactly that call, with
typed arguments; a call to a tool that was not offered, or arguments that break the schema, are refused by the
grammar; forced grammars refuse free text. What it cannot prove: anything about the special tokens of the real
models' vocabularies (SmolLM2 has none of these markers, so every marker is spelled out here), nor that a model
writes such calls unconstrained."""

from __future__ import annotations

import json

import pytest
from llguidance import LLMatcher, LLTokenizer

from herd.constrain.families import family_call_grammar
from herd.constrain.grammar import ToolSpec
from herd.families import BY_NAME
from herd.parsing.pipeline import parse_all
from herd.types import ToolDef

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"type": "string", "enum": ["c", "f"]},
    "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["city", "days"]}
TOOLS = [ToolSpec("get_weather", "", WEATHER), ToolSpec("ping", "", {"type": "object", "properties": {}})]
TOOL_DEFS = [ToolDef(t.name, t.description, t.parameters) for t in TOOLS]
ARGS = {"city": "Paris\nFrance", "days": 3, "unit": "c", "tags": ["a", "b"]}
J = json.dumps(ARGS)

CANONICAL = {
    "harmony": ("<|channel|>analysis<|message|>Let me look.<|end|><|start|>assistant<|channel|>commentary "
                f"to=functions.get_weather <|constrain|>json<|message|>{J}<|call|>"),
    "deepseek3": ("Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
                  f"{J}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
    "qwen3-coder": ("Sure.<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\nFrance\n</parameter>\n"
                    "<parameter=days>\n3\n</parameter>\n<parameter=unit>\nc\n</parameter>\n<parameter=tags>\n"
                    '["a", "b"]\n</parameter>\n</function>\n</tool_call>'),
    "glm-4.7": ("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris\nFrance</arg_value>\n"
                "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n<arg_key>unit</arg_key>\n<arg_value>c"
                '</arg_value>\n<arg_key>tags</arg_key>\n<arg_value>["a", "b"]</arg_value>\n</tool_call>'),
    "granite": f'<|tool_call|>[{{"name": "get_weather", "arguments": {J}}}]',
    "gemma3": f'{{"name": "get_weather", "parameters": {J}}}',
    "qwen3": f'<tool_call>\n{{"name": "get_weather", "arguments": {J}}}\n</tool_call>',
}
TEMPLATE = {"granite": "<|tool_call|>"}


def accepts(tokenizer: LLTokenizer, grammar: str, text: str) -> bool:
    m = LLMatcher(tokenizer, grammar, log_level=0)
    assert not m.is_error(), m.get_error()
    for tok in tokenizer.tokenize_str(text):
        if not m.consume_token(tok):
            return False
    return m.is_accepting() and not m.is_error()


@pytest.mark.parametrize("family", sorted(CANONICAL))
def test_canonical_call_is_accepted_and_parsed(tokenizer: LLTokenizer, family: str) -> None:
    text = CANONICAL[family]
    grammar = family_call_grammar(family, TEMPLATE.get(family, ""), TOOLS, None)
    assert grammar is not None
    assert accepts(tokenizer, grammar, text)
    assert accepts(tokenizer, grammar, "Just an answer, no call.")  # unforced: free text may end the turn
    parser = BY_NAME[family].make_parser(TOOL_DEFS, family in ("harmony", "glm-4.7"), False)
    if parser is None:  # the template-detected default parsers
        from herd.parsing.toolcalls import ToolCallParser, ToolFormat

        fmt = ToolFormat.GENERIC if family == "gemma3" else ToolFormat.HERMES
        parser = ToolCallParser([t.name for t in TOOLS], fmt, None if family == "gemma3" else "<tool_call>")
    delta = parse_all(parser, [text[i:i + 7] for i in range(0, len(text), 7)])
    assert [(c.name, c.arguments) for c in delta.tool_calls] == [("get_weather", ARGS)]


@pytest.mark.parametrize("family", sorted(CANONICAL))
def test_wrong_name_or_arguments_are_refused(tokenizer: LLTokenizer, family: str) -> None:
    text = CANONICAL[family]
    grammar = family_call_grammar(family, TEMPLATE.get(family, ""), TOOLS, None)
    assert grammar is not None
    assert not accepts(tokenizer, grammar, text.replace("get_weather", "get_wether"))
    bad_days = text.replace("3", "three", 1) if family in ("qwen3-coder", "glm-4.7") else text.replace(
        '"days": 3', '"days": "3"')
    assert bad_days != text
    assert not accepts(tokenizer, grammar, bad_days)


@pytest.mark.parametrize("family", sorted(CANONICAL))
def test_forced_grammar_starts_with_the_call(tokenizer: LLTokenizer, family: str) -> None:
    grammar = family_call_grammar(family, TEMPLATE.get(family, ""), TOOLS, "get_weather")
    assert grammar is not None
    assert not accepts(tokenizer, grammar, "Just an answer, no call.")
    with pytest.raises(Exception, match="unknown function"):
        family_call_grammar(family, TEMPLATE.get(family, ""), TOOLS, "nope")


@pytest.mark.parametrize(("family", "cut"), [
    ("qwen3-coder", "Paris\n</function>\n</tool_call>\n\nAnything at all"),
    ("glm-4.7", "Paris</arg_value>\n</tool_call>\n\nAnything at all"),
])
def test_a_string_value_cannot_end_the_call_early(tokenizer: LLTokenizer, family: str, cut: str) -> None:
    """A string argument holding the family's closing tags would end the call with required arguments missing;
    the grammar refuses it (found end to end: the parser then read a call without its required `days`)."""
    text = CANONICAL[family]
    early = text[:text.index("Paris")] + cut
    grammar = family_call_grammar(family, "", TOOLS, None)
    assert grammar is not None
    assert not accepts(tokenizer, grammar, early)


@pytest.mark.parametrize("family", ["deepseek3", "qwen3-coder", "glm-4.7"])
def test_forced_grammar_allows_exactly_one_call(tokenizer: LLTokenizer, family: str) -> None:
    text = CANONICAL[family]
    grammar = family_call_grammar(family, "", TOOLS, "")
    assert grammar is not None
    start = text.index({"deepseek3": "<｜tool▁calls▁begin｜>"}.get(family, "<tool_call>"))
    one = text[start:]
    assert accepts(tokenizer, grammar, one)
    if family == "deepseek3":
        call = one[len("<｜tool▁calls▁begin｜>"):-len("<｜tool▁calls▁end｜>")]
        two = "<｜tool▁calls▁begin｜>" + call + call + "<｜tool▁calls▁end｜>"
    else:
        two = one + "\n" + one
    assert not accepts(tokenizer, grammar, two)
    assert accepts(tokenizer, family_call_grammar(family, "", TOOLS, None) or "", "Sure." + two)


def test_xml_string_values_keep_max_length(tokenizer: LLTokenizer) -> None:
    """A string parameter's maxLength holds in the XML families too (JSON families get it from llguidance)."""
    short = ToolSpec("note", "", {"type": "object", "properties": {"text": {"type": "string", "maxLength": 5}},
                                  "required": ["text"]})
    grammar = family_call_grammar("qwen3-coder", "", [short], "")
    assert grammar is not None
    call = "<tool_call>\n<function=note>\n<parameter=text>\n{}\n</parameter>\n</function>\n</tool_call>"
    assert accepts(tokenizer, grammar, call.format("hello"))
    assert not accepts(tokenizer, grammar, call.format("hello!"))
