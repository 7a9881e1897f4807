"""Turn a request's `format` and `tools` into llguidance grammar strings.

Pure functions: no llama.cpp here, so the HTTP side can build and validate a grammar (and fail with a
400/500 before any generation starts) without a model loaded. The runtime half lives in `matcher.py`.

Whitespace: every JSON grammar here uses llama.cpp's `SPACE` rule from json-schema-to-grammar, the
grammar Ollama itself feeds llama.cpp: between JSON tokens the model may write nothing, one space, or
one or two newlines plus up to 20 spaces/tabs. That keeps pretty-printed output possible while it stops a
model from emitting endless whitespace (the failure the Ollama docs warn about for `format: "json"`).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from llguidance import LLMatcher, LLTokenizer

from herd.errors import InvalidFormat, InvalidRequest

log = logging.getLogger(__name__)

# llama.cpp json-schema-to-grammar: `space ::= | " " | "\n"{1,2} [ \t]{0,20}`.
JSON_WHITESPACE: Final = r"(?: |\n{1,2}[ \t]{0,20})?"

# `lenient`: ignore keywords llguidance does not implement (uniqueItems, not, unknown formats, ...) instead of
# refusing the schema. llama.cpp, and so Ollama, also ignores what it cannot express, so a schema that works
# with Ollama keeps working here; real errors (bad $ref, bad regex, unsatisfiable bounds) still fail.
# Given as `overrides`, so a client's own "x-guidance" cannot switch the whitespace bound off.
JSON_OPTIONS: Final[dict[str, Any]] = {"whitespace_pattern": JSON_WHITESPACE, "lenient": True}

# format:"json" (and /v1 response_format json_object): Ollama's JSON grammar has `root ::= object`, so the answer
# is always an object (langchain-ollama's tests rely on it). Values inside are any JSON.
JSON_MODE_SCHEMA: Final[dict[str, Any]] = {"type": "object"}

# Schema keywords whose values are subschemas, by shape: one schema, a list of them, or a name -> schema map.
_SUBSCHEMA: Final = ("items", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames",
                     "unevaluatedItems", "unevaluatedProperties")
_SUBSCHEMA_LISTS: Final = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS: Final = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_NUMBER_BOUND: Final = 10**16 - 1

DEFAULT_OPEN_TAG: Final = "<tool_call>"
DEFAULT_CLOSE_TAG: Final = "</tool_call>"

# Free text before a tool call: anything except special tokens (those are not valid UTF-8 in llguidance's
# view, since their bytes start with 0xFF), so the model cannot sneak in e.g. <|im_start|>.
_TEXT_RE: Final = r"(.|\n)*"
# Between the tag and the JSON, and between calls: at most two whitespace characters ("<tool_call>\n{...}").
_SEP_RE: Final = r"[ \t\n]{0,2}"
# Bare-JSON tool calls (open tag ""): plain text is any text whose first non-whitespace character is not
# "{", matching Ollama's generic parser, which only parses calls when the output starts with the bracket.
_BARE_TEXT_RE: Final = r"[ \t\n\r]*([^{ \t\n\r](.|\n)*)?"

_MAX_REASON: Final = 500


@dataclass(frozen=True)
class ToolSpec:
    """One function the model may call. `parameters` is the JSON schema of its arguments object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict, hash=False)


# ---------------------------------------------------------------------------------------------- format


def grammar_for_format(fmt: object) -> str | None:
    """The grammar for a request's `format` field, or None when output is unconstrained.

    Raises InvalidFormat for a value that is neither "json" nor an object (Ollama's text, spec 2.10),
    and InvalidRequest for a schema llguidance cannot compile.
    """
    if fmt is None or (isinstance(fmt, str) and fmt == ""):
        return None
    if isinstance(fmt, str) and fmt == "json":
        schema: dict[str, Any] = JSON_MODE_SCHEMA
    elif isinstance(fmt, dict):
        schema = fmt
    else:
        raise InvalidFormat(
            f'invalid format: {_go_quote(_json_text(fmt))}; expected "json" or a valid JSON Schema object'
        )
    grammar = schema_grammar(as_ollama_reads(schema))
    check_grammar(grammar)
    return grammar


def as_ollama_reads(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as Ollama's format constraint reads it (llama.cpp's json-schema-to-grammar): an object schema
    that lists `properties` and says nothing of `additionalProperties` admits no other keys. Plain JSON Schema,
    which llguidance follows, admits any extra key, and a small model then invents keys until it runs out of
    tokens. A copy is returned; the client's schema is not changed."""

    def walk(node: Any, close: bool = True) -> Any:
        if isinstance(node, list):
            return [walk(x, close) for x in node]
        if not isinstance(node, dict):
            return node
        out = dict(node)
        for key in _SUBSCHEMA:
            if isinstance(out.get(key), dict):
                out[key] = walk(out[key])
        for key in _SUBSCHEMA_LISTS:
            if isinstance(out.get(key), list):
                # The parts of an allOf describe one object together (llama.cpp merges their properties):
                # closing each part would refuse the keys the other parts declare.
                out[key] = walk(out[key], close=key != "allOf")
        for key in _SUBSCHEMA_MAPS:
            if isinstance(out.get(key), dict):
                out[key] = {k: walk(v) for k, v in out[key].items()}
        if isinstance(out.get("additionalProperties"), dict):
            out["additionalProperties"] = walk(out["additionalProperties"])
        if close and isinstance(out.get("properties"), dict) and "additionalProperties" not in out \
                and "allOf" not in out:
            out["additionalProperties"] = False
        types = out.get("type")
        types = set(types) if isinstance(types, list) else {types}
        if "number" in types or "integer" in types:
            # llama.cpp's number rule has at most 16 integral and 16 fractional digits; plain JSON Schema has no
            # bound, and a sampled answer can then write digits until num_predict ends it. llguidance bounds
            # digits only through ranges and multipleOf (1e-10 is the finest step it takes), so those stand in.
            out.setdefault("maximum", _NUMBER_BOUND)
            out.setdefault("minimum", -_NUMBER_BOUND)
            if "number" in types and "integer" not in types:
                out.setdefault("multipleOf", 1e-10)
        return out

    return walk(schema)  # type: ignore[no-any-return]


def schema_grammar(schema: dict[str, Any]) -> str:
    """A JSON-schema grammar with herd's whitespace options. Does not validate; see check_grammar."""
    try:
        return LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:  # not JSON-serialisable; cannot happen for parsed request JSON
        raise InvalidRequest(f"invalid JSON schema in format: {one_line(str(exc))}") from exc


def check_grammar(
    grammar: str, tokenizer: LLTokenizer | None = None, *, what: str = "JSON schema in format"
) -> None:
    """Compile `grammar` with llguidance and raise InvalidRequest(`invalid <what>: <reason>`) if it fails.

    Without a tokenizer this checks everything except special-token references (cheap: a few ms even for
    large schemas). `matcher.Constraint` compiles the grammar again with the model's tokenizer and raises the
    same way, so that a remaining error still surfaces before the first decode step.
    """
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        raise InvalidRequest(f"invalid {what}: {one_line(messages[0] if messages else 'unknown error')}")
    if messages:
        log.debug("grammar warnings: %s", "; ".join(messages))


# ---------------------------------------------------------------------------------------------- tools


def grammar_for_tool_calls(
    tools: Sequence[ToolSpec],
    open_tag: str = DEFAULT_OPEN_TAG,
    close_tag: str = DEFAULT_CLOSE_TAG,
    *,
    arguments_key: str = "arguments",
    special_tags: Collection[str] = (),
) -> str:
    """A lark grammar: free text, or free text then one or more tool calls, then the end.

    Until the model writes `open_tag` nothing is constrained, and it may stop (EOS) at any time. Once the tag
    is out, what follows must be `{"name": <tool>, "<arguments_key>": <that tool's schema>}` and `close_tag`,
    optionally more calls, then EOS: calls are valid by construction. `open_tag=""` means bare-JSON calls
    (Llama 3.x style): the output is either text that does not start with "{", or calls.

    `special_tags` names the tags that are single special tokens in the model's vocabulary
    (see `matcher.special_tags`); those may be produced as that token as well as spelled out.
    """
    calls = _call_rules(tools, arguments_key)
    close = _tag_expr(close_tag, special_tags)
    # Inside a tag, the calls may also be written as one JSON list (`<tool_call>[{...}, {...}]</tool_call>`, the
    # form SmolLM2's template asks for); the parser reads both.
    one = "(call | call_list)" if open_tag else "call"
    body = f"SEP {one} SEP {close}" if close else f"SEP {one}"
    lines = ["%llguidance {}"]
    if open_tag:
        # `opener` is lazy: the lexeme ends the moment the tag is complete, so the model cannot keep writing
        # free text past it (a greedy TEXT would happily swallow "<tool_call>" as prose).
        lines += [
            "start: TEXT | calls",
            f"TEXT: /{_TEXT_RE}/",
            f"calls: opener body (SEP {_tag_expr(open_tag, special_tags)} body)* SEP",
            "opener: opener_text" + (f" | TEXT {_special(open_tag)}" if open_tag in special_tags else ""),
            f"opener_text[lazy]: TEXT {_lit(open_tag)}",
        ]
    else:
        lines += [
            "start: BARE_TEXT | calls",
            f"BARE_TEXT: /{_BARE_TEXT_RE}/",
            "calls: body (SEP body)* SEP",
        ]
    lines += [f"body: {body}", f"SEP: /{_SEP_RE}/", *calls]
    if open_tag:
        lines.append('call_list: "[" SEP call (SEP "," SEP call)* SEP "]"')
    return LLMatcher.grammar_from_lark("\n".join(lines) + "\n")


def grammar_for_forced_tool_call(
    tools: Sequence[ToolSpec],
    name: str | None = None,
    open_tag: str = DEFAULT_OPEN_TAG,
    close_tag: str = DEFAULT_CLOSE_TAG,
    *,
    arguments_key: str = "arguments",
    special_tags: Collection[str] = (),
) -> str:
    """Exactly one call, from the first token (OpenAI `tool_choice: "required"` or a named function).

    With `name`, only that tool may be called; an unknown name is an InvalidRequest.
    """
    if name is not None:
        chosen = [t for t in tools if t.name == name]
        if not chosen:
            raise InvalidRequest(f"tool_choice names an unknown function: {name!r}")
        tools = chosen[:1]
    calls = _call_rules(tools, arguments_key)
    parts = [_tag_expr(open_tag, special_tags), "SEP" if open_tag else "", "call"]
    if close_tag:
        parts += ["SEP", _tag_expr(close_tag, special_tags)]
    lines = ["%llguidance {}", "start: " + " ".join(p for p in parts if p), f"SEP: /{_SEP_RE}/", *calls]
    return LLMatcher.grammar_from_lark("\n".join(lines) + "\n")


def _call_rules(tools: Sequence[ToolSpec], arguments_key: str) -> list[str]:
    """`call: c_0 | c_1 | ...`, one inline %json per tool whose "name" is fixed by `const`.

    One %json per tool (rather than one anyOf) keeps each tool's `$defs` in its own root. All of them use
    the same JSON options, so llguidance merges their lexeme classes and the model is not forced to commit
    to a tool at the opening brace.
    """
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    seen: set[str] = set()
    rules: list[str] = []
    for tool in tools:
        if tool.name in seen:  # duplicate definitions: the first one wins, as a template would show it first
            continue
        seen.add(tool.name)
        schema = _call_schema(tool, arguments_key)
        rules.append(f"c_{len(rules)}: %json {json.dumps(schema, ensure_ascii=False)}")
    return ["call: " + " | ".join(f"c_{i}" for i in range(len(rules))), *rules]


def _call_schema(tool: ToolSpec, arguments_key: str) -> dict[str, Any]:
    """The JSON schema of one call object; falls back to "any object" arguments if the tool's schema fails.

    Ollama never validates tool definitions (spec 2.9), so a schema llguidance cannot compile must not fail the
    request: the call's arguments are then only constrained to be an object.
    """
    schema = _wrap_call(tool.name, arguments_key, tool.parameters)
    is_error, messages = LLMatcher.validate_grammar_with_warnings(
        LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)  # type: ignore[arg-type]
    )
    if is_error:
        log.warning("tool %r: parameters schema not usable (%s); any object allowed", tool.name, messages[:1])
        schema = _wrap_call(tool.name, arguments_key, {"type": "object"})
    return schema


def _wrap_call(name: str, arguments_key: str, parameters: object) -> dict[str, Any]:
    # Read like a format schema (no undeclared keys), so a small model cannot invent arguments without end.
    params: dict[str, Any] = as_ollama_reads(copy.deepcopy(parameters)) if isinstance(parameters, dict) else {}
    # Arguments are always an object in Ollama's ToolCall; `{}` or a schema without "type" would otherwise let
    # the model write a string or a number there.
    params.setdefault("type", "object")
    # The parameters schema now sits at /properties/<arguments_key> of the wrapper, so its definitions move to
    # the wrapper's root (where "#/$defs/X" points) and any other local ref gets the new prefix.
    defs = {key: params.pop(key) for key in ("$defs", "definitions") if isinstance(params.get(key), dict)}
    params = _rebase_refs(params, "#/properties/" + _pointer_escape(arguments_key))
    wrapper: dict[str, Any] = {
        "type": "object",
        "properties": {"name": {"const": name}, arguments_key: params},
        "required": ["name", arguments_key],
        "additionalProperties": False,
        "x-guidance": JSON_OPTIONS,
    }
    wrapper.update(defs)
    return wrapper


# Keywords whose values are data, not subschemas: a "$ref" string inside them is not a reference.
_DATA_KEYWORDS: Final = frozenset({"const", "enum", "default", "examples", "example"})


def _rebase_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, list):
        return [_rebase_refs(item, prefix) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            out[key] = _rebase_ref(value, prefix)
        elif key in _DATA_KEYWORDS:
            out[key] = value
        elif key == "properties" and isinstance(value, dict):
            # Property names are user data (a property may be called "$ref" or "enum"); their values are schemas.
            out[key] = {prop: _rebase_refs(sub, prefix) for prop, sub in value.items()}
        else:
            out[key] = _rebase_refs(value, prefix)
    return out


def _rebase_ref(ref: str, prefix: str) -> str:
    if not ref.startswith("#"):
        return ref  # a remote or $id-relative ref: left as it is (llguidance rejects it, then we fall back)
    pointer = ref[1:]
    if pointer.startswith(("/$defs/", "/definitions/")):
        return ref  # hoisted to the wrapper's root, so it still resolves
    return prefix + pointer


def _pointer_escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _tag_expr(tag: str, special_tags: Collection[str]) -> str:
    """A lark expression for a tag: the literal, or (literal | special token) when the vocab has it as one."""
    if not tag:
        return ""
    if tag in special_tags:
        return f"({_lit(tag)} | {_special(tag)})"
    return _lit(tag)


def _special(tag: str) -> str:
    # llguidance lark: `<name>` matches the special token whose text is `<name>`.
    if not (tag.startswith("<") and tag.endswith(">")):
        raise ValueError(f"special tag must look like <...>: {tag!r}")
    return tag


def _lit(text: str) -> str:
    # JSON string syntax is a subset of what llguidance's lark accepts for string literals.
    return json.dumps(text, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------- helpers


def _json_text(value: object) -> str:
    """The value as JSON text, as close as we can get to the raw bytes the client sent."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _go_quote(text: str) -> str:
    """Go's %q (strconv.Quote) for the texts that reach it here; JSON string syntax agrees on these."""
    return json.dumps(text, ensure_ascii=False)


def one_line(message: str) -> str:
    """llguidance errors can span lines (regex carets, grammar excerpts); an error body wants one line."""
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


# ---------------------------------------------------------------------------------------------- thinking


def grammar_for_format_after_thinking(
    fmt: object, open_tag: str = "<think>", close_tag: str = "</think>", *, prefilled: bool = False
) -> str | None:
    """`format` for a thinking model: the reasoning is free, only the answer after `close_tag` is constrained
    (spec 2.10). With `prefilled`, the template already opened the thinking block, so the output starts inside
    it; otherwise the model may open a block or answer directly.
    """
    if grammar_for_format(fmt) is None:  # validates fmt and the schema with the usual errors
        return None
    schema = JSON_MODE_SCHEMA if fmt == "json" else as_ollama_reads(fmt)  # type: ignore[arg-type]
    answer = {**schema, "x-guidance": JSON_OPTIONS}  # type: ignore[dict-item]
    lines = ["%llguidance {}"]
    if prefilled:
        lines += ["start: think SEP answer", f"think[lazy]: TEXT {_lit(close_tag)}", f"TEXT: /{_TEXT_RE}/"]
    else:
        opener = r"[ \t\n]*" + _regex_escape(open_tag) + _TEXT_RE
        lines += ["start: answer | think SEP answer", f"think[lazy]: OPENED {_lit(close_tag)}", f"OPENED: /{opener}/"]
    lines += [f"SEP: /{_SEP_RE}/", f"answer: %json {json.dumps(answer, ensure_ascii=False)}"]
    return LLMatcher.grammar_from_lark("\n".join(lines) + "\n")


def _regex_escape(text: str) -> str:
    return "".join("\\" + ch if ch in r".^$*+?{}[]\|()/" else ch for ch in text)
