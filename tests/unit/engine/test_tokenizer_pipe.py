"""The tokenizer process over its pipe with messages far past a pipe's 64 KiB (engine/tokenizer.py).

What it proves: a prompt of a coding agent's size (Claude Code sends about 90 KB of system prompt and tools)
crosses the pipe in several reads and is tokenized, the same as the same text cut into pieces; the process is
the same one afterwards (it did not take the short read for the end of its input). What it cannot prove: more
than the default model's vocabulary."""

from __future__ import annotations

from herd.engine.tokenizer import Tokenizers
from herd.registry.default_model import default_model_file


def test_a_prompt_larger_than_the_pipe_is_tokenized() -> None:
    path = default_model_file()
    assert path is not None
    tokenizers = Tokenizers()
    try:
        tok = tokenizers.get(str(path))
        piece = "Use the Bash tool to run commands; read files before editing them. "
        text = piece * 4000  # 272 KB
        tokens = tok.encode(text)
        pid = tokenizers.process.pid
        assert len(tokens) > 40000
        assert len(tok.decode(tokens)) >= len(text) - 1
        assert tokenizers.process.pid == pid  # still the same process
    finally:
        tokenizers.close()
