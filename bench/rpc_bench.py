"""One model local against the same model through two `herd rpc-worker` processes on loopback (issue 17).

One real `herd serve` with HERD_RPC_SERVERS naming two workers started here, and two models made from the default
one: "bench-local" (`rpc_servers none`: every layer on this machine) and "bench-rpc" (every layer on the workers,
split by layer). In the same run, alternating the two so that the machine's drift hits both alike:

1. load time: an unloaded model's first request, wall clock at the client (the probe of the workers included);
2. 1 stream: one greedy chat of --out tokens, decode tokens/s from its first token to its last;
3. 4 streams: four such chats at once, the sum of their decode tokens/s.

Each figure is the median of --runs. Greedy text is compared too (it must be the same).

On one machine the workers share its cores with the runner and with each other, so this measures the RPC backend's
overhead (serialising each step's graph and activations over loopback TCP, one round trip per worker per step),
not a speed-up: a layer split runs the workers one after the other, and a model is spread over machines for their
memory, not for speed. The runner and each worker get --threads threads, one by default: llama.cpp's threads spin
while they wait, so three processes of two threads each on a loaded 2-core machine collapsed to under 1 tok/s here,
local and remote alike. As the workers take turns, about one thread computes at any moment in both setups.

    python bench/rpc_bench.py [--runs N] [--out N] [--threads N]

Prints numbers, never pass/fail. Every wait is bounded (--deadline seconds in all).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import httpx
from _common import HerdServer, stream_chats

from herd.config import physical_cores
from tests.integration.server import RpcWorker

MODEL = "smollm2:135m"
LOCAL, RPC = "bench-local", "bench-rpc"
PROMPTS = ["Tell me about the sea.", "Tell me about a forest.", "Tell me about a city.", "Tell me about a robot."]


class Deadline(Exception):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=int, default=64, help="tokens per stream")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=600.0)
    args = ap.parse_args()
    end = time.monotonic() + args.deadline

    def left() -> float:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise Deadline
        return remaining

    workers = [RpcWorker(args.threads), RpcWorker(args.threads)]
    srv: HerdServer | None = None
    rows: dict[str, dict[str, list[float]]] = {m: {"load": [], "one": [], "four": []} for m in (LOCAL, RPC)}
    texts: dict[str, list[str]] = {}
    try:
        for w in workers:
            w.start()
        env = {
            "HERD_RPC_SERVERS": ",".join(w.endpoint for w in workers),
            "HERD_NUM_PARALLEL": "4",
            "HERD_CONTEXT_LENGTH": "1024",
            "HERD_NUM_THREAD": str(args.threads),
            "HERD_KEEP_ALIVE": "10m",
        }
        srv = HerdServer(env=env).start()
        with httpx.Client(base_url=srv.url, timeout=300) as h:
            for name, servers in ((LOCAL, "none"), (RPC, ",".join(w.endpoint for w in workers))):
                made = h.post(
                    "/api/create",
                    json={"model": name, "from": MODEL, "stream": False, "parameters": {"rpc_servers": servers}},
                )
                assert made.status_code == 200, made.text

            def unload(model: str) -> None:
                h.post("/api/chat", json={"model": model, "messages": [], "keep_alive": 0})
                for _ in range(200):
                    left()
                    if not any(m["name"].startswith(model) for m in h.get("/api/ps").json()["models"]):
                        return
                    time.sleep(0.05)
                raise Deadline

            def body(model: str, prompt: str) -> dict[str, object]:
                return {
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "options": {"temperature": 0, "num_predict": args.out, "seed": 1},
                }

            for _ in range(args.runs):
                for model in (LOCAL, RPC):
                    unload(model)
                    t0 = time.perf_counter()
                    loaded = h.post("/api/chat", json={"model": model, "messages": []})
                    assert loaded.status_code == 200, loaded.text
                    rows[model]["load"].append(time.perf_counter() - t0)
                    left()
                    one = stream_chats(srv.url, [body(model, PROMPTS[0])])
                    rows[model]["one"].append(one[0][3])
                    left()
                    four = stream_chats(srv.url, [body(model, p) for p in PROMPTS])
                    rows[model]["four"].append(sum(r[3] for r in four))
                    texts.setdefault(
                        model,
                        [
                            h.post("/api/chat", json={**body(model, p), "stream": False}).json()["message"]["content"]
                            for p in PROMPTS
                        ],
                    )
                    unload(model)  # one model at a time: the other's runner must not share the cores
    except Deadline:
        print("deadline reached: the rows so far", file=sys.stderr)
    finally:
        if srv is not None:
            srv.stop()
        for w in workers:
            w.stop()

    def med(model: str, key: str) -> float:
        values = rows[model][key]
        return statistics.median(values) if values else float("nan")

    print(
        f"herd rpc bench: {MODEL}, {args.out} tokens per stream, median of {len(rows[RPC]['load'])} runs, "
        f"{args.threads} threads for the runner and for each worker, {physical_cores()} physical cores"
    )
    print(f"{'':<26}{'local':>10}{'2 loopback workers':>20}{'workers/local':>15}")
    for key, label, unit in (("load", "load time", "s"), ("one", "1 stream", "tok/s"), ("four", "4 streams", "tok/s")):
        a, b = med(LOCAL, key), med(RPC, key)
        print(f"{label + ' (' + unit + ')':<26}{a:>10.2f}{b:>20.2f}{b / a if a else float('nan'):>15.2f}")
    same = texts.get(LOCAL) == texts.get(RPC) and bool(texts.get(LOCAL))
    print(f"greedy text the same through the workers: {'yes' if same else 'NO'} ({len(PROMPTS)} prompts)")
    print("One machine: the workers share its cores, so this is the RPC backend's overhead, not a speed-up.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
