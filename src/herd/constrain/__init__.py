"""Structured output: `format` and `tools` -> llguidance grammars (grammar.py), token masks (matcher.py).

The matcher names load lazily: `matcher.py` imports llama_cpp, and the HTTP side (which builds and validates
grammars before a request reaches a runner) must not pull llama.cpp into the server process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from herd.constrain.grammar import (
    DEFAULT_CLOSE_TAG,
    DEFAULT_OPEN_TAG,
    JSON_WHITESPACE,
    ToolSpec,
    check_grammar,
    grammar_for_forced_tool_call,
    grammar_for_format,
    grammar_for_tool_calls,
    schema_grammar,
)

if TYPE_CHECKING:
    from herd.constrain.matcher import Constraint, TokenizerCache, build_tokenizer, eog_tokens, special_tags

_MATCHER_NAMES = frozenset({"Constraint", "TokenizerCache", "build_tokenizer", "eog_tokens", "special_tags"})

__all__ = [
    "DEFAULT_CLOSE_TAG",
    "DEFAULT_OPEN_TAG",
    "JSON_WHITESPACE",
    "Constraint",
    "TokenizerCache",
    "ToolSpec",
    "build_tokenizer",
    "check_grammar",
    "eog_tokens",
    "grammar_for_forced_tool_call",
    "grammar_for_format",
    "grammar_for_tool_calls",
    "schema_grammar",
    "special_tags",
]


def __getattr__(name: str) -> Any:
    if name in _MATCHER_NAMES:
        from herd.constrain import matcher

        return getattr(matcher, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
