"""One model served through two `herd rpc-worker` processes on loopback (llama.cpp's RPC backend, issue 17).

A real `herd serve` with HERD_RPC_SERVERS naming two live workers and one port where nothing listens, and models
made with `rpc_servers` parameters: "rpc-both" has its layers on the two workers, "rpc-local" stays here (none),
"rpc-ghost" needs the dead port. Checked: the same greedy text as local (stream and not, four at once), where the
layers are (/api/ps, /api/show), and each fault (a worker down at load, busy with another client, killed with -9
mid-stream, frozen with SIGSTOP mid-stream) ending in a clear error naming the worker within its timeout, with the
server alive and the next request served once the worker is back. Every wait is bounded in count and time.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from herd.engine import rpc
from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer, RpcWorker, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RPC_TIMEOUT = 5.0  # HERD_RPC_TIMEOUT here: the frozen-worker test waits this long, not the default minute
BOTH, LOCAL, GHOST = "rpc-both", "rpc-local", "rpc-ghost"
GREEDY = {"temperature": 0, "num_predict": 24, "seed": 1}
LONG = {"num_predict": 2000, "temperature": 2.0, "top_k": 0, "top_p": 1.0, "seed": 7}  # runs until cut
PROMPTS = ["Name three colours.", "What is 2+2?", "Say hello in French.", "Write a haiku about rain."]


@pytest.fixture(scope="module", autouse=True)
def _rpc_build() -> None:
    why = rpc.check_build()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def workers() -> Iterator[list[RpcWorker]]:
    made = [RpcWorker(), RpcWorker()]
    try:
        for w in made:
            w.start()
        yield made
    finally:
        for w in made:
            w.stop()


@pytest.fixture(scope="module")
def dead_port() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there: connections are refused


@pytest.fixture(scope="module")
def srv(workers: list[RpcWorker], dead_port: str) -> Iterator[HerdServer]:
    env = {
        "HERD_RPC_SERVERS": ",".join([w.endpoint for w in workers] + [dead_port]),
        "HERD_RPC_TIMEOUT": str(RPC_TIMEOUT),
        "HERD_NUM_PARALLEL": "4",
        "HERD_CONTEXT_LENGTH": "1024",
        "HERD_NUM_THREAD": "1",
        "HERD_MAX_LOADED_MODELS": "3",
    }
    server = HerdServer(env=env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as h:
            for name, servers in ((BOTH, ",".join(w.endpoint for w in workers)), (LOCAL, "none"), (GHOST, dead_port)):
                made = h.post(
                    "/api/create",
                    json={"model": name, "from": MODEL, "stream": False, "parameters": {"rpc_servers": servers}},
                )
                assert made.status_code == 200, made.text
        yield server
    finally:
        server.stop()


def chat(h: httpx.Client, model: str, prompt: str, options: dict[str, object], **kw: object) -> httpx.Response:
    return h.post(
        "/api/chat",
        json={
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": False,
            "options": options,
            **kw,
        },
    )


def stream_text(url: str, model: str, prompt: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "options": GREEDY}
    parts = []
    with httpx.Client(base_url=url, timeout=120) as c, c.stream("POST", "/api/chat", json=body) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():  # bounded: num_predict
            if line.strip():
                doc = json.loads(line)
                assert "error" not in doc, doc
                parts.append(doc["message"]["content"])
    return "".join(parts)


def answer_text(url: str, model: str, prompt: str) -> str:
    with httpx.Client(base_url=url, timeout=120) as c:
        resp = chat(c, model, prompt, GREEDY)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["message"]["content"])


def four_at_once(url: str, model: str, stream: bool) -> list[str]:
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(lambda p: (stream_text if stream else answer_text)(url, model, p), PROMPTS))


def served(srv: HerdServer, model: str) -> None:
    """The server is alive and answers the next request on `model` (which probes and loads again)."""
    with httpx.Client(base_url=srv.url, timeout=120) as h:
        assert h.get("/").status_code == 200
        resp = chat(h, model, "hi", {"num_predict": 3, "temperature": 0})
    assert resp.status_code == 200, resp.text
    assert resp.json()["eval_count"] == 3


def test_same_greedy_text_through_workers_as_local(srv: HerdServer, workers: list[RpcWorker]) -> None:
    local = four_at_once(srv.url, LOCAL, stream=True)
    assert all(local)
    assert four_at_once(srv.url, BOTH, stream=True) == local
    assert four_at_once(srv.url, BOTH, stream=False) == local
    with httpx.Client(base_url=srv.url, timeout=60) as h:
        rows = {m["name"]: m for m in h.get("/api/ps").json()["models"]}
        shown = h.post("/api/show", json={"model": BOTH}).json()
    placement = rows[f"{BOTH}:latest"]["placement"]
    where = {p["where"] for p in placement}
    assert where == {w.endpoint for w in workers}, placement
    assert sum(p["layers"] for p in placement) == 31  # SmolLM2-135M: 30 layers and the output layer
    assert shown["placement"] == placement
    assert {p["where"] for p in rows[f"{LOCAL}:latest"]["placement"]} == {"local"}


def counters(h: httpx.Client, model: str) -> tuple[int, int]:
    """The runner's fresh (prompt_evaluated, prompt_cached) once it is idle (up to 10 s)."""
    for _ in range(100):
        rows = [r for r in h.get("/api/herd/runners").json()["runners"] if r["model"] == f"{model}:latest"]
        if rows and rows[0]["active"] == 0 and rows[0].get("counters_age_s", 1.0) < 0.2:
            return int(rows[0]["prompt_evaluated"]), int(rows[0]["prompt_cached"])
        time.sleep(0.1)
    raise AssertionError(f"no fresh counters for {model}")


def test_constraints_and_prompt_cache_through_workers(srv: HerdServer) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    with httpx.Client(base_url=srv.url, timeout=120) as h:
        texts = [
            chat(h, m, "Pick a colour. Answer in JSON.", {"temperature": 0, "num_predict": 40}, format=schema).json()[
                "message"
            ]["content"]
            for m in (LOCAL, BOTH)
        ]
        assert texts[0] == texts[1] and "colour" in json.loads(texts[1]), texts
        history = [{"role": "user", "content": "Tell me about the history of Rome in detail. " * 6}]
        first = h.post(
            "/api/chat", json={"model": BOTH, "messages": history, "stream": False, "options": GREEDY}
        ).json()
        before = counters(h, BOTH)
        history += [first["message"], {"role": "user", "content": "And Greece?"}]
        h.post("/api/chat", json={"model": BOTH, "messages": history, "stream": False, "options": GREEDY})
        after = counters(h, BOTH)
    evaluated, cached = after[0] - before[0], after[1] - before[1]
    assert cached >= first["prompt_eval_count"] and evaluated < 20, (evaluated, cached)


def test_worker_down_at_load(srv: HerdServer, dead_port: str) -> None:
    with httpx.Client(base_url=srv.url, timeout=60) as h:
        t0 = time.monotonic()
        resp = chat(h, GHOST, "hi", GREEDY)
    assert resp.status_code == 502, resp.text
    error = resp.json()["error"]
    assert dead_port in error and "down" in error and time.monotonic() - t0 < RPC_TIMEOUT
    with httpx.Client(base_url=srv.url, timeout=60) as h:  # a worker the operator did not list: refused, not tried
        stray = chat(h, LOCAL, "hi", {**GREEDY, "rpc_servers": ["203.0.113.9:50052"]})
    assert stray.status_code == 400 and "203.0.113.9:50052" in stray.json()["error"], stray.text
    served(srv, LOCAL)


def unload(srv: HerdServer, model: str) -> None:
    with httpx.Client(base_url=srv.url, timeout=60) as h:
        h.post("/api/chat", json={"model": model, "messages": [], "keep_alive": 0})
        for _ in range(100):  # up to 10 s for the runner to go (and hang up on its workers)
            if not any(m["name"].startswith(model) for m in h.get("/api/ps").json()["models"]):
                return
            time.sleep(0.1)
    raise AssertionError(f"{model} did not unload")


def test_worker_busy_with_another_client(srv: HerdServer, workers: list[RpcWorker]) -> None:
    unload(srv, BOTH)
    other = socket.create_connection(("127.0.0.1", workers[1].port), timeout=5)
    try:
        other.sendall(rpc.HELLO_REQUEST)  # now the worker serves this client, and nobody else, until it leaves
        assert len(other.recv(64)) > 0
        with httpx.Client(base_url=srv.url, timeout=60) as h:
            t0 = time.monotonic()
            resp = chat(h, BOTH, "hi", GREEDY)
        assert resp.status_code == 504, resp.text
        error = resp.json()["error"]
        assert workers[1].endpoint in error and "busy" in error
        assert time.monotonic() - t0 < RPC_TIMEOUT + 3
    finally:
        other.close()
    served(srv, BOTH)


def streams_cut_by(srv: HerdServer, fault: threading.Event, n: int = 2) -> list[tuple[dict[str, object], float]]:
    """`n` long streams on rpc-both; once each has a first token, `fault` is set (the test then breaks a worker).
    Returns each stream's last line and when it came."""
    started = threading.Barrier(n + 1, timeout=120)
    endings: list[tuple[dict[str, object], float]] = []

    def one(i: int) -> None:
        body = {
            "model": BOTH,
            "messages": [{"role": "user", "content": f"Tell story {i}."}],
            "options": {**LONG, "seed": i},
        }
        with httpx.Client(base_url=srv.url, timeout=120) as c, c.stream("POST", "/api/chat", json=body) as resp:
            lines = resp.iter_lines()
            last = json.loads(next(lines))
            assert "error" not in last, last
            started.wait()
            for line in lines:  # bounded: an error line ends it, or num_predict
                if line.strip():
                    last = json.loads(line)
            endings.append((last, time.monotonic()))

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    started.wait()
    fault.set()
    for t in threads:
        t.join(timeout=60)
    assert len(endings) == n, endings
    return endings


def test_worker_killed_mid_stream(srv: HerdServer, workers: list[RpcWorker]) -> None:
    fault = threading.Event()
    killed_at: list[float] = []

    def kill() -> None:
        fault.wait(120)
        workers[1].signal(signal.SIGKILL)
        killed_at.append(time.monotonic())

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    endings = streams_cut_by(srv, fault)
    for last, at in endings:
        error = str(last.get("error", ""))
        assert workers[1].endpoint in error and "gone" in error, last
        assert at - killed_at[0] < RPC_TIMEOUT, f"ended {at - killed_at[0]:.1f} s after the kill"
    served(srv, LOCAL)
    with httpx.Client(base_url=srv.url, timeout=60) as h:
        resp = chat(h, BOTH, "hi", GREEDY)  # the worker is still gone: the reload's probe says so
    assert resp.status_code == 502 and workers[1].endpoint in resp.json()["error"], resp.text
    workers[1].proc.wait(timeout=10)  # type: ignore[union-attr]
    workers[1].start()  # back on the same port
    served(srv, BOTH)


def test_worker_frozen_mid_stream(srv: HerdServer, workers: list[RpcWorker]) -> None:
    fault = threading.Event()
    frozen_at: list[float] = []

    def freeze() -> None:
        fault.wait(120)
        workers[0].signal(signal.SIGSTOP)
        frozen_at.append(time.monotonic())

    freezer = threading.Thread(target=freeze, daemon=True)
    freezer.start()
    try:
        endings = streams_cut_by(srv, fault)
        for last, at in endings:
            error = str(last.get("error", ""))
            assert workers[0].endpoint in error and "HERD_RPC_TIMEOUT" in error, last
            assert at - frozen_at[0] < RPC_TIMEOUT + 4, f"ended {at - frozen_at[0]:.1f} s after the freeze"
        served(srv, LOCAL)
        with httpx.Client(base_url=srv.url, timeout=60) as h:
            resp = chat(h, BOTH, "hi", GREEDY)  # still frozen: the probe gets no answer
        assert resp.status_code == 504 and workers[0].endpoint in resp.json()["error"], resp.text
    finally:
        workers[0].signal(signal.SIGCONT)
    served(srv, BOTH)
