"""The tokenizer process tells which call markers are one special token of a vocabulary (engine/tokenizer.py).

What it proves: on the default model's real vocabulary, its control tokens (`<|im_start|>`, `<|im_end|>`) are
reported and markers it does not have as one token (`<tool_call>`, Harmony's, DeepSeek's) are not, so a call
grammar lets the model write a marker as its trained token only where that token exists. What it cannot prove:
the same on vocabularies with those markers (none can be downloaded here)."""

from __future__ import annotations

from herd.engine.tokenizer import Tokenizers
from herd.registry.default_model import default_model_file


def test_special_tokens_of_the_default_vocabulary() -> None:
    path = default_model_file()
    assert path is not None
    tokenizers = Tokenizers()
    try:
        tok = tokenizers.get(str(path))
        markers = ("<|im_start|>", "<|im_end|>", "<tool_call>", "<|channel|>", "<｜tool▁sep｜>", "hello")
        assert tok.special_tokens(markers) == frozenset({"<|im_start|>", "<|im_end|>"})
        assert tok.special_tokens(()) == frozenset()
    finally:
        tokenizers.close()
