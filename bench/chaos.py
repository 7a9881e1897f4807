"""Chaos: 16 clients for a while against one herd server, mixing everything a real day throws at it.

    python bench/chaos.py                  # 10 minutes, 16 clients, a fresh server with the default model
    python bench/chaos.py --minutes 2 --clients 8
    python bench/chaos.py --url http://127.0.0.1:11434   # a running server (its RSS and runners are not read)

Each client loops, picking at random: chat, generate or embed, streamed or not; a streamed request dropped after a
few lines (a client that leaves); a request with a deadline shorter than a model load, on a model that is not loaded
(a client timeout during a load); an unload (keep_alive 0); a copy of the default model to a spare name; a delete
of a spare. Loopback only; bounded by --minutes and by --max-requests.

Every request has a deadline. At the end it prints: requests sent, answered, cancelled by the client, failed with a
clear error (a status >= 400 with Ollama's {"error": ...}, or a stream's final error line), failed without one,
hung (past its deadline: none allowed), busy slots left (from /api/herd/runners: 0 expected once idle), runner
processes left beyond the loaded models (0 expected), and the server's RSS at start and end. Never passes or fails.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.soak import rss_bytes
from tests.integration.server import HerdServer

MODEL = "smollm2:135m"
SPARES = [f"chaos-spare-{i}" for i in range(4)]
DEADLINE_S = 120.0  # no request may take longer than this: past it, it counts as hung (--deadline)


class Hung(Exception):
    pass


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, kind: str, detail: str = "") -> None:
        with self.lock:
            self.counts[outcome] += 1
            self.kinds[f"{kind.split()[0]}:{outcome}"] += 1  # by verb; the samples keep the model
            if detail and outcome not in ("answered", "cancelled"):
                bucket = self.samples.setdefault(outcome, [])
                if len(bucket) < 6:
                    bucket.append(f"{kind}: {detail[:200]}")


def clear_error(resp: httpx.Response, body: bytes) -> str | None:
    """The error text when the response is Ollama's {"error": "..."}, else None."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"]:
        return str(doc["error"])
    return None


def request_body(kind: str, model: str, rng: random.Random, stream: bool) -> tuple[str, dict[str, object]]:
    opts = {"num_predict": rng.randint(4, 24), "temperature": rng.choice([0, 0.8]), "seed": rng.randint(0, 9999)}
    if kind == "chat":
        return "/api/chat", {"model": model, "stream": stream, "options": opts,
                             "messages": [{"role": "user", "content": rng.choice(["Hi", "Name a colour.",
                                                                                  "Count to five."])}]}
    if kind == "generate":
        return "/api/generate", {"model": model, "stream": stream, "options": opts,
                                 "prompt": rng.choice(["Once upon a time", "The capital of France is", "1, 2, 3,"])}
    return "/api/embed", {"model": model, "input": [rng.choice(["hello", "a cat", "the sky"])
                                                     for _ in range(rng.randint(1, 3))]}


def one_request(c: httpx.Client, tally: Tally, kind: str, path: str, body: dict[str, object], stream: bool,
                drop_after: int | None, deadline_s: float, cancel_on_timeout: bool) -> None:
    """Send one request and count how it ended. `drop_after`: lines read before the client leaves. A timeout is a
    cancellation when the request was sent with a deliberately short deadline, else the request hung."""
    t0 = time.monotonic()
    timeout = httpx.Timeout(deadline_s, connect=10)
    kind = f"{kind} {body.get('model')}{' stream' if stream else ''}"
    try:
        if not stream:
            resp = c.post(path, json=body, timeout=timeout)
            if resp.status_code >= 400:
                err = clear_error(resp, resp.content)
                tally.add("failed_clear" if err else "failed_unclear", kind, f"{resp.status_code} {err or resp.text}")
                return
            doc = resp.json()
            if isinstance(doc, dict) and doc.get("error"):
                tally.add("failed_clear", kind, str(doc["error"]))
            else:
                tally.add("answered", kind)
            return
        with c.stream("POST", path, json=body, timeout=timeout) as resp:
            if resp.status_code >= 400:
                data = resp.read()
                err = clear_error(resp, data)
                detail = f"{resp.status_code} {err or data[:200]!r}"
                tally.add("failed_clear" if err else "failed_unclear", kind, detail)
                return
            lines = 0
            for line in resp.iter_lines():
                if time.monotonic() - t0 > deadline_s:
                    raise Hung(f"stream still open after {deadline_s:.0f} s")
                if not line.strip():
                    continue
                doc = json.loads(line)
                if "error" in doc:
                    tally.add("failed_clear", kind, str(doc["error"]))
                    return
                if doc.get("done"):
                    tally.add("answered", kind)
                    return
                lines += 1
                if drop_after is not None and lines >= drop_after:
                    tally.add("cancelled", kind)  # leaving the with block closes the connection mid-stream
                    return
            tally.add("failed_unclear", kind, "stream ended without a done line")
    except httpx.TimeoutException as exc:
        if cancel_on_timeout:
            tally.add("cancelled", kind)
        else:
            tally.add("hung", kind, f"{type(exc).__name__} after {time.monotonic() - t0:.1f} s")
    except Hung as exc:
        # Past a deliberately short deadline the client gives up, as with a timeout: that is a cancellation.
        tally.add("cancelled" if cancel_on_timeout else "hung", kind, str(exc))
    except (httpx.HTTPError, ValueError) as exc:
        tally.add("failed_unclear", kind, f"{type(exc).__name__}: {exc}")


def admin(c: httpx.Client, tally: Tally, kind: str, method: str, path: str, body: dict[str, object]) -> None:
    try:
        resp = c.request(method, path, json=body, timeout=httpx.Timeout(DEADLINE_S, connect=10))
    except httpx.TimeoutException as exc:
        tally.add("hung", kind, f"{type(exc).__name__}")
        return
    except httpx.HTTPError as exc:
        tally.add("failed_unclear", kind, f"{type(exc).__name__}: {exc}")
        return
    if resp.status_code >= 400:
        err = clear_error(resp, resp.content)
        tally.add("failed_clear" if err else "failed_unclear", kind, f"{resp.status_code} {err or resp.text}")
    else:
        tally.add("answered", kind)


def client(url: str, index: int, stop_at: float, tally: Tally, budget: list[int], budget_lock: threading.Lock,
           seed: int, deadline_s: float) -> None:
    rng = random.Random(seed * 1000 + index)
    with httpx.Client(base_url=url) as c:
        while time.monotonic() < stop_at:
            with budget_lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            roll = rng.random()
            model = MODEL if rng.random() < 0.7 else rng.choice(SPARES)
            if roll < 0.55:
                kind = rng.choice(["chat", "chat", "generate", "embed"])
                stream = kind != "embed" and rng.random() < 0.6
                drop = rng.randint(0, 3) if stream and rng.random() < 0.25 else None
                path, body = request_body(kind, model, rng, stream)
                one_request(c, tally, kind, path, body, stream, drop, deadline_s, False)
            elif roll < 0.70:
                # A client that gives up during a load: a deadline shorter than loading a model that is not loaded.
                kind = rng.choice(["chat", "generate"])
                path, body = request_body(kind, rng.choice(SPARES), rng, rng.random() < 0.5)
                one_request(c, tally, f"{kind}-timeout", path, body, bool(body["stream"]), None,
                            rng.uniform(0.05, 1.0), True)
            elif roll < 0.80:
                admin(c, tally, "unload", "POST", "/api/generate", {"model": model, "keep_alive": 0})
            elif roll < 0.90:
                admin(c, tally, "copy", "POST", "/api/copy", {"source": MODEL, "destination": rng.choice(SPARES)})
            else:
                admin(c, tally, "delete", "DELETE", "/api/delete", {"model": rng.choice(SPARES)})


def settle(url: str, timeout: float = 60) -> tuple[int, list[dict[str, object]], list[dict[str, object]]]:
    """Wait until no runner has an active sequence (or timeout); (busy slots, runners, loaded models)."""
    deadline = time.monotonic() + timeout
    busy, runners, loaded = -1, [], []
    with httpx.Client(base_url=url, timeout=30) as c:
        while time.monotonic() < deadline:
            runners = c.get("/api/herd/runners").json().get("runners", [])
            loaded = c.get("/api/ps").json().get("models", [])
            busy = sum(int(r.get("active", 0)) for r in runners)
            if busy == 0:
                break
            time.sleep(1)
    return busy, runners, loaded


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-requests", type=int, default=50_000, help="stop sending after this many requests")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=DEADLINE_S,
                    help="seconds a request may take before it counts as hung (raise it on an overloaded machine)")
    ap.add_argument("--url", help="use this running server instead of starting one")
    args = ap.parse_args()

    server = None if args.url else HerdServer().start()
    url = args.url or server.url  # type: ignore[union-attr]
    pid = server.proc.pid if server is not None and server.proc is not None else None
    tally = Tally()
    try:
        with httpx.Client(base_url=url, timeout=120) as c:  # the default model loaded, and the spares exist
            c.post("/api/chat", json={"model": MODEL, "messages": []}).raise_for_status()
            for name in SPARES:
                c.post("/api/copy", json={"source": MODEL, "destination": name}).raise_for_status()
        rss_start = rss_bytes(pid) if pid else 0
        t0 = time.monotonic()
        stop_at = t0 + args.minutes * 60
        budget, budget_lock = [args.max_requests], threading.Lock()
        workers = [threading.Thread(target=client, args=(url, i, stop_at, tally, budget, budget_lock, args.seed,
                                                            args.deadline),
                                    daemon=True) for i in range(args.clients)]
        for w in workers:
            w.start()
        while time.monotonic() < stop_at and any(w.is_alive() for w in workers):
            time.sleep(min(10.0, max(0.0, stop_at - time.monotonic())))
            with tally.lock:
                done = sum(tally.counts.values())
            print(f"{time.monotonic() - t0:6.0f} s  {done} requests  {dict(tally.counts)}", flush=True)
        for w in workers:
            w.join(timeout=args.deadline + 10)
        stuck = sum(w.is_alive() for w in workers)  # a client still inside a request past every deadline
        busy, runners, loaded = settle(url)
        # Liveness: once the storm is over, one plain chat must still be answered (a wedged scheduler would not).
        t_live = time.monotonic()
        try:
            live = httpx.post(url + "/api/chat", json={"model": MODEL, "stream": False, "options": {"num_predict": 4},
                                                      "messages": [{"role": "user", "content": "Hi"}]},
                              timeout=args.deadline)
            alive = f"{live.status_code} in {time.monotonic() - t_live:.1f} s"
        except httpx.HTTPError as exc:
            alive = f"no answer ({type(exc).__name__} after {time.monotonic() - t_live:.1f} s)"
        # The final figures are read after the liveness chat (which may have loaded a runner), once a runner that
        # is ending (an unload just before the end) has had a moment to exit.
        time.sleep(2)
        busy, runners, loaded = settle(url)
        procs = len(server.runner_pids()) if server is not None else None
        rss_end = rss_bytes(pid) if pid else 0
        elapsed = time.monotonic() - t0

        counts = tally.counts
        sent = sum(counts.values()) + stuck
        print()
        print(f"ran {elapsed / 60:.1f} min with {args.clients} clients")
        print(f"requests sent                 {sent}")
        print(f"answered                      {counts['answered']}")
        print(f"cancelled by the client       {counts['cancelled']}")
        print(f"failed with a clear error     {counts['failed_clear']}")
        print(f"failed without a clear error  {counts['failed_unclear']}")
        print(f"hung                          {counts['hung'] + stuck}")
        print(f"busy slots left               {busy}")
        print(f"a chat after the run          {alive}")
        if procs is not None:
            # A model may hold two runners (chat and embeddings): compare with the runners the server reports.
            print(f"runner processes left         {procs} for {len(loaded)} loaded model(s) with {len(runners)} "
                  f"runner(s): {max(0, procs - len(runners))} beyond the loaded runners")
        if pid:
            print(f"server RSS                    {rss_start / 1e6:.1f} MB at start, {rss_end / 1e6:.1f} MB at end")
        print("by kind:", ", ".join(f"{k} {v}" for k, v in sorted(tally.kinds.items())))
        for outcome, lines in tally.samples.items():
            for line in lines:
                print(f"  {outcome}: {line}")
        print(f"runners: {json.dumps(runners)}")
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
