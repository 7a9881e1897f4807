"""Issue 12 points 2, 3, 5, 8 and issue 11 point 6 against a real server with the real model."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

LONG = "Tell me everything about the long history of the Roman Empire and its roads. " * 60  # ~1000 tokens


def open_chat(server: HerdServer, body: dict[str, object]) -> socket.socket:
    """Send a streaming chat on a raw socket and return at once: headers come only with the first token, so this
    is how a client leaves before it (httpx waits for the headers)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(predicate())  # type: ignore[operator]


def runner_active(c: httpx.Client) -> int | None:
    """What the runner itself reports, if its counters are fresh (None while it is deep in a step)."""
    rows = [r for r in c.get("/api/herd/runners").json()["runners"] if r["model"] == MODEL and r["kind"] == "chat"]
    if not rows or rows[0].get("counters_age_s", 99) >= 1.0:
        return None
    return int(rows[0]["runner_active"])


def server_active(c: httpx.Client) -> int:
    return sum(int(r["active"]) for r in c.get("/api/herd/runners").json()["runners"])


@pytest.fixture(scope="module")
def own_server() -> Iterator[HerdServer]:
    srv = HerdServer(env={"HERD_MAX_NUM_CTX": "100000000", "HERD_LOAD_TIMEOUT": "120"}).start()
    yield srv
    srv.stop()


def test_leaving_during_a_long_prefill_cancels_it_in_the_runner(http: httpx.Client, server: HerdServer) -> None:
    http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": "10m"})
    body = {"model": MODEL, "messages": [{"role": "user", "content": LONG}], "options": {"num_ctx": 4096}}
    sock = open_chat(server, body)
    try:
        assert wait_until(lambda: server_active(http) == 1, 30)
        time.sleep(0.3)  # into the prefill
    finally:
        sock.close()  # during the prefill: no header has come yet
    t0 = time.monotonic()
    assert wait_until(lambda: runner_active(http) == 0, 5), "the prefill went on after the client left"
    print(f"runner slot free {time.monotonic() - t0:.3f}s after the client left during prefill")


def test_runner_view_answers_at_once_while_the_runner_is_busy(http: httpx.Client, server: HerdServer) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": LONG}], "options": {"num_ctx": 4096}}
    sock = open_chat(server, body)
    try:
        assert wait_until(lambda: server_active(http) == 1, 30)
        worst = 0.0
        for _ in range(5):
            t0 = time.monotonic()
            rows = http.get("/api/herd/runners").json()["runners"]
            worst = max(worst, time.monotonic() - t0)
            assert any(r["model"] == MODEL and r["active"] >= 1 for r in rows), rows
        print(f"/api/herd/runners worst {worst * 1000:.0f} ms during a prefill")
        assert worst < 1.0
    finally:
        sock.close()


def test_clients_that_time_out_during_a_load_and_retry_leave_one_runner(own_server: HerdServer) -> None:
    # A fresh num_ctx and no mmap: a load that takes a while, during which each client gives up.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False,
            "options": {"num_ctx": 3072, "use_mmap": False, "num_predict": 2}}
    gave_up = 0
    for _ in range(10):
        with httpx.Client(base_url=own_server.url, timeout=0.05) as c:
            try:
                c.post("/api/chat", json=body)
            except httpx.TimeoutException:
                gave_up += 1
        assert len(own_server.runner_pids()) <= 1
    assert gave_up >= 1
    with httpx.Client(base_url=own_server.url, timeout=120) as c:
        assert c.post("/api/chat", json=body).status_code == 200
    assert len(own_server.runner_pids()) == 1
    with httpx.Client(base_url=own_server.url, timeout=120) as c:
        c.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0})


def test_a_load_that_cannot_fit_in_memory_is_refused_before_any_process() -> None:
    # num_ctx is capped at the model's training context (8192), so the KV cache is made absurd by the number of
    # parallel sequences: 8192 cells x 20000 sequences x 30 layers x 3 KV heads x 128 x 2 bytes.
    srv = HerdServer(env={"HERD_NUM_PARALLEL": "20000", "HERD_MAX_NUM_CTX": "100000000"}).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            r = c.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                          "stream": False, "options": {"num_ctx": 50_000_000}})
            assert r.status_code == 500
            assert re.fullmatch(r"model requires more system memory \(\d+\.\d [KMGTP]iB\) than is available "
                                r"\(\d+\.\d [KMGTP]iB\)", r.json()["error"]), r.json()
            assert not srv.runner_pids()
    finally:
        srv.stop()


def test_the_server_process_does_not_load_llama_cpp_to_tokenize(own_server: HerdServer) -> None:
    with httpx.Client(base_url=own_server.url, timeout=120) as c:
        assert c.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                         "stream": False, "options": {"num_predict": 2}}).status_code == 200
    assert own_server.proc is not None
    maps = Path(f"/proc/{own_server.proc.pid}/maps").read_text()
    assert "libllama" not in maps  # tokenizing happened in a child process
