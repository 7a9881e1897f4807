"""Call grammars for the model families of families.py: once a model opens a call in its own format, the rest of the
call is an offered tool's name and arguments valid for that tool's schema, by construction.

Each grammar writes exactly the form the family's parser documents in its "Grammar" section (parsing/<family>.py).
Markers that are one special token in the model's vocabulary are matched as that token as well as spelled out
(`special`), so the token the model was trained to write is never masked off. Unforced, text before the call's
trigger is free (reasoning included) and the model may end without calling; forced (`tool_choice: "required"` or
a named function), the call starts at the first token. The JSON families whose calls carry the name inside the
JSON (Qwen3, Granite 4, Gemma 3) use constrain/grammar.py's tool grammars with the family's tags.

A marker that looks like `<...>` is named as a special token in the grammar; llguidance has no name syntax for other
markers (Mistral's `[TOOL_CALLS]`), only `<[id]>`, so for those `special` must map the marker to its token id. A
special marker the grammar cannot name would be masked off by the grammar's free text, which never matches a special
token: unforced, such a grammar is not built (the calls are parsed, unconstrained, as Ollama does); forced, the
grammar writes the marker spelled out, which the parser reads the same.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from llguidance import LLMatcher

from herd.constrain.grammar import (
    _BARE_TEXT_RE,
    _SEP_RE,
    _TEXT_RE,
    JSON_OPTIONS,
    ToolSpec,
    _call_rules,
    _call_schema,
    _lit,
    _regex_escape,
    _wrap_call,
    as_ollama_reads,
    grammar_for_forced_tool_call,
    grammar_for_tool_calls,
)
from herd.errors import InvalidRequest

DS_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
DS_CALLS_END = "<｜tool▁calls▁end｜>"
DS_CALL_BEGIN = "<｜tool▁call▁begin｜>"
DS_CALL_END = "<｜tool▁call▁end｜>"
DS_SEP = "<｜tool▁sep｜>"
HARMONY_MARKERS = ("<|channel|>", "<|constrain|>", "<|message|>", "<|call|>", "<|start|>", "<|end|>")
LLAMA3_TAG = "<|python_tag|>"
MISTRAL_CALLS = "[TOOL_CALLS]"
MISTRAL_ARGS = "[ARGS]"
MISTRAL_CALL_ID = "[CALL_ID]"
LLAMA3_MARKERS = (LLAMA3_TAG,)
MISTRAL_MARKERS = (MISTRAL_CALLS, MISTRAL_ARGS, MISTRAL_CALL_ID)

# The markers a family's grammar may use: what `special` should be computed for (engine/tokenizer.py).
FAMILY_MARKERS: dict[str, tuple[str, ...]] = {
    "harmony": HARMONY_MARKERS,
    "deepseek3": (DS_CALLS_BEGIN, DS_CALLS_END, DS_CALL_BEGIN, DS_CALL_END, DS_SEP),
    "qwen3-coder": ("<tool_call>", "</tool_call>"),
    "qwen3.5": ("<tool_call>", "</tool_call>"),
    "glm-4.7": ("<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"),
    "granite": ("<|tool_call|>", "<tool_call>", "</tool_call>"),
    "qwen3": ("<tool_call>", "</tool_call>"),
    "llama3": LLAMA3_MARKERS,
    "mistral": MISTRAL_MARKERS,
    # The families without a parser of their own keep the template-detected formats of parsing/toolcalls.py
    # (ChatService.grammar_for picks one by the template): `<tool_call>`, Llama 3 and Mistral.
    **dict.fromkeys(("generic", "qwen3-instruct", "qwen3-vl-instruct"),
                    ("<tool_call>", "</tool_call>", *LLAMA3_MARKERS, *MISTRAL_MARKERS)),
}


def family_call_grammar(family: str, template: str, tools: Sequence[ToolSpec], forced: str | None,
                        special: Collection[str] = ()) -> str | None:
    """The lark grammar for this family's calls, or None when herd does not constrain the family (Gemma 4's call
    notation: parsed, not constrained) or, unforced, cannot name one of its special markers (see above).
    `forced`: None, "" (any tool) or a tool's name. `special`: the markers that are one special token in the
    model's vocabulary; a mapping gives their token ids as well (needed for markers not written `<...>`)."""
    tools = _choose(tools, forced)
    if family == "llama3":
        return _llama3(tools, forced is not None, special)
    if family == "mistral":
        return _mistral(tools, forced is not None, template, special)
    if family == "harmony":
        return _harmony(tools, forced is not None, special)
    if family == "deepseek3":
        return _deepseek(tools, forced is not None, special)
    if family in ("qwen3-coder", "qwen3.5"):
        return _xml(tools, forced is not None, special, _qwen_call)
    if family == "glm-4.7":
        return _xml(tools, forced is not None, special, _glm_call)
    if family == "granite":
        if "<|tool_call|>" in template:  # Granite 3: one JSON list after the marker
            return _granite3(tools, forced is not None, special)
        return _json_tag(tools, forced, "<tool_call>", "</tool_call>", "arguments", special)
    if family == "gemma3":
        return _json_tag(tools, forced, "", "", "parameters", special)
    if family == "qwen3":
        return _json_tag(tools, forced, "<tool_call>", "</tool_call>", "arguments", special)
    return None


def _choose(tools: Sequence[ToolSpec], forced: str | None) -> list[ToolSpec]:
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    if forced:
        chosen = [t for t in tools if t.name == forced]
        if not chosen:
            raise InvalidRequest(f"tool_choice names an unknown function: {forced!r}")
        return chosen[:1]
    seen: set[str] = set()
    out = []
    for t in tools:
        if t.name not in seen:
            seen.add(t.name)
            out.append(t)
    return out


def _json_tag(tools: Sequence[ToolSpec], forced: str | None, open_tag: str, close_tag: str, key: str,
              special: Collection[str]) -> str:
    if forced is not None:
        return grammar_for_forced_tool_call(tools, forced or None, open_tag, close_tag, arguments_key=key,
                                            special_tags=special)
    return grammar_for_tool_calls(tools, open_tag, close_tag, arguments_key=key, special_tags=special)


def _token_ref(marker: str, special: Collection[str]) -> str | None:
    """How the grammar names the marker's special token: `<name>`, `<[id]>` when only its id is known, or None."""
    if marker.startswith("<") and marker.endswith(">"):
        return marker
    token = special.get(marker) if isinstance(special, Mapping) else None
    return f"<[{token}]>" if isinstance(token, int) and not isinstance(token, bool) and token >= 0 else None


def _unnamed(markers: Sequence[str], special: Collection[str]) -> bool:
    """Some marker is a special token the grammar cannot name (a bracketed one without its id)."""
    return any(m in special and _token_ref(m, special) is None for m in markers)


def _m(marker: str, special: Collection[str]) -> str:
    """A marker: its text, or its special token when the vocabulary has one."""
    ref = _token_ref(marker, special) if marker in special else None
    return f"({_lit(marker)} | {ref})" if ref is not None else _lit(marker)


def _args(tool: ToolSpec) -> str:
    """%json of a tool's arguments object, read as Ollama reads a schema (no undeclared keys)."""
    wrapper = _wrap_call(tool.name, "a", tool.parameters)
    schema: dict[str, Any] = dict(wrapper["properties"]["a"])
    for key in ("$defs", "definitions"):
        if key in wrapper:
            schema[key] = wrapper[key]
    schema = _rebase(schema)
    schema["x-guidance"] = JSON_OPTIONS
    return "%json " + json.dumps(schema, ensure_ascii=False)


def _rebase(node: Any) -> Any:
    """`_wrap_call` points local refs at /properties/a; here the arguments schema is the root again."""
    if isinstance(node, dict):
        return {k: (v.replace("#/properties/a", "#", 1) if k == "$ref" and isinstance(v, str) else _rebase(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_rebase(v) for v in node]
    return node


def _assemble(start: str, rules: list[str], opener: str | None, special: Collection[str] = ()) -> str:
    """`opener` (a marker's text): the free text up to and including the call's trigger. The lexeme is lazy, so
    it ends the moment the trigger is complete; as a special token the trigger follows the text instead."""
    lines = ["%llguidance {}", f"start: {start}", f"SEP: /{_SEP_RE}/", f"TEXT: /{_TEXT_RE}/"]
    if opener is not None:
        ref = _token_ref(opener, special) if opener in special else None
        lines.append("opener: opener_text" + (f" | TEXT {ref}" if ref is not None else ""))
        lines.append(f"opener_text[lazy]: TEXT {_lit(opener)}")
    lines += rules
    return LLMatcher.grammar_from_lark("\n".join(lines) + "\n")


# ---- Harmony (gpt-oss) --------------------------------------------------------------------------------------------


def _harmony(tools: Sequence[ToolSpec], forced: bool, special: Collection[str]) -> str:
    from herd.parsing.harmony import harmony_function_names

    names = harmony_function_names([t.name for t in tools])
    m = lambda x: _m(x, special)  # noqa: E731
    rules = []
    # Unforced, the recipient may have come in the role part, before the channel; forced, the grammar writes the
    # channel first, and a second one would be read as part of the recipient.
    channel = "" if forced else f'({m("<|channel|>")} "commentary")? '
    for i, t in enumerate(tools):
        rules.append(f'c_{i}: {_lit(names[t.name])} {channel}'
                     f'(" " {m("<|constrain|>")} "json")? {m("<|message|>")} {_args(t)} {m("<|call|>")}')
    rules.insert(0, "call: " + " | ".join(f"c_{i}" for i in range(len(tools))))
    if forced:
        return _assemble(f'{m("<|channel|>")} "commentary to=functions." call', rules, None)
    # The recipient may follow the channel or the role; either way the call is what comes after it.
    return _assemble("TEXT | opener call", rules, "to=functions.")


# ---- DeepSeek V3.1 ------------------------------------------------------------------------------------------------


def _deepseek(tools: Sequence[ToolSpec], forced: bool, special: Collection[str]) -> str:
    m = lambda x: _m(x, special)  # noqa: E731
    more = "" if forced else "(SEP call)* "  # forced: exactly one call, as for the JSON families
    rules = [f"calls: SEP call {more}SEP " + m(DS_CALLS_END),
             "call: " + " | ".join(f"c_{i}" for i in range(len(tools)))]
    for i, t in enumerate(tools):
        rules.append(f"c_{i}: {m(DS_CALL_BEGIN)} {_lit(t.name)} {m(DS_SEP)} {_args(t)} {m(DS_CALL_END)}")
    if forced:
        return _assemble(f"{m(DS_CALLS_BEGIN)} calls", rules, None)
    return _assemble("TEXT | opener calls", rules, DS_CALLS_BEGIN, special)


# ---- Granite 3 ----------------------------------------------------------------------------------------------------


def _granite3(tools: Sequence[ToolSpec], forced: bool, special: Collection[str]) -> str:
    rules = ['calls: SEP "[" SEP call (SEP "," SEP call)* SEP "]"', *_call_rules(tools, "arguments")]
    if forced:
        return _assemble(f"{_m('<|tool_call|>', special)} calls", rules, None)
    return _assemble("TEXT | opener calls", rules, "<|tool_call|>", special)


# ---- Llama 3.x ----------------------------------------------------------------------------------------------------

# Between two calls: what Llama 3.2/3.3 write there ("; " or a newline); parsing/toolcalls.py skips any text there.
_LLAMA3_MORE = r"[ \t\n]{0,2}(;[ \t\n]{0,2})?"


def _llama3(tools: Sequence[ToolSpec], forced: bool, special: Collection[str]) -> str:
    """`{"name": ..., "parameters": {...}}` (the key the Llama 3.1/3.2/3.3 templates write and tell the model to
    use), either bare as the whole answer or after `<|python_tag|>`, as ToolFormat.LLAMA3 reads it: a bare call
    must be the first visible text (a `{` later on is content), the tag may follow free text. Forced: one call,
    with or without the tag."""
    tag = _m(LLAMA3_TAG, special)
    rules = [f"MORE: /{_LLAMA3_MORE}/", *_call_rules(tools, "parameters")]
    if forced:
        return _assemble(f"({tag} SEP)? call", rules, None)
    ref = _token_ref(LLAMA3_TAG, special) if LLAMA3_TAG in special else None
    rules += [
        f"BARE_TEXT: /{_BARE_TEXT_RE}/",
        "calls: call (MORE call)* SEP",
        # The text before the tag must not open with "{" either: the parser would read that JSON as the answer.
        "opener: opener_text" + (f" | BARE_TEXT {ref}" if ref is not None else ""),
        f"opener_text[lazy]: BARE_TEXT {_lit(LLAMA3_TAG)}",
    ]
    return _assemble("BARE_TEXT | SEP calls | opener SEP calls", rules, None)


# ---- Mistral / Ministral ------------------------------------------------------------------------------------------

# Mistral's tool-call ids are 9 alphanumerics (its templates refuse others); the JSON form's calls may carry one.
_MISTRAL_ID = {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"}
# The names parsing/toolcalls.py reads before `[ARGS]` (its _MISTRAL_ARGS_RE).
_MISTRAL_NAME = re.compile(r"[A-Za-z_][\w.\-]*")


def _mistral(tools: Sequence[ToolSpec], forced: bool, template: str, special: Collection[str]) -> str | None:
    """The form the template writes back, as ToolFormat.MISTRAL reads either: `[TOOL_CALLS]name[ARGS]{...}` per
    call (optionally `[CALL_ID]id` before `[ARGS]`) where the template has `[ARGS]` (Ministral 3, Mistral Small
    3.2, Magistral, Devstral), else one JSON list `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`
    (Mistral 7B v0.3, Nemo, Small 3.1), each call optionally with its `"id"`."""
    markers = [m for m in MISTRAL_MARKERS if m == MISTRAL_CALLS or m in template]
    if not forced and _unnamed(markers, special):
        return None  # the model's trained token would be masked off: parse only, as before
    calls = _m(MISTRAL_CALLS, special)
    if MISTRAL_ARGS in template:
        readable = [t for t in tools if _MISTRAL_NAME.fullmatch(t.name)]
        if not readable:
            if forced:
                raise InvalidRequest("tool_choice: the Mistral [ARGS] call format cannot carry this function's "
                                     f"name: {tools[0].name!r}")
            return None
        call_id = f'({_m(MISTRAL_CALL_ID, special)} /[a-zA-Z0-9]{{9}}/)? ' if MISTRAL_CALL_ID in template else ""
        rules = ["call: " + " | ".join(f"c_{i}" for i in range(len(readable)))]
        for i, t in enumerate(readable):
            rules.append(f"c_{i}: {_lit(t.name)} {call_id}{_m(MISTRAL_ARGS, special)} {_args(t)}")
        if forced:
            return _assemble(f"{calls} call", rules, None)
        rules.append(f"calls: call ({calls} call)* SEP")
        return _assemble("TEXT | opener calls", rules, MISTRAL_CALLS, special)
    rules = ["call: " + " | ".join(f"c_{i}" for i in range(len(tools)))]
    for i, t in enumerate(tools):
        schema = _call_schema(t, "arguments")
        schema["properties"]["id"] = _MISTRAL_ID
        rules.append(f"c_{i}: %json {json.dumps(schema, ensure_ascii=False)}")
    if forced:
        return _assemble(f'{calls} SEP "[" SEP call SEP "]"', rules, None)
    rules.append('calls: SEP "[" SEP call (SEP "," SEP call)* SEP "]" SEP')
    return _assemble("TEXT | opener calls", rules, MISTRAL_CALLS, special)


# ---- XML families: Qwen3-Coder / Qwen3.5 and GLM-4.x --------------------------------------------------------------


# What a string value may not contain, per closing tag: the tags the family's parser reads as the end of the value
# or of the call (a value holding "</function>" would end the call early and leave required arguments out).
_STRUCTURAL = {
    "\n</parameter>": ("</parameter>", "<parameter=", "</function>", "</tool_call>"),
    "</arg_value>": ("</arg_value>", "<arg_key>", "</arg_key>", "<arg_value>", "</tool_call>"),
}


def _free_text_without(tags: Sequence[str], min_length: int = 0, max_length: int | None = None) -> str:
    """A lexeme of any text that contains none of `tags` (llguidance's & and ~ on regular expressions), of the
    schema's minLength..maxLength characters."""
    alternatives = "|".join(_regex_escape(t) for t in tags)
    count = f"{{{min_length},{'' if max_length is None else max_length}}}"
    return f"/(.|\\n){count}/ & ~/(.|\\n)*({alternatives})(.|\\n)*/"


def _value(rule: str, schema: object, close: str) -> list[str]:
    """Rules for one parameter's value, ending with the `close` literal; `rule` names the value rule."""
    s = as_ollama_reads(dict(schema)) if isinstance(schema, dict) else {}
    kind = s.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    enum = s.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, str) and v and "<" not in v for v in enum):
        return [f"{rule}: (" + " | ".join(_lit(v) for v in enum) + f") {_lit(close)}"]
    if kind == "integer":
        return [f"{rule}: /-?(0|[1-9][0-9]{{0,15}})/ {_lit(close)}"]
    if kind == "number":
        return [f"{rule}: /-?(0|[1-9][0-9]{{0,15}})(\\.[0-9]{{1,10}})?/ {_lit(close)}"]
    if kind == "boolean":
        return [f'{rule}: ("true" | "false") {_lit(close)}']
    if kind in ("object", "array"):
        js = {**s, "x-guidance": JSON_OPTIONS}
        return [f"{rule}: %json {json.dumps(js, ensure_ascii=False)} {_lit(close)}"]
    # A string (or anything else): free text up to the first closing tag, holding none of the call's own tags.
    lexeme = rule.upper() + "_TEXT"
    min_length, max_length = s.get("minLength"), s.get("maxLength")
    low = min_length if isinstance(min_length, int) and min_length >= 0 else 0
    high = max_length if isinstance(max_length, int) and max_length >= low else None
    return [f"{rule}[lazy]: {lexeme} {_lit(close)}",
            f"{lexeme}: {_free_text_without(_STRUCTURAL[close], low, high)}"]


def _params(i: int, tool: ToolSpec, block: Any) -> tuple[str, list[str]]:
    """The parameter blocks of tool i, in schema order: required ones always, optional ones optionally."""
    props = tool.parameters.get("properties") if isinstance(tool.parameters, dict) else None
    required = tool.parameters.get("required") if isinstance(tool.parameters, dict) else None
    required = set(required) if isinstance(required, list) else set()
    if not isinstance(props, dict):
        return "", []
    parts: list[str] = []
    rules: list[str] = []
    for k, (key, schema) in enumerate(props.items()):
        head, close = block(key)
        value = f"v_{i}_{k}"
        rules += _value(value, schema, close)
        item = f"{head} {value}"
        parts.append(item if key in required else f"({item})?")
    return " ".join(parts), rules


def _qwen_call(i: int, tool: ToolSpec) -> list[str]:
    body, rules = _params(i, tool, lambda key: (f'"\\n<parameter=" {_lit(key)} ">\\n"', "\n</parameter>"))
    return [f'c_{i}: "<function=" {_lit(tool.name)} ">" {body} "\\n</function>"', *rules]


def _glm_call(i: int, tool: ToolSpec) -> list[str]:
    body, rules = _params(i, tool, lambda key: (f'"\\n<arg_key>" {_lit(key)} "</arg_key>\\n<arg_value>"',
                                                "</arg_value>"))
    return [f"c_{i}: {_lit(tool.name)} {body}", *rules]


def _xml(tools: Sequence[ToolSpec], forced: bool, special: Collection[str], make: Any) -> str:
    open_, close = _m("<tool_call>", special), _m("</tool_call>", special)
    glm = make is _glm_call
    inner = '"\\n" call "\\n"' if not glm else 'call "\\n"'
    more = "" if forced else f"(SEP {open_} {inner} {close})* "  # forced: exactly one call
    rules = [f"calls: {inner} {close} {more}SEP",
             "call: " + " | ".join(f"c_{i}" for i in range(len(tools)))]
    for i, t in enumerate(tools):
        rules += make(i, t)
    if forced:
        return _assemble(f"{open_} calls", rules, None)
    return _assemble("TEXT | opener calls", rules, "<tool_call>", special)
