"""The per-sequence runtime half of structured output: a token mask before sampling, one token after.

The engine worker owns one `TokenizerCache` per process and one `Constraint` per constrained sequence:

    constraint = Constraint(tokenizers.get(vocab), grammar)        # raises InvalidRequest before decoding
    each step:  constraint.apply(logits_row)                        # disallowed tokens -> -inf, in place
                token = sample(...)
                constraint.accept(token)
                if constraint.is_error(): end the sequence with an error
                elif constraint.is_finished() or token is EOG: end the sequence

EOS: the llguidance tokenizer is built with *all* of the model's end-of-generation tokens as its EOS set
(for SmolLM2: <|endoftext|>, <|im_end|>, <empty_output>), so the mask allows whichever one the model prefers
exactly when the grammar is in an accepting state, and allows only those once the grammar cannot continue.
`is_finished()` turns true at that point, so the engine can stop without spending a decode step on the EOS.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Hashable, Iterable
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
from llguidance import LLMatcher, LLTokenizer
from llguidance.llamacpp import lltokenizer_from_vocab
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from herd.constrain.grammar import one_line
from herd.errors import InvalidRequest

__all__ = ["Constraint", "TokenizerCache", "build_tokenizer", "eog_tokens", "special_tags"]


def eog_tokens(vocab: Any) -> list[int]:
    """Every token llama.cpp treats as end of generation (EOS, EOT, <|im_end|>, ...), in id order."""
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    return [t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)]


def build_tokenizer(vocab: Any, n_vocab: int | None = None) -> LLTokenizer:
    """An llguidance tokenizer for a llama.cpp vocab (about 0.2 s for a 49k vocab; cache it)."""
    eog = eog_tokens(vocab)
    with warnings.catch_warnings():
        # llguidance calls the deprecated llama_token_get_attr once per token: 49k identical warnings.
        warnings.simplefilter("ignore", DeprecationWarning)
        return lltokenizer_from_vocab(vocab, n_vocab=n_vocab, eos_token=eog or None)


class TokenizerCache:
    """One llguidance tokenizer per model, built on first use. Thread-safe.

    The key defaults to the vocab pointer's address, which is stable for as long as the model stays loaded;
    a worker that loads several models over its life should pass a key of its own (the model's blob digest).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokenizers: dict[Hashable, LLTokenizer] = {}

    def get(self, vocab: Any, *, key: Hashable | None = None, n_vocab: int | None = None) -> LLTokenizer:
        cache_key = key if key is not None else _address(vocab)
        with self._lock:  # held while building, so two sequences starting together build it once
            tokenizer = self._tokenizers.get(cache_key)
            if tokenizer is None:
                tokenizer = build_tokenizer(vocab, n_vocab)
                self._tokenizers[cache_key] = tokenizer
            return tokenizer

    def drop(self, key: Hashable) -> None:
        with self._lock:
            self._tokenizers.pop(key, None)


def _address(vocab: Any) -> int:
    value = getattr(vocab, "value", vocab)
    if not isinstance(value, int):
        raise TypeError(f"expected a llama_vocab pointer, got {vocab!r}")
    return value


def special_tags(tokenizer: LLTokenizer, tags: Iterable[str]) -> frozenset[str]:
    """The tags (e.g. "<tool_call>") that are one special token in this vocabulary (Qwen, Hermes models).

    Pass the result to `grammar_for_tool_calls(special_tags=...)` so the model may emit the tag as the single
    token it was trained on; spelled out in ordinary tokens it is accepted either way.
    """
    found = set()
    for tag in tags:
        if not (tag.startswith("<") and tag.endswith(">")):
            continue
        ids = tokenizer.tokenize_str(tag, parse_special=True)
        if len(ids) == 1 and tokenizer.is_special_token(ids[0]):
            found.add(tag)
    return frozenset(found)


class Constraint:
    """An llguidance matcher for one sequence, with a reusable bitmask buffer.

    Cost per token (apply + accept), measured with the default model's 49k vocab on a 2-core VM: median
    17-45 µs, mean 30-50 µs; the first masks of a fresh grammar can take up to ~0.7 ms while llguidance builds
    its lexer states. A decode step is 5-8 ms. Building a Constraint takes 0.3-2 ms.
    """

    __slots__ = ("_bitmask", "_eos", "_error", "_mask_bytes", "_matcher", "_vocab_size")

    def __init__(self, tokenizer: LLTokenizer, grammar: str, *, what: str = "JSON schema in format") -> None:
        """Compile `grammar`; raises InvalidRequest(`invalid <what>: ...`) if it does not compile."""
        # log_level 0: a rejected token is reported through is_error()/error, not printed to stderr.
        self._matcher = LLMatcher(tokenizer, grammar, log_level=0)
        if self._matcher.is_error():  # the constructor never raises: a bad grammar is an error state
            raise InvalidRequest(f"invalid {what}: {one_line(self._matcher.get_error())}")
        self._vocab_size: int = tokenizer.vocab_size
        self._bitmask = allocate_token_bitmask(1, self._vocab_size)
        # unpackbits works on bytes; little bit order matches llguidance's "bit i of word i // 32" layout
        # (on little-endian hosts, which is every host llama.cpp runs on).
        self._mask_bytes = self._bitmask.reshape(-1).view(np.uint8)
        self._eos: tuple[int, ...] = tuple(tokenizer.eos_tokens)
        self._error: str | None = None

    def apply(self, logits: npt.NDArray[np.float32]) -> None:
        """Set the logit of every token the grammar forbids now to -inf, in place.

        `logits` is one row, shape (n_vocab,). If the model's n_vocab is larger than llguidance's vocabulary
        (padded output layers), the extra ids are unknown to the grammar and are forbidden; if it is smaller,
        the mask is cut to fit.
        """
        fill_next_token_bitmask(self._matcher, self._bitmask)
        n = logits.shape[0]
        limit = min(n, self._vocab_size)
        allowed = np.unpackbits(self._mask_bytes, count=limit, bitorder="little").view(np.bool_)
        if not allowed.any():
            # Nothing the grammar allows exists in this model's logits (only possible with a cut mask). Let the
            # model end instead of sampling from an all -inf row, and report the error.
            self._error = "no token allowed by the grammar exists in the model's vocabulary"
            allowed[[t for t in self._eos if t < limit]] = True
        forbidden = np.logical_not(allowed, out=allowed)  # in place: no second 49k-element allocation
        np.copyto(logits[:limit], -np.inf, where=forbidden)
        if n > limit:
            logits[limit:] = -np.inf

    def accept(self, token: int) -> None:
        """Advance the grammar by the sampled token. A token the grammar forbids puts it in the error state."""
        if token >= self._vocab_size:
            self._error = f"token {token} is outside the grammar's vocabulary"
            return
        self._matcher.consume_token(token)

    def forced_tokens(self) -> list[int]:
        """The tokens the grammar admits as the only way on from here (llguidance's fast-forward tokens: JSON
        keys, punctuation), not yet accepted; [] when the model has a choice."""
        if self.is_error():
            return []
        return list(self._matcher.compute_ff_tokens())

    def is_finished(self) -> bool:
        """The grammar is complete and only EOS may follow (or EOS was accepted): end the sequence."""
        return self._matcher.is_stopped() and not self.is_error()

    def is_accepting(self) -> bool:
        """The output so far is a complete match (EOS is allowed), though the grammar may go on."""
        return self._matcher.is_accepting()

    def is_error(self) -> bool:
        return self._error is not None or self._matcher.is_error()

    @property
    def error(self) -> str:
        """Why the constraint failed; empty when it has not."""
        return self._error or self._matcher.get_error()
