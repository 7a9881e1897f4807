"""Tokenization for prompt fitting, done by llama.cpp in a small child process, never in the server.

A GGUF is untrusted input and llama.cpp parses it in native code: a malformed vocabulary may crash whatever process
loads it. So the server keeps one tokenizer process (vocab-only loads, no weights, one per model file, cached there)
and asks it over a pipe. If it dies, the request that was asking gets a RunnerFailed and the next call starts a new
one. Its answers are unpickled with no class admitted at all: only tuples, strings, ints and bools come back.

Each call is one round trip on a pipe (tens of microseconds beside the tokenization itself); calls are made from
worker threads (`asyncio.to_thread`), one at a time.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import threading
from typing import BinaryIO

from herd.errors import RunnerFailed

_HEADER = struct.Struct("!I")
_CHILD = "from herd.engine.tokenizer import child_main; child_main()"


class _BuiltinsOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        raise pickle.UnpicklingError(f"tokenizer process sent a forbidden type {module}.{name}")


def _write(out: BinaryIO, message: object) -> None:
    payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(len(payload)) + payload)
    out.flush()


def _read_exact(inp: BinaryIO, n: int) -> bytes:
    # An unbuffered pipe returns what is there, at most a pipe's capacity (64 KiB): a longer message (a coding
    # agent's prompt) arrives in several reads. Only an empty read is the end.
    parts = []
    while n > 0:
        data = inp.read(n)
        if not data:
            raise EOFError
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def _read(inp: BinaryIO, trusted: bool) -> object:
    size = _HEADER.unpack(_read_exact(inp, _HEADER.size))[0]
    data = _read_exact(inp, size)
    return pickle.loads(data) if trusted else _BuiltinsOnly(io.BytesIO(data)).load()


class TokenizerProcess:
    """The child process and its pipe; restarted on the next call after it dies."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _ensure(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    close_fds=True)
            self._proc = proc
        return proc

    def call(self, *request: object) -> tuple[object, ...]:
        with self._lock:
            proc = self._ensure()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _write(proc.stdin, request)
                reply = _read(proc.stdout, trusted=False)
            except (EOFError, OSError, pickle.UnpicklingError, ValueError) as exc:
                self._stop_locked()
                raise RunnerFailed(f"tokenizer process stopped: {type(exc).__name__}") from None
        if not isinstance(reply, tuple) or not reply:
            raise RunnerFailed("tokenizer process sent a malformed reply")
        if reply[0] != "ok":
            raise RunnerFailed(str(reply[1]) if len(reply) > 1 else "tokenizer failed")
        return reply[1:]

    def _stop_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for f in (proc.stdin, proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        with self._lock:
            self._stop_locked()


class Tokenizer:
    """One model's vocabulary, as the prompt builder uses it: `encode`, `decode`, `add_bos`, `bos`, `n_vocab`."""

    def __init__(self, model_path: str, process: TokenizerProcess) -> None:
        self.model_path = model_path
        self._process = process
        add_bos, bos, n_vocab = process.call("open", model_path)
        self.add_bos = bool(add_bos)
        self.bos = int(bos)  # type: ignore[call-overload]
        self.n_vocab = int(n_vocab)  # type: ignore[call-overload]

    def encode(self, text: str, add_special: bool = True) -> tuple[int, ...]:
        """Special tokens in the rendered template (<|im_start|>, ...) are parsed as such, as Ollama does."""
        (tokens,) = self._process.call("encode", self.model_path, text, bool(add_special))
        if not isinstance(tokens, tuple):
            raise RunnerFailed("tokenizer process sent a malformed reply")
        return tokens  # type: ignore[return-value]

    def decode(self, tokens: tuple[int, ...] | list[int]) -> str:
        (text,) = self._process.call("decode", self.model_path, tuple(int(t) for t in tokens))
        return str(text)

    def special_tokens(self, texts: tuple[str, ...]) -> frozenset[str]:
        """Which of `texts` are one special (control or user-defined) token in this vocabulary: a constraint
        then lets the model write that token, the one it was trained on, for the marker."""
        if not texts:
            return frozenset()
        (found,) = self._process.call("special", self.model_path, tuple(texts))
        return frozenset(str(t) for t in found) if isinstance(found, tuple) else frozenset()  # type: ignore[union-attr]


class Tokenizers:
    """Tokenizers per model file, all served by one child process."""

    def __init__(self) -> None:
        self.process = TokenizerProcess()
        self._cache: dict[str, Tokenizer] = {}
        self._lock = threading.Lock()

    def get(self, model_path: str) -> Tokenizer:
        with self._lock:
            tok = self._cache.get(model_path)
            if tok is None:
                tok = Tokenizer(model_path, self.process)
                self._cache[model_path] = tok
            return tok

    def close(self) -> None:
        self.process.close()
        with self._lock:
            self._cache.clear()


# The server's one set (the in-process tests replace it with a fake, see tests/inproc/conftest.py).
default = Tokenizers()


def get_tokenizer(model_path: str) -> Tokenizer:
    return default.get(model_path)


# ---- the child process -----------------------------------------------------------------------------------


class _Vocab:
    def __init__(self, L: object, model_path: str) -> None:
        import ctypes

        self.L = L
        params = L.llama_model_default_params()  # type: ignore[attr-defined]
        params.vocab_only = True
        self.model = L.llama_model_load_from_file(model_path.encode(), params)  # type: ignore[attr-defined]
        if not self.model:
            raise RuntimeError(f"unable to load vocabulary of {model_path}")
        self.vocab = L.llama_model_get_vocab(self.model)  # type: ignore[attr-defined]
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))  # type: ignore[attr-defined]
        self.bos = int(L.llama_vocab_bos(self.vocab))  # type: ignore[attr-defined]
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))  # type: ignore[attr-defined]
        self._piece = ctypes.create_string_buffer(256)

    def encode(self, text: str, add_special: bool) -> tuple[int, ...]:
        L = self.L
        data = text.encode("utf-8", "replace")
        n_max = len(data) + 16
        buf = (L.llama_token * n_max)()  # type: ignore[attr-defined]
        n = L.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, True)  # type: ignore[attr-defined]
        if n < 0:
            buf = (L.llama_token * -n)()  # type: ignore[attr-defined]
            n = L.llama_tokenize(self.vocab, data, len(data), buf, -n, add_special, True)  # type: ignore[attr-defined]
        return tuple(buf[:n])

    def special(self, texts: tuple[str, ...]) -> tuple[str, ...]:
        L = self.L
        special_attrs = L.LLAMA_TOKEN_ATTR_CONTROL | L.LLAMA_TOKEN_ATTR_USER_DEFINED  # type: ignore[attr-defined]
        out = []
        for text in texts:
            ids = self.encode(text, False)
            if len(ids) == 1 and L.llama_vocab_get_attr(self.vocab, ids[0]) & special_attrs:  # type: ignore[attr-defined]
                out.append(text)
        return tuple(out)

    def decode(self, tokens: tuple[int, ...]) -> str:
        out = bytearray()
        buf = self._piece
        for tok in tokens:
            if 0 <= tok < self.n_vocab:
                n = self.L.llama_token_to_piece(self.vocab, tok, buf, 256, 0, True)  # type: ignore[attr-defined]
                out += buf.raw[: max(n, 0)]
        return out.decode("utf-8", "replace")


def child_main() -> None:
    """Serve tokenize requests on stdin/stdout until the server closes the pipe."""
    import ctypes

    import llama_cpp as L

    inp = os.fdopen(sys.stdin.fileno(), "rb", buffering=0)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # nothing else may write into the reply pipe
    log_cb = L.llama_log_callback(lambda level, text, data: None)  # kept referenced: ctypes must not free it
    L.llama_log_set(log_cb, ctypes.c_void_p(0))
    vocabs: dict[str, _Vocab] = {}
    while True:
        try:
            request = _read(inp, trusted=True)
        except EOFError:
            return
        try:
            op, path = request[0], request[1]  # type: ignore[index]
            vocab = vocabs.get(path)
            if vocab is None:
                vocab = vocabs[path] = _Vocab(L, path)
            if op == "open":
                reply: tuple[object, ...] = ("ok", vocab.add_bos, vocab.bos, vocab.n_vocab)
            elif op == "encode":
                reply = ("ok", vocab.encode(request[2], request[3]))  # type: ignore[index]
            elif op == "decode":
                reply = ("ok", vocab.decode(request[2]))  # type: ignore[index]
            elif op == "special":
                reply = ("ok", vocab.special(tuple(str(t) for t in request[2])))  # type: ignore[index]
            else:
                reply = ("err", f"unknown tokenizer request {op!r}")
        except Exception as exc:
            reply = ("err", str(exc))
        try:
            _write(out, reply)
        except (BrokenPipeError, OSError):
            return
