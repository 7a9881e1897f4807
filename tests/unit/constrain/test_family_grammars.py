"""Each family's call grammar (constrain/families.py) against that family's parser (parsing/<family>.py).

What it proves: the canonical call a family's grammar lets the model write (spelled out in the default model's
tokens) is accepted by the grammar to the end, and the family's parser reads it back as exactly that call, with
typed arguments; a call to a tool that was not offered, or arguments that break the schema, are refused by the
grammar; forced grammars refuse free text. What it cannot prove: anything about the special tokens of the real
models' vocabularies (SmolLM2 has none of these markers, so every marker is spelled out in those tests; the
single-token path is checked on a synthetic byte-level vocabulary that has them as special tokens, at the end), nor
that a model writes such calls unconstrained.

Llama 3 and Mistral have no parser class of their own: parsing/toolcalls.py picks their format from the template
(`detect_tool_format`), and ChatService.grammar_for picks the grammar by that same format, so the tests here read the
calls back with the parser that template selects."""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper

from herd.constrain.families import family_call_grammar
from herd.constrain.grammar import ToolSpec
from herd.families import BY_NAME
from herd.parsing.pipeline import parse_all
from herd.parsing.toolcalls import ToolCallParser, ToolFormat, detect_tool_format
from herd.types import ChatTurn, Message, ToolDef

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
    # Llama 3.1/3.2/3.3: the templates ask for bare JSON with "parameters"; the model may also open <|python_tag|>.
    "llama3": f'{{"name": "get_weather", "parameters": {J}}}',
    "llama3-tag": f'Sure.<|python_tag|>{{"name": "get_weather", "parameters": {J}}}',
    # Mistral 7B v0.3 / Nemo / Small 3.1: one JSON list, each call with its 9-character id.
    "mistral": f'Checking. [TOOL_CALLS] [{{"name": "get_weather", "arguments": {J}, "id": "a1B2c3D4e"}}]',
    # Ministral 3 / Mistral Small 3.2 / Magistral / Devstral: name[ARGS]{...} per call.
    "mistral-args": f"[TOOL_CALLS]get_weather[ARGS]{J}",
}
# Just enough of each template for the detection that picks the format (families.py / toolcalls.py).
LLAMA3_TEMPLATE = "<|start_header_id|>{{ tools }}<|python_tag|>"
MISTRAL_TEMPLATE = "[AVAILABLE_TOOLS]{{ tools }}[TOOL_CALLS] ["
MISTRAL_ARGS_TEMPLATE = "[AVAILABLE_TOOLS]{{ tools }}[TOOL_CALLS]{{ name }}[ARGS]{{ arguments }}"
TEMPLATE = {"granite": "<|tool_call|>", "llama3": LLAMA3_TEMPLATE, "llama3-tag": LLAMA3_TEMPLATE,
            "mistral": MISTRAL_TEMPLATE, "mistral-args": MISTRAL_ARGS_TEMPLATE}
FAMILY = {"llama3-tag": "llama3", "mistral-args": "mistral"}  # case -> family_call_grammar's family name


def grammar(case: str, forced: str | None = None, special: object = ()) -> str | None:
    return family_call_grammar(FAMILY.get(case, case), TEMPLATE.get(case, ""), TOOLS, forced, special)  # type: ignore[arg-type]


def toolcalls_parser(case: str) -> ToolCallParser:
    """The parser the template selects, as ChatService.parser_for builds it for a family without a parser."""
    fmt, tag = detect_tool_format(TEMPLATE[case])
    return ToolCallParser([t.name for t in TOOLS], fmt, tag or None)


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
    g = grammar(family)
    assert g is not None
    assert accepts(tokenizer, g, text)
    assert accepts(tokenizer, g, "Just an answer, no call.")  # unforced: free text may end the turn
    parser = BY_NAME[FAMILY.get(family, family)].make_parser(TOOL_DEFS, family in ("harmony", "glm-4.7"), False)
    if family in ("llama3", "llama3-tag", "mistral", "mistral-args"):
        assert parser is None
        parser = toolcalls_parser(family)
    elif parser is None:  # the template-detected default parsers
        fmt = ToolFormat.GENERIC if family == "gemma3" else ToolFormat.HERMES
        parser = ToolCallParser([t.name for t in TOOLS], fmt, None if family == "gemma3" else "<tool_call>")
    delta = parse_all(parser, [text[i:i + 7] for i in range(0, len(text), 7)])
    assert [(c.name, c.arguments) for c in delta.tool_calls] == [("get_weather", ARGS)]


@pytest.mark.parametrize("family", sorted(CANONICAL))
def test_wrong_name_or_arguments_are_refused(tokenizer: LLTokenizer, family: str) -> None:
    text = CANONICAL[family]
    g = grammar(family)
    assert g is not None
    assert not accepts(tokenizer, g, text.replace("get_weather", "get_wether"))
    bad_days = text.replace("3", "three", 1) if family in ("qwen3-coder", "glm-4.7") else text.replace(
        '"days": 3', '"days": "3"')
    assert bad_days != text
    assert not accepts(tokenizer, g, bad_days)


@pytest.mark.parametrize("family", sorted(CANONICAL))
def test_forced_grammar_starts_with_the_call(tokenizer: LLTokenizer, family: str) -> None:
    g = grammar(family, "get_weather")
    assert g is not None
    assert not accepts(tokenizer, g, "Just an answer, no call.")
    with pytest.raises(Exception, match="unknown function"):
        grammar(family, "nope")


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


# ---- Llama 3 and Mistral ------------------------------------------------------------------------------------------

LLAMA_CALL = f'{{"name": "get_weather", "parameters": {J}}}'
LLAMA_PING = '{"name": "ping", "parameters": {}}'
MISTRAL_CALL = f'{{"name": "get_weather", "arguments": {J}, "id": "a1B2c3D4e"}}'
MISTRAL_PING = '{"name": "ping", "arguments": {}}'
# One call, and two calls, in each form.
ONE_AND_TWO = {
    "llama3": (LLAMA_CALL, f"{LLAMA_CALL}; {LLAMA_PING}"),
    "llama3-tag": (f"<|python_tag|>{LLAMA_CALL}", f"<|python_tag|>{LLAMA_CALL}\n{LLAMA_PING}"),
    "mistral": (f"[TOOL_CALLS] [{MISTRAL_CALL}]", f"[TOOL_CALLS] [{MISTRAL_CALL}, {MISTRAL_PING}]"),
    "mistral-args": (f"[TOOL_CALLS]get_weather[ARGS]{J}", f"[TOOL_CALLS]get_weather[ARGS]{J}[TOOL_CALLS]ping[ARGS]{{}}"),
}


@pytest.mark.parametrize("case", sorted(ONE_AND_TWO))
def test_forced_llama3_and_mistral_allow_exactly_one_call(tokenizer: LLTokenizer, case: str) -> None:
    one, two = ONE_AND_TWO[case]
    for forced in ("", "get_weather"):
        g = grammar(case, forced)
        assert g is not None
        assert accepts(tokenizer, g, one)
        assert not accepts(tokenizer, g, two)
        assert not accepts(tokenizer, g, "Sure. " + one)  # the call starts at the first token
    named = grammar(case, "ping")
    assert named is not None
    assert not accepts(tokenizer, named, one)  # a named function: only that one
    unforced = grammar(case)
    assert unforced is not None
    assert accepts(tokenizer, unforced, two)
    delta = parse_all(toolcalls_parser(case), [two[i:i + 5] for i in range(0, len(two), 5)])
    assert [(c.name, c.arguments) for c in delta.tool_calls] == [("get_weather", ARGS), ("ping", {})]


def test_llama3_bare_json_is_a_call_only_at_the_start(tokenizer: LLTokenizer) -> None:
    """ToolFormat.LLAMA3 reads a "{" as a call only as the first visible character; the grammar agrees: there it
    must be a valid call, later it is content, and text before the tag must not open with "{"."""
    g = grammar("llama3")
    assert g is not None
    assert accepts(tokenizer, g, "\n" + LLAMA_CALL)
    assert not accepts(tokenizer, g, '{"answer": 42}')
    later = 'Here is JSON: {"answer": 42}'
    assert accepts(tokenizer, g, later)
    delta = parse_all(toolcalls_parser("llama3"), [later])
    assert (delta.content, delta.tool_calls) == (later, ())
    assert not accepts(tokenizer, g, '{"answer": 1} <|python_tag|>' + LLAMA_CALL)
    assert not accepts(tokenizer, g, LLAMA_CALL.replace('"parameters"', '"arguments"'))  # the templates' key


def test_mistral_form_follows_the_template(tokenizer: LLTokenizer) -> None:
    """The JSON list where the template writes one, name[ARGS]{...} where it writes [ARGS]; [CALL_ID] only where
    the template has it; a JSON call's id is optional and, if written, Mistral's 9 alphanumerics."""
    list_form, args_form = ONE_AND_TWO["mistral"][0], ONE_AND_TWO["mistral-args"][0]
    json_g, args_g = grammar("mistral"), grammar("mistral-args")
    assert json_g is not None and args_g is not None
    assert accepts(tokenizer, json_g, list_form) and not accepts(tokenizer, json_g, args_form)
    assert accepts(tokenizer, args_g, args_form) and not accepts(tokenizer, args_g, list_form)
    assert accepts(tokenizer, json_g, f"[TOOL_CALLS] [{MISTRAL_PING}]")
    assert not accepts(tokenizer, json_g, '[TOOL_CALLS] [{"name": "ping", "arguments": {}, "id": "short"}]')
    with_id = f"[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]{J}"
    assert not accepts(tokenizer, args_g, with_id)
    id_g = family_call_grammar("mistral", MISTRAL_ARGS_TEMPLATE + "[CALL_ID]", TOOLS, None)
    assert id_g is not None and accepts(tokenizer, id_g, with_id)
    delta = parse_all(toolcalls_parser("mistral-args"), [with_id])
    assert [(c.name, c.arguments) for c in delta.tool_calls] == [("get_weather", ARGS)]


def test_mistral_args_form_offers_only_names_the_parser_reads(tokenizer: LLTokenizer) -> None:
    odd = ToolSpec("9lives", "", {"type": "object", "properties": {}})
    g = family_call_grammar("mistral", MISTRAL_ARGS_TEMPLATE, [odd, TOOLS[1]], None)
    assert g is not None
    assert accepts(tokenizer, g, "[TOOL_CALLS]ping[ARGS]{}")
    assert not accepts(tokenizer, g, "[TOOL_CALLS]9lives[ARGS]{}")
    assert family_call_grammar("mistral", MISTRAL_ARGS_TEMPLATE, [odd], None) is None
    with pytest.raises(Exception, match="cannot carry"):
        family_call_grammar("mistral", MISTRAL_ARGS_TEMPLATE, [odd], "")


# ---- special tokens: a synthetic vocabulary that has the markers as single special tokens ----------------------

SPECIALS = ("<|eot_id|>", "<|python_tag|>", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "<tool_call>", "</tool_call>")
SPECIAL_ID = {s: 256 + i for i, s in enumerate(SPECIALS)}
MISTRAL_IDS = {m: SPECIAL_ID[m] for m in ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]")}


class _ByteVocab:
    """Every byte is one token, then the special tokens (`<|eot_id|>` the EOS): what llguidance needs."""

    def __init__(self) -> None:
        self.tokens = [bytes([b]) for b in range(256)] + [s.encode() for s in SPECIALS]
        self.special_token_ids = [SPECIAL_ID[s] for s in SPECIALS]
        self.eos_token_id = SPECIAL_ID["<|eot_id|>"]
        self.bos_token_id = None

    def __call__(self, data: bytes) -> list[int]:
        return list(data)


@pytest.fixture(scope="module")
def special_vocab() -> LLTokenizer:
    return LLTokenizer(TokenizerWrapper(_ByteVocab()))


def with_tokens(*parts: str) -> list[int]:
    """A part that is a special marker is that one token; any other part is its bytes."""
    return [t for p in parts for t in ([SPECIAL_ID[p]] if p in SPECIAL_ID else list(p.encode()))]


def accepts_tokens(tokenizer: LLTokenizer, grammar_text: str | None, tokens: Sequence[int]) -> bool:
    assert grammar_text is not None
    m = LLMatcher(tokenizer, grammar_text, log_level=0)
    assert not m.is_error(), m.get_error()
    return all(m.consume_token(t) for t in tokens) and m.is_accepting() and not m.is_error()


def test_llama3_python_tag_is_matched_as_its_token(special_vocab: LLTokenizer) -> None:
    """Where the vocabulary has `<|python_tag|>` as a special token (real Llama 3 ones do), the grammar admits that
    token, the one the model was trained to write, as well as the spelled-out text; without the marker in
    `special` the token is masked off, which is what `special` exists to prevent."""
    special = frozenset({"<|python_tag|>"})
    unforced, forced = grammar("llama3", None, special), grammar("llama3", "", special)
    for g in (unforced, forced):
        assert accepts_tokens(special_vocab, g, with_tokens("<|python_tag|>", LLAMA_CALL))
        assert accepts_tokens(special_vocab, g, with_tokens("<|python_tag|>" + LLAMA_CALL))
        assert not accepts_tokens(special_vocab, g, with_tokens("<|python_tag|>", LLAMA_CALL.replace("get_", "got_")))
    assert accepts_tokens(special_vocab, unforced, with_tokens("Sure. ", "<|python_tag|>", LLAMA_CALL))
    assert not accepts_tokens(special_vocab, grammar("llama3"), with_tokens("<|python_tag|>", LLAMA_CALL))


@pytest.mark.parametrize("case", ["mistral", "mistral-args"])
def test_mistral_markers_are_matched_as_tokens_by_id(special_vocab: LLTokenizer, case: str) -> None:
    """llguidance names a special token `<name>` only when it is written `<...>`; Mistral's `[TOOL_CALLS]` and
    `[ARGS]` are referred to by id (`<[id]>`), so `special` maps them to their ids."""
    args = ("[TOOL_CALLS]", "get_weather", "[ARGS]", J)
    parts = args if case == "mistral-args" else ("[TOOL_CALLS]", ONE_AND_TWO[case][0][len("[TOOL_CALLS]"):])
    for forced in (None, ""):
        g = grammar(case, forced, MISTRAL_IDS)
        assert accepts_tokens(special_vocab, g, with_tokens(*parts))
        assert accepts_tokens(special_vocab, g, with_tokens("".join(parts)))  # spelled out as well
    assert accepts_tokens(special_vocab, grammar(case, None, MISTRAL_IDS), with_tokens("Checking. ", *parts))
    delta = parse_all(toolcalls_parser(case), ["".join(parts)])  # the runner detokenizes specials as their text
    assert [(c.name, c.arguments) for c in delta.tool_calls] == [("get_weather", ARGS)]


@pytest.mark.parametrize("case", ["mistral", "mistral-args"])
def test_mistral_markers_without_ids(special_vocab: LLTokenizer, case: str) -> None:
    """Special but without an id, a bracketed marker cannot be named: unforced, no grammar (the calls are parsed
    unconstrained, as before, rather than the trained token masked off); forced, the marker is spelled out."""
    special = frozenset(MISTRAL_IDS)
    assert grammar(case, None, special) is None
    forced = grammar(case, "", special)
    one = ONE_AND_TWO[case][0]
    assert accepts_tokens(special_vocab, forced, with_tokens(one))
    assert not accepts_tokens(special_vocab, forced, with_tokens("[TOOL_CALLS]", one[len("[TOOL_CALLS]"):]))


# ---- the wiring: ChatService.grammar_for picks the grammar by the template's format --------------------------------


def _grammar_for(template: str, force_tool: str | None, special: frozenset[str] = frozenset()) -> str | None:
    from herd.families import GENERIC
    from herd.services.chat import ChatService

    service = SimpleNamespace(settings=SimpleNamespace(constrain_tools=True))
    model = SimpleNamespace(family=GENERIC, template=("jinja", template), capabilities=("completion", "tools"))
    turn = ChatTurn("m", (Message("user", "hi"),), tools=tuple(TOOL_DEFS), force_tool=force_tool)
    return ChatService.grammar_for(service, model, turn, None, special=special)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", ["llama3", "mistral", "mistral-args"])
def test_grammar_for_constrains_llama3_and_mistral(tokenizer: LLTokenizer, case: str) -> None:
    """A model of the generic family (Modelfile PARSER llama3 / mistral, or none) with a Llama 3 or Mistral template
    gets that format's grammar, unforced and forced (before: none, or a `<tool_call>` one its parser cannot read)."""
    one, two = ONE_AND_TWO[case]
    unforced, forced = _grammar_for(TEMPLATE[case], None), _grammar_for(TEMPLATE[case], "")
    assert unforced is not None and forced is not None
    assert accepts(tokenizer, unforced, two) and accepts(tokenizer, forced, one)
    assert not accepts(tokenizer, unforced, one.replace("get_weather", "get_wether"))
    assert not accepts(tokenizer, forced, "<tool_call>" + one)


def test_grammar_for_leaves_unnamed_mistral_markers_unconstrained() -> None:
    assert _grammar_for(MISTRAL_TEMPLATE, None, frozenset(MISTRAL_IDS)) is None
    assert _grammar_for(MISTRAL_ARGS_TEMPLATE, "", frozenset(MISTRAL_IDS)) is not None


def test_grammar_for_matches_tool_call_tags_as_tokens(special_vocab: LLTokenizer) -> None:
    """The `<tool_call>` format of the generic family (Qwen2.5 and most Hermes-style models, whose vocabularies
    have `<tool_call>` as one token) admits the token too, unforced and forced."""
    call = f'{{"name": "get_weather", "arguments": {J}}}'
    tags = frozenset({"<tool_call>", "</tool_call>"})
    for forced in (None, ""):
        g = _grammar_for("{{ '<tool_call>' }}", forced, tags)
        assert accepts_tokens(special_vocab, g, with_tokens("<tool_call>", call, "</tool_call>"))
        assert not accepts_tokens(special_vocab, _grammar_for("{{ '<tool_call>' }}", forced),
                                  with_tokens("<tool_call>", call, "</tool_call>"))
