"""Tokenization in the server process, from a vocab-only load of the GGUF (no weights), for prompt fitting."""

from __future__ import annotations

import ctypes
import threading

_log_cb = None
_lock = threading.Lock()
_cache: dict[str, Tokenizer] = {}


def _silence(L: object) -> None:
    global _log_cb
    if _log_cb is None:
        _log_cb = L.llama_log_callback(lambda level, text, data: None)  # type: ignore[attr-defined]
        L.llama_log_set(_log_cb, ctypes.c_void_p(0))  # type: ignore[attr-defined]


class Tokenizer:
    def __init__(self, model_path: str) -> None:
        import llama_cpp as L

        self.L = L
        _silence(L)
        params = L.llama_model_default_params()
        params.vocab_only = True
        self.model = L.llama_model_load_from_file(model_path.encode(), params)
        if not self.model:
            raise RuntimeError(f"unable to load vocabulary of {model_path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self.bos = L.llama_vocab_bos(self.vocab)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self._lock = threading.Lock()

    def encode(self, text: str, add_special: bool = True) -> tuple[int, ...]:
        """Special tokens in the rendered template (<|im_start|>, ...) are parsed as such, as Ollama does."""
        data = text.encode("utf-8")
        n_max = len(data) + 16
        with self._lock:
            buf = (self.L.llama_token * n_max)()
            n = self.L.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, True)
            if n < 0:
                buf = (self.L.llama_token * -n)()
                n = self.L.llama_tokenize(self.vocab, data, len(data), buf, -n, add_special, True)
            return tuple(buf[:n])

    def decode(self, tokens: tuple[int, ...] | list[int]) -> str:
        out = bytearray()
        buf = ctypes.create_string_buffer(256)
        with self._lock:
            for tok in tokens:
                if not 0 <= tok < self.n_vocab:
                    continue
                n = self.L.llama_token_to_piece(self.vocab, tok, buf, 256, 0, True)
                out += buf.raw[: max(n, 0)]
        return out.decode("utf-8", "replace")


def get_tokenizer(model_path: str) -> Tokenizer:
    with _lock:
        tok = _cache.get(model_path)
        if tok is None:
            tok = Tokenizer(model_path)
            _cache[model_path] = tok
        return tok
