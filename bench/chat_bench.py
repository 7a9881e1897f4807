"""One prompt (~20 tokens in, 128 out, temperature 0): raw llama.cpp's decode loop, then herd over HTTP.

Prints decode tokens/s and time to first token for each, and the ratio herd/raw. Run with nothing else busy:
    python bench/chat_bench.py [--runs 8]
"""

from __future__ import annotations

import argparse
import statistics

import httpx
from _common import HerdServer, RawLlama, stream_chat, stream_chats

MODEL = "smollm2:135m"
N_OUT = 128
# A bare ChatML prompt of about 20 tokens (no default system prompt), that makes the model talk at length.
MESSAGES = [{"role": "system", "content": ""},
            {"role": "user", "content": "Write a long story about a dragon and a knight."}]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=8)
    args = ap.parse_args()

    server = HerdServer().start()
    try:
        with httpx.Client(base_url=server.url, timeout=600) as c:
            rendered = c.post("/api/chat", json={"model": MODEL, "messages": MESSAGES, "stream": False,
                                                 "_debug_render_only": True}).json()["_debug_info"]["rendered_template"]
            c.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": -1})

        # Raw and herd alternate, run after run (the runner sits idle while raw runs), so that both see the
        # same machine: its speed drifts over minutes.
        raw = RawLlama(n_seq=1)
        prompt = raw.tokenize(rendered)
        raw.run(prompt, 16)
        body = {"model": MODEL, "messages": MESSAGES, "options": {"temperature": 0, "num_predict": N_OUT}}
        stream_chat(server.url, body)  # warm
        raw_rates, raw_ttft, herd_rates, herd_ttft, herd_server_rates, counts = [], [], [], [], [], []
        for i in range(args.runs):
            # ABBA order: each side runs first in half of the pairs, so neither always inherits the other's
            # after-effects (caches, the host's drift).
            for side in (("raw", "herd") if i % 2 == 0 else ("herd", "raw")):
                if side == "raw":
                    ttft, rate = raw.run(prompt, N_OUT)
                    raw_ttft.append(ttft)
                    raw_rates.append(rate)
                    continue
                ttft, n, final, rate = stream_chats(server.url, [body])[0]
                herd_ttft.append(ttft)
                herd_rates.append(rate)
                counts.append(n)
                herd_server_rates.append(final["eval_count"] / final["eval_duration"] * 1e9)  # type: ignore[operator]
        raw.close()
    finally:
        server.stop()

    raw_r, herd_r = statistics.median(raw_rates), statistics.median(herd_rates)
    print(f"prompt tokens: {len(prompt)}, generated: {N_OUT} (herd streamed {counts} content chunks)")
    print(f"{'':28}{'decode tok/s':>14}{'TTFT ms':>10}")
    print(f"{'raw llama.cpp (low-level)':28}{raw_r:14.1f}{statistics.median(raw_ttft) * 1000:10.1f}")
    print(f"{'herd over HTTP (client)':28}{herd_r:14.1f}{statistics.median(herd_ttft) * 1000:10.1f}")
    print(f"{'herd (server eval rate)':28}{statistics.median(herd_server_rates):14.1f}")
    print(f"ratio herd/raw decode: {herd_r / raw_r:.3f}   (target >= 0.95)")


if __name__ == "__main__":
    main()
