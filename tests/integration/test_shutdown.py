"""Graceful shutdown: SIGTERM stops taking new requests (503 "server is shutting down"), lets running streams finish
within HERD_SHUTDOWN_GRACE, ends the ones still running after it with an error line, and leaves no runner process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

ENV = {"HERD_NUM_PARALLEL": "2", "HERD_CONTEXT_LENGTH": "1024", "HERD_NUM_THREAD": "1"}
LONG = {"temperature": 2.0, "top_k": 0, "top_p": 1.0, "seed": 7}
SHUTTING_DOWN = {"error": "server is shutting down"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return "State:\tZ" not in open(f"/proc/{pid}/status").read()
    except OSError:
        return False


def start(grace: float) -> HerdServer:
    return HerdServer(env={**ENV, "HERD_SHUTDOWN_GRACE": str(grace)}).start()


@pytest.fixture()
def cleanup() -> Iterator[list[HerdServer]]:
    servers: list[HerdServer] = []
    yield servers
    for srv in servers:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
        shutil.rmtree(srv.models_dir, ignore_errors=True)


def load(srv: HerdServer) -> list[int]:
    with httpx.Client(base_url=srv.url, timeout=60) as h:
        assert h.post("/api/chat", json={"model": MODEL, "messages": []}).status_code == 200
    pids = srv.runner_pids()
    assert pids
    return pids


def wait_exit(srv: HerdServer, timeout: float) -> float:
    assert srv.proc is not None
    t0 = time.monotonic()
    try:
        srv.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit within {timeout}s of SIGTERM")
    return time.monotonic() - t0


def test_sigterm_lets_running_streams_finish_and_refuses_new_requests(cleanup: list[HerdServer]) -> None:
    srv = start(grace=30)
    cleanup.append(srv)
    pids = load(srv)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}],
            "options": {**LONG, "num_predict": 120}}
    with httpx.Client(base_url=srv.url, timeout=60) as h, h.stream("POST", "/api/chat", json=body) as resp:
        lines = resp.iter_lines()
        assert '"done":false' in next(lines)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with httpx.Client(base_url=srv.url, timeout=10) as other:
            refused = other.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
            assert refused.status_code == 503 and refused.json() == SHUTTING_DOWN
            assert other.get("/api/tags").status_code == 503
        rest = [json.loads(line) for line in lines if line.strip()]
    assert rest and rest[-1]["done"] is True  # finished, not cut
    assert rest[-1]["done_reason"] in ("length", "stop") and "error" not in rest[-1]
    wait_exit(srv, timeout=20)
    assert not [pid for pid in pids if alive(pid)]


def test_streams_still_running_after_the_grace_end_with_an_error_line(cleanup: list[HerdServer]) -> None:
    srv = start(grace=1)
    cleanup.append(srv)
    pids = load(srv)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "options": {**LONG, "num_predict": 4000}}
    with httpx.Client(base_url=srv.url, timeout=60) as h, h.stream("POST", "/api/chat", json=body) as resp:
        lines = resp.iter_lines()
        assert '"done":false' in next(lines)
        assert srv.proc is not None
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line.strip()]
        ended = time.monotonic() - t0
    assert json.loads(rest[-1]) == SHUTTING_DOWN, rest[-3:]
    assert not any('"done":true' in line for line in rest)
    assert ended < 8, f"the stream ended {ended:.1f}s after SIGTERM (grace 1s)"
    wait_exit(srv, timeout=15)
    assert not [pid for pid in pids if alive(pid)]


def test_idle_server_exits_at_once_on_sigterm(cleanup: list[HerdServer]) -> None:
    srv = start(grace=30)
    cleanup.append(srv)
    pids = load(srv)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    assert wait_exit(srv, timeout=15) < 8
    assert not [pid for pid in pids if alive(pid)]
