"""Constraint with the default model's real vocabulary: simulated generation is valid by construction."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import numpy as np
import pytest
from constrain_support import FakeModel, Vocab
from llguidance import LLTokenizer

from herd.constrain.grammar import (
    ToolSpec,
    grammar_for_forced_tool_call,
    grammar_for_format,
    grammar_for_tool_calls,
)
from herd.constrain.matcher import Constraint, TokenizerCache, special_tags
from herd.errors import InvalidRequest

SCHEMAS: dict[str, dict[str, Any]] = {
    "flat_required": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    },
    "nested_objects": {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 20},
                    "address": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string"},
                            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                        },
                        "required": ["city", "zip"],
                    },
                },
                "required": ["name", "address"],
            }
        },
        "required": ["person"],
    },
    "enums": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "size": {"enum": [1, 2, 3, None]}},
        "required": ["color", "size"],
    },
    "array_min_items": {
        "type": "object",
        "properties": {
            "scores": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 10},
                "minItems": 2,
                "maxItems": 5,
            },
        },
        "required": ["scores"],
    },
    "optional_no_additional": {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "note": {"type": "string"}, "ok": {"type": "boolean"}},
        "required": ["id"],
        "additionalProperties": False,
    },
    "any_of": {
        "type": "object",
        "properties": {
            "value": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "number"}, {"type": "null"}]}
        },
        "required": ["value"],
    },
    "one_of_tagged": {
        "type": "object",
        "properties": {
            "shape": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}},
                        "required": ["kind", "r"],
                        "additionalProperties": False,
                    },
                    {
                        "type": "object",
                        "properties": {"kind": {"const": "square"}, "side": {"type": "integer"}},
                        "required": ["kind", "side"],
                        "additionalProperties": False,
                    },
                ]
            }
        },
        "required": ["shape"],
    },
    "refs_defs": {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1, "maxItems": 3}
        },
        "required": ["items"],
        "$defs": {
            "item": {
                "type": "object",
                "properties": {"sku": {"$ref": "#/$defs/sku"}, "qty": {"type": "integer"}},
                "required": ["sku", "qty"],
            },
            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
        },
    },
    "recursive_tree": {
        "$ref": "#/$defs/node",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
                },
                "required": ["v"],
                "additionalProperties": False,
            }
        },
    },
    "string_lengths": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "minLength": 3, "maxLength": 6},
            "tags": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 4}},
        },
        "required": ["code", "tags"],
    },
    "number_ranges": {
        "type": "object",
        "properties": {
            "t": {"type": "number", "minimum": -40.5, "maximum": 50},
            "p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "n": {"type": "integer", "minimum": 100, "maximum": 120},
        },
        "required": ["t", "p", "n"],
    },
    "const_and_types": {
        "type": "object",
        "properties": {
            "version": {"const": 2},
            "mode": {"const": "fast"},
            "maybe": {"type": ["string", "null"]},
        },
        "required": ["version", "mode", "maybe"],
    },
    "string_formats": {
        "type": "object",
        "properties": {
            "day": {"type": "string", "format": "date"},
            "at": {"type": "string", "format": "date-time"},
            "mail": {"type": "string", "format": "email", "maxLength": 24},
            "id": {"type": "string", "format": "uuid"},
            "ip": {"type": "string", "format": "ipv4"},
        },
        "required": ["day", "at", "mail", "id", "ip"],
    },
    "map_additional_properties": {
        "type": "object",
        "additionalProperties": {"type": "integer"},
        "minProperties": 1,
    },
    "top_level_array_tuple": {
        "type": "array",
        "prefixItems": [{"type": "string", "maxLength": 8}, {"type": "boolean"}],
        "items": False,
        "minItems": 2,
    },
}

SEEDS = [(0, 2.5), (1, 3.5), (2, 5.0)]  # (seed, pull towards closers/EOS)


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_output_is_valid_by_construction(
    name: str, tokenizer: LLTokenizer, vocab: Vocab, fake_model: FakeModel
) -> None:
    schema = SCHEMAS[name]
    grammar = grammar_for_format(schema)
    assert grammar is not None
    validator = _validator(schema)
    for seed, strength in SEEDS:
        run = fake_model.run(Constraint(tokenizer, grammar), seed, strength=strength)
        assert run.finished, f"{name} seed {seed}: not finished after {run.steps} tokens: {run.text(vocab)!r}"
        text = run.text(vocab)
        value = json.loads(text)
        errors = [e.message for e in validator.iter_errors(value)]
        assert not errors, f"{name} seed {seed}: {text!r}: {errors}"


def test_json_mode_gives_an_object_or_array(
    tokenizer: LLTokenizer, vocab: Vocab, fake_model: FakeModel
) -> None:
    grammar = grammar_for_format("json")
    assert grammar is not None
    values = []
    for seed in range(6):
        run = fake_model.run(Constraint(tokenizer, grammar), seed, strength=2.0 + seed % 2)
        assert run.finished, run.text(vocab)
        values.append(json.loads(run.text(vocab)))
        assert isinstance(values[-1], dict | list)
    assert any(len(v) > 0 for v in values)  # not just "{}" every time


def test_json_whitespace_is_bounded(tokenizer: LLTokenizer) -> None:
    grammar = grammar_for_format("json")
    assert grammar is not None

    def accepts(text: str) -> bool:
        constraint = Constraint(tokenizer, grammar)
        for token in tokenizer.tokenize_str(text):
            constraint.accept(token)
        return not constraint.is_error()

    assert accepts('{"a": 1}')
    assert accepts('{\n  "a": [1, 2],\n  "b": {}\n}')
    assert not accepts(' {"a": 1}')  # no leading whitespace
    assert not accepts('{"a":   1}')  # at most one space
    assert not accepts('{\n\n\n"a": 1}')  # at most two newlines
    assert not accepts('{"a": 1,' + " " * 2 + '"b": 2}')


def test_eos_only_when_complete(tokenizer: LLTokenizer, vocab: Vocab, fake_model: FakeModel) -> None:
    grammar = grammar_for_format(
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    )
    assert grammar is not None
    constraint = Constraint(tokenizer, grammar)
    fake_model.force(constraint, tokenizer.tokenize_str('{"a":1'))
    logits = np.zeros(vocab.n_tokens, dtype=np.float32)
    constraint.apply(logits)
    assert not any(np.isfinite(logits[t]) for t in vocab.eog)
    assert not constraint.is_finished()
    fake_model.force(constraint, tokenizer.tokenize_str("}"))
    assert constraint.is_finished() and constraint.is_accepting()
    logits = np.zeros(vocab.n_tokens, dtype=np.float32)
    constraint.apply(logits)
    assert set(np.flatnonzero(np.isfinite(logits)).tolist()) == set(vocab.eog)  # every EOG id, nothing else
    constraint.accept(min(vocab.eog))
    assert constraint.is_finished() and not constraint.is_error()


@pytest.mark.parametrize("extra", [100, -1000])
def test_logits_longer_or_shorter_than_grammar_vocab(
    extra: int, tokenizer: LLTokenizer, vocab: Vocab
) -> None:
    grammar = grammar_for_format("json")
    assert grammar is not None
    constraint = Constraint(tokenizer, grammar)
    n = vocab.n_tokens + extra
    logits = np.zeros(n, dtype=np.float32)
    constraint.apply(logits)
    allowed = np.flatnonzero(np.isfinite(logits))
    assert allowed.size > 0 and allowed.max() < min(n, tokenizer.vocab_size)
    assert tokenizer.decode_str([int(allowed[0])]).lstrip().startswith(("{", "["))
    assert not constraint.is_error()


def test_mask_cut_to_nothing_allows_eos_and_reports(tokenizer: LLTokenizer, fake_model: FakeModel) -> None:
    constraint = Constraint(tokenizer, grammar_for_format({"const": "zzz"}) or "")
    logits = np.zeros(17, dtype=np.float32)  # only the control tokens fit: "zzz" cannot be written
    constraint.apply(logits)
    assert constraint.is_error()
    assert sorted(np.flatnonzero(np.isfinite(logits)).tolist()) == sorted(
        t for t in tokenizer.eos_tokens if t < 17
    )


def test_forbidden_token_is_an_error(tokenizer: LLTokenizer, vocab: Vocab) -> None:
    constraint = Constraint(tokenizer, grammar_for_format("json") or "")
    constraint.accept(tokenizer.tokenize_str("hello")[0])
    assert constraint.is_error() and not constraint.is_finished()
    assert constraint.error
    logits = np.zeros(vocab.n_tokens, dtype=np.float32)
    constraint.apply(logits)  # the matcher only lets the sequence end now
    assert set(np.flatnonzero(np.isfinite(logits)).tolist()) <= set(vocab.eog)


def test_grammar_that_needs_the_tokenizer_fails_at_construction(tokenizer: LLTokenizer) -> None:
    bad = grammar_for_tool_calls(
        [ToolSpec("f", "", {})], special_tags=["<no_such_token>"], open_tag="<no_such_token>"
    )
    with pytest.raises(InvalidRequest, match="^invalid tools: .*unknown special token"):
        Constraint(tokenizer, bad, what="tools")


def test_tokenizer_cache(vocab: Vocab, tokenizer_cache: TokenizerCache, tokenizer: LLTokenizer) -> None:
    assert tokenizer_cache.get(vocab.ptr) is tokenizer
    assert set(tokenizer.eos_tokens) == set(vocab.eog)
    assert tokenizer.vocab_size == vocab.n_tokens


# ---------------------------------------------------------------------------------------------- tools

TOOLS = [
    ToolSpec(
        "get_weather",
        "Current weather",
        {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    ),
    ToolSpec(
        "add",
        "Add numbers",
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        "order",
        "Order items",
        {
            "type": "object",
            "properties": {
                "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}, "minItems": 1, "maxItems": 2}
            },
            "required": ["lines"],
            "$defs": {
                "line": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]$"},
                        "n": {"type": "integer", "minimum": 1},
                    },
                    "required": ["sku", "n"],
                }
            },
        },
    ),
]
BY_NAME = {t.name: t for t in TOOLS}
CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def _check_calls(text: str, arguments_key: str = "arguments") -> list[str]:
    bodies = CALL_RE.findall(text)
    assert bodies, text
    names = []
    for body in bodies:
        value = json.loads(body)
        # One call per tag, or (SmolLM2's form) a non-empty list of calls in one tag.
        calls = value if isinstance(value, list) else [value]
        assert calls
        for call in calls:
            assert set(call) == {"name", arguments_key}
            tool = BY_NAME[call["name"]]
            jsonschema.validate(call[arguments_key], tool.parameters)
            jsonschema.validate(call[arguments_key], {**tool.parameters, "additionalProperties": False})
            names.append(tool.name)
    assert CALL_RE.sub("", text.split("<tool_call>", 1)[1].join(["<tool_call>", ""])).strip() == ""
    return names


@pytest.mark.parametrize(("seed", "strength"), SEEDS)
def test_text_then_tool_call_is_valid_by_construction(
    seed: int, strength: float, tokenizer: LLTokenizer, vocab: Vocab, fake_model: FakeModel
) -> None:
    constraint = Constraint(tokenizer, grammar_for_tool_calls(TOOLS), what="tools")
    prefix = "Let me check that for you. <tool_call>"
    fake_model.force(constraint, vocab.tokenize(prefix))
    run = fake_model.run(constraint, seed, strength=strength)
    assert run.finished and run.ended_with_eos, run.text(vocab)
    text = prefix + run.text(vocab)
    assert text.startswith("Let me check that for you. <tool_call>")
    _check_calls(text)


def test_tool_grammar_after_the_tag_is_strict(
    tokenizer: LLTokenizer, vocab: Vocab, fake_model: FakeModel
) -> None:
    grammar = grammar_for_tool_calls(TOOLS)
    constraint = Constraint(tokenizer, grammar)
    fake_model.force(constraint, vocab.tokenize('Sure <tool_call>{"name": "'))
    logits = np.zeros(vocab.n_tokens, dtype=np.float32)
    constraint.apply(logits)
    assert not any(np.isfinite(logits[t]) for t in vocab.eog)  # an opened call must be finished
    starts = {tokenizer.decode_str([int(t)])[:1] for t in np.flatnonzero(np.isfinite(logits))}
    assert starts <= {"g", "a", "o"}  # only the tool names can begin here
    constraint.accept(vocab.tokenize("x")[0])
    assert constraint.is_error()
    # Text after a finished call is not allowed, only more calls or the end.
    constraint = Constraint(tokenizer, grammar)
    fake_model.force(
        constraint, vocab.tokenize('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>')
    )
    assert constraint.is_accepting()
    constraint.accept(vocab.tokenize(" more")[0])
    assert constraint.is_error()


def test_tool_grammar_allows_plain_text_answer(
    tokenizer: LLTokenizer, vocab: Vocab, fake_model: FakeModel
) -> None:
    constraint = Constraint(tokenizer, grammar_for_tool_calls(TOOLS))
    fake_model.force(
        constraint, vocab.tokenize("The weather is sunny. No tool is needed; <tool_ here is fine.")
    )
    assert constraint.is_accepting() and not constraint.is_finished()
    fake_model.force(constraint, [min(vocab.eog)])
    assert constraint.is_finished()


def test_tool_grammar_random_free_text_run(
    tokenizer: LLTokenizer, vocab: Vocab, fake_model: FakeModel
) -> None:
    # No forcing at all: the fake model writes text and ends; whatever it wrote is accepted.
    run = fake_model.run(Constraint(tokenizer, grammar_for_tool_calls(TOOLS)), 7, strength=8.0)
    assert run.finished and run.ended_with_eos


@pytest.mark.parametrize("name", [None, "order"])
def test_forced_tool_call(
    name: str | None, tokenizer: LLTokenizer, vocab: Vocab, fake_model: FakeModel
) -> None:
    grammar = grammar_for_forced_tool_call(TOOLS, name)
    for seed, strength in SEEDS:
        run = fake_model.run(Constraint(tokenizer, grammar), seed, strength=strength)
        assert run.finished, run.text(vocab)
        text = run.text(vocab)
        assert text.startswith("<tool_call>") and text.endswith("</tool_call>")
        names = _check_calls(text)
        assert len(names) == 1
        if name:
            assert names == [name]


def test_bare_json_tool_calls(tokenizer: LLTokenizer, vocab: Vocab, fake_model: FakeModel) -> None:
    grammar = grammar_for_tool_calls(TOOLS, "", "", arguments_key="parameters")
    constraint = Constraint(tokenizer, grammar)
    fake_model.force(constraint, vocab.tokenize('{"name": "add", "parameters": {"a": 1, "b": 2}}'))
    assert constraint.is_accepting()
    constraint = Constraint(tokenizer, grammar)
    fake_model.force(constraint, vocab.tokenize("Plain answer {with braces} later."))
    assert constraint.is_accepting()
    constraint = Constraint(tokenizer, grammar)
    fake_model.force(constraint, vocab.tokenize("{"))
    run = fake_model.run(constraint, 3)
    call = json.loads("{" + run.text(vocab))
    jsonschema.validate(call["parameters"], BY_NAME[call["name"]].parameters)


def test_special_token_tags(tokenizer: LLTokenizer, vocab: Vocab, fake_model: FakeModel) -> None:
    # SmolLM2 has no <tool_call> token; two of its control tokens stand in for a Hermes/Qwen-style vocab.
    open_tag, close_tag = "<jupyter_code>", "<jupyter_output>"
    found = special_tags(tokenizer, [open_tag, close_tag, "<tool_call>", "[x]"])
    assert found == {open_tag, close_tag}
    grammar = grammar_for_tool_calls(TOOLS, open_tag, close_tag, special_tags=found)
    open_id = tokenizer.tokenize_str(open_tag, parse_special=True)
    assert len(open_id) == 1
    constraint = Constraint(tokenizer, grammar)
    fake_model.force(constraint, vocab.tokenize("Calling now: ") + open_id)
    run = fake_model.run(constraint, 1)
    assert run.finished, run.text(vocab)
    text = run.text(vocab)
    assert text.rstrip().endswith(close_tag)
    call = json.loads(text.split(close_tag)[0])
    jsonschema.validate(call["arguments"], BY_NAME[call["name"]].parameters)


def test_per_token_cost(
    tokenizer: LLTokenizer, vocab: Vocab, fake_model: FakeModel, capsys: pytest.CaptureFixture[str]
) -> None:
    # A print, not an assertion: timings on a shared 2-core machine are too noisy to gate on.
    samples: dict[str, list[float]] = {"schemas": [], "json": [], "tools": []}
    for schema in SCHEMAS.values():
        samples["schemas"] += fake_model.run(
            Constraint(tokenizer, grammar_for_format(schema) or ""), 0
        ).step_seconds
    json_grammar = grammar_for_format("json") or ""
    tools_grammar = grammar_for_tool_calls(TOOLS)
    for seed in range(4):
        samples["json"] += fake_model.run(
            Constraint(tokenizer, json_grammar), seed, strength=2.0
        ).step_seconds
        constraint = Constraint(tokenizer, tools_grammar)
        fake_model.force(constraint, vocab.tokenize("Checking. <tool_call>"))
        samples["tools"] += fake_model.run(constraint, seed).step_seconds
    lines = []
    for label, seconds in samples.items():
        us = np.array(seconds) * 1e6
        lines.append(
            f"{label}: mean {us.mean():.0f} us, median {np.median(us):.0f} us, max {us.max():.0f} us "
            f"over {us.size} tokens"
        )
    with capsys.disabled():
        print("\nconstraint apply()+accept() per token: " + "; ".join(lines))


def _admits(constraint: Constraint, vocab: Vocab, text: str) -> bool:
    """Whether the constraint lets the model write `text` (token by token, as the default model spells it)."""
    for token in vocab.tokenize(text):
        logits = np.zeros(vocab.n_tokens, dtype=np.float32)
        constraint.apply(logits)
        if not np.isfinite(logits[token]):
            return False
        constraint.accept(token)
    return True


def test_schema_without_additional_properties_admits_no_other_key(tokenizer: LLTokenizer, vocab: Vocab) -> None:
    # Issue 11 point 7: Ollama (llama.cpp's converter) reads a schema that lists properties and says nothing of
    # additionalProperties as closed; plain JSON Schema would let the model add keys.
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    grammar = grammar_for_format(schema)
    assert _admits(Constraint(tokenizer, grammar), vocab, '{"name": "Bob", "age": 30}')
    assert not _admits(Constraint(tokenizer, grammar), vocab, '{"name": "Bob", "age_range"')
    nested = {"type": "object", "properties": {"p": {"type": "array", "items": {
        "type": "object", "properties": {"x": {"type": "integer"}}}}}}
    assert not _admits(Constraint(tokenizer, grammar_for_format(nested)), vocab, '{"p": [{"x": 1, "y"')
    # Saying so still opens the object, as in Ollama.
    opened = {**schema, "additionalProperties": True}
    assert _admits(Constraint(tokenizer, grammar_for_format(opened)), vocab, '{"name": "Bob", "age": 3, "z": 1}')


def test_json_mode_gives_an_object_never_an_array(tokenizer: LLTokenizer, vocab: Vocab) -> None:
    grammar = grammar_for_format("json")
    assert not _admits(Constraint(tokenizer, grammar), vocab, "[1]")
    assert _admits(Constraint(tokenizer, grammar), vocab, '{"a": [1, {"b": null}]}')


def test_calls_may_be_one_json_list_inside_the_tag(tokenizer: LLTokenizer, vocab: Vocab) -> None:
    grammar = grammar_for_tool_calls(TOOLS)
    text = '<tool_call>[\n{"name": "' + TOOLS[0].name + '", "arguments": '
    assert _admits(Constraint(tokenizer, grammar, what="tools"), vocab, text)
    assert not _admits(Constraint(tokenizer, grammar, what="tools"), vocab, '<tool_call>["x"')
    assert not _admits(Constraint(tokenizer, grammar, what="tools"), vocab, '<tool_call>[{"name": "nope"')


def test_all_of_parts_are_not_closed_one_by_one(tokenizer: LLTokenizer, vocab: Vocab) -> None:
    schema = {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                        {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}]}
    assert _admits(Constraint(tokenizer, grammar_for_format(schema)), vocab, '{"a": 1, "b": 2}')


def test_numbers_have_bounded_digits_as_in_llama_cpp(tokenizer: LLTokenizer, vocab: Vocab) -> None:
    # A sampled answer could otherwise write digits until num_predict ends it (seen with score: number).
    schema = {"type": "object", "properties": {"score": {"type": "number"}, "n": {"type": "integer"}}}
    grammar = grammar_for_format(schema)
    assert _admits(Constraint(tokenizer, grammar), vocab, '{"score": -3.25, "n": 42}')
    assert not _admits(Constraint(tokenizer, grammar), vocab, '{"score": 1.1234567890123456789')
    assert not _admits(Constraint(tokenizer, grammar), vocab, '{"score": 1, "n": 123456789012345678901')
    # A schema's own bounds stand.
    own = {"type": "number", "minimum": 0, "maximum": 1}
    assert not _admits(Constraint(tokenizer, grammar_for_format(own)), vocab, "2")
