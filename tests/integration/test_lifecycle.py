"""Model lifecycle through a real server: load/unload shortcuts, keep_alive, a runner that dies, /api/ps."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime

import httpx
import pytest

from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration


# High-temperature sampling over the whole vocabulary almost never picks the end-of-turn token: long generations.
LONG = {"num_predict": 4000, "temperature": 2.0, "top_k": 0, "top_p": 1.0, "seed": 7}


def ps_names(http: httpx.Client) -> list[str]:
    return [m["name"] for m in http.get("/api/ps").json()["models"]]


def wait_until(predicate, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_load_and_unload_shortcuts(http: httpx.Client, server: HerdServer) -> None:
    load = http.post("/api/chat", json={"model": MODEL, "messages": [], "stream": False}).json()
    assert load["done_reason"] == "load" and load["message"] == {"role": "assistant", "content": ""}
    assert MODEL in ps_names(http)
    entry = http.get("/api/ps").json()["models"][0]
    assert entry["size"] > 0 and entry["context_length"] == 4096
    # OLLAMA_NUM_PARALLEL unset: slots sized to memory; 8 slots of 4096 cells of this model take 720 MiB
    assert entry["num_parallel"] == 8
    expires = datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00"))
    assert 200 < (expires - datetime.now(expires.tzinfo)).total_seconds() <= 301
    assert server.runner_pids()
    unload = http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0, "stream": False}).json()
    assert unload["done_reason"] == "unload"
    assert wait_until(lambda: not ps_names(http))
    assert wait_until(lambda: not server.runner_pids())  # unloading ends the runner process
    # Unloading a model that is not loaded still answers "unload".
    again = http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0}).text
    assert '"done_reason":"unload"' in again


def test_keep_alive_zero_unloads_after_the_answer(http: httpx.Client) -> None:
    resp = http.post("/api/chat", json={"model": MODEL, "keep_alive": 0, "stream": False, "options": {
        "num_predict": 3}, "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200 and resp.json()["eval_count"] == 3
    assert wait_until(lambda: not ps_names(http))


def test_keep_alive_forever_and_seconds(http: httpx.Client) -> None:
    http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": -1})
    entry = http.get("/api/ps").json()["models"][0]
    assert entry["expires_at"].startswith("22")  # far future
    http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": "1s"})
    assert wait_until(lambda: not ps_names(http), timeout=10)
    http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 120})
    entry = http.get("/api/ps").json()["models"][0]
    expires = datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00"))
    assert 100 < (expires - datetime.now(expires.tzinfo)).total_seconds() <= 121


def test_runner_killed_mid_request_gives_error_then_recovers(http: httpx.Client, server: HerdServer) -> None:
    http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": "5m"})
    pids = server.runner_pids()
    assert len(pids) == 1
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "options": LONG}
    with http.stream("POST", "/api/chat", json=body) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        first = next(lines)
        assert '"done":false' in first
        os.kill(pids[0], signal.SIGKILL)
        rest = [line for line in lines if line.strip()]
    assert rest, "the stream must end with an error line"
    assert '"error"' in rest[-1] and "model runner has unexpectedly stopped" in rest[-1]
    assert not any('"done":true' in line for line in rest)
    ok = http.post("/api/chat", json={**body, "stream": False, "options": {"num_predict": 4}})
    assert ok.status_code == 200 and ok.json()["eval_count"] == 4
    assert server.runner_pids() and server.runner_pids() != pids


def test_runner_killed_before_non_stream_answer_gives_500(http: httpx.Client, server: HerdServer) -> None:
    http.post("/api/chat", json={"model": MODEL, "messages": []})
    pids = server.runner_pids()
    assert pids
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "stream": False, "options": LONG}
    import threading

    def kill_soon() -> None:
        time.sleep(1.0)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    threading.Thread(target=kill_soon).start()
    resp = http.post("/api/chat", json=body)
    assert resp.status_code == 500
    assert resp.json()["error"].startswith("model runner has unexpectedly stopped")
    assert http.post("/api/chat", json={**body, "options": {"num_predict": 2}}).status_code == 200


def test_client_disconnect_frees_the_slot(server: HerdServer) -> None:
    """Streams and non-streamed requests that the client abandons are cancelled: their slots free at once."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "options": LONG}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        c.post("/api/chat", json={"model": MODEL, "messages": []})

        def active() -> int:
            return sum(r["active"] for r in c.get("/api/herd/runners").json()["runners"])

        for _ in range(2):
            with c.stream("POST", "/api/chat", json=body) as resp:
                lines = resp.iter_lines()  # keep a reference: a collected iterator closes the response
                first = next(lines)
                assert '"done":false' in first, first
                assert active() == 1
            t0 = time.monotonic()
            assert wait_until(lambda: active() == 0, timeout=5)
            print(f"slot free {time.monotonic() - t0:.3f}s after disconnect")
        # Non-streamed: the client gives up (timeout) while the answer is generated.
        with httpx.Client(base_url=server.url, timeout=1.0) as impatient, pytest.raises(httpx.ReadTimeout):
            impatient.post("/api/chat", json={**body, "stream": False})
        assert wait_until(lambda: active() == 0, timeout=5)
