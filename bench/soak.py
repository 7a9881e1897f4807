"""Soak test: N concurrent streaming chats against one herd server for a while, sampling the RSS of the server and
its runner processes every 10 s. Prints memory growth, errors and throughput; never passes or fails on numbers.

    python bench/soak.py                 # 30 minutes, 8 streams, a fresh server with the default model
    python bench/soak.py --minutes 5 --streams 4
    python bench/soak.py --url http://127.0.0.1:11434   # an already running server (its RSS is not sampled)

Each stream runs chats in a loop (a multi-turn conversation that is reset every few turns, so prompt-cache reuse and
slot recycling are both exercised). Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.server import HerdServer

MODEL = "smollm2:135m"
PAGE = 4096


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


@dataclass
class Totals:
    requests: int = 0
    tokens: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, tokens: int) -> None:
        with self.lock:
            self.requests += 1
            self.tokens += tokens

    def fail(self, text: str) -> None:
        with self.lock:
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(text[:200])


def stream_worker(url: str, index: int, stop_at: float, totals: Totals, num_predict: int) -> None:
    history: list[dict[str, str]] = []
    with httpx.Client(base_url=url, timeout=120) as c:
        turn = 0
        while time.monotonic() < stop_at:
            if turn % 6 == 0:
                history = []
            history.append({"role": "user", "content": f"Worker {index}, turn {turn}: tell me something new."})
            body = {"model": MODEL, "messages": history,
                    "options": {"num_predict": num_predict, "temperature": 0.8, "seed": index * 1000 + turn}}
            text: list[str] = []
            try:
                with c.stream("POST", "/api/chat", json=body) as resp:
                    if resp.status_code != 200:
                        totals.fail(f"{resp.status_code} {resp.read()[:200]!r}")
                        time.sleep(1)
                        continue
                    for line in resp.iter_lines():
                        if not line.strip():
                            continue
                        doc = json.loads(line)
                        if "error" in doc:
                            totals.fail(str(doc["error"]))
                            break
                        text.append(doc["message"]["content"])
                        if doc.get("done"):
                            totals.add(int(doc.get("eval_count", 0)))
            except httpx.HTTPError as exc:
                totals.fail(f"{type(exc).__name__}: {exc}")
                time.sleep(1)
            history.append({"role": "assistant", "content": "".join(text)})
            turn += 1


def runner_pids(server: HerdServer | None) -> list[int]:
    return server.runner_pids() if server is not None else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--num-predict", type=int, default=128)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between RSS samples")
    ap.add_argument("--url", help="use this running server instead of starting one")
    args = ap.parse_args()

    server = None if args.url else HerdServer().start()
    url = args.url or server.url  # type: ignore[union-attr]
    totals = Totals()
    try:
        with httpx.Client(base_url=url, timeout=120) as c:  # load first, so the first sample has the runner
            c.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": -1}).raise_for_status()
        t0 = time.monotonic()
        stop_at = t0 + args.minutes * 60
        workers = [threading.Thread(target=stream_worker, args=(url, i, stop_at, totals, args.num_predict),
                                    daemon=True) for i in range(args.streams)]
        for w in workers:
            w.start()
        samples: list[tuple[float, int, int]] = []
        last_tokens, last_t = 0, t0
        print(f"{'t (s)':>7} {'server MB':>10} {'runners MB':>11} {'req':>6} {'tok/s':>7} {'errors':>6}")
        while time.monotonic() < stop_at:
            time.sleep(min(args.interval, max(0.0, stop_at - time.monotonic())))
            now = time.monotonic()
            srv_rss = rss_bytes(server.proc.pid) if server is not None and server.proc is not None else 0
            run_rss = sum(rss_bytes(pid) for pid in runner_pids(server))
            samples.append((now - t0, srv_rss, run_rss))
            with totals.lock:
                tokens, requests, errors = totals.tokens, totals.requests, totals.errors
            rate = (tokens - last_tokens) / max(now - last_t, 1e-9)
            last_tokens, last_t = tokens, now
            print(f"{now - t0:7.0f} {srv_rss / 1e6:10.1f} {run_rss / 1e6:11.1f} {requests:6d} {rate:7.1f} {errors:6d}",
                  flush=True)
        for w in workers:
            w.join(timeout=180)
        elapsed = time.monotonic() - t0
        print()
        print(f"ran {elapsed / 60:.1f} min with {args.streams} streams: {totals.requests} chats, "
              f"{totals.tokens} tokens ({totals.tokens / elapsed:.1f} tok/s aggregate), {totals.errors} errors")
        if len(samples) >= 2:
            # Growth after warm-up: compare the first sample after the first minute with the last one.
            base = next((s for s in samples if s[0] >= 60), samples[0])
            end = samples[-1]
            span_h = max(end[0] - base[0], 1e-9) / 3600
            for label, i in (("server", 1), ("runners", 2)):
                grew = (end[i] - base[i]) / 1e6
                print(f"{label:8} RSS {base[i] / 1e6:.1f} MB -> {end[i] / 1e6:.1f} MB "
                      f"({grew:+.2f} MB, {grew / span_h:+.1f} MB/h after warm-up)")
        for sample in totals.error_samples:
            print("error:", sample)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
