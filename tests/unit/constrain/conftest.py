"""Session fixtures for the constrain tests; the helpers live in constrain_support.py."""

from __future__ import annotations

from collections.abc import Iterator

import llama_cpp
import pytest
from constrain_support import FakeModel, Vocab, default_model_path
from llguidance import LLTokenizer

from herd.constrain.matcher import TokenizerCache


@pytest.fixture(scope="session")
def vocab() -> Iterator[Vocab]:
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True  # tokenizer only: loads in milliseconds, no weights
    model = llama_cpp.llama_model_load_from_file(default_model_path().encode(), params)
    assert model, "could not load the default model's vocabulary"
    ptr = llama_cpp.llama_model_get_vocab(model)
    n = llama_cpp.llama_vocab_n_tokens(ptr)
    eog = frozenset(t for t in range(n) if llama_cpp.llama_vocab_is_eog(ptr, t))
    yield Vocab(ptr, n, eog)
    llama_cpp.llama_model_free(model)


@pytest.fixture(scope="session")
def tokenizer_cache() -> TokenizerCache:
    return TokenizerCache()


@pytest.fixture(scope="session")
def tokenizer(vocab: Vocab, tokenizer_cache: TokenizerCache) -> LLTokenizer:
    return tokenizer_cache.get(vocab.ptr)


@pytest.fixture(scope="session")
def fake_model(vocab: Vocab) -> FakeModel:
    return FakeModel(vocab)
