"""The scheduler with real runners: two models at once, eviction, reload on new load options, the 503 bound."""

from __future__ import annotations

import concurrent.futures as cf
import time

import httpx
import pytest

from tests.integration.conftest import MODEL
from tests.integration.custom_models import add_model
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration
SECOND = "second/smollm2:latest"


def loaded(c: httpx.Client) -> list[str]:
    return [m["name"] for m in c.get("/api/ps").json()["models"]]


def test_two_models_then_eviction_of_the_shortest_keep_alive() -> None:
    server = HerdServer(env={"OLLAMA_MAX_LOADED_MODELS": "2"}).start()
    try:
        add_model(server.models_dir, SECOND)
        third = add_model(server.models_dir, "third/smollm2:latest")
        with httpx.Client(base_url=server.url, timeout=120) as c:
            c.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": "10m"})
            c.post("/api/chat", json={"model": SECOND, "messages": [], "keep_alive": "1m"})
            assert sorted(loaded(c)) == sorted([MODEL, SECOND])
            assert len(server.runner_pids()) == 2
            ps = c.get("/api/ps").json()["models"]
            assert ps[0]["name"] == MODEL  # furthest expiry first
            c.post("/api/chat", json={"model": third, "messages": [], "keep_alive": "5m"})
            assert sorted(loaded(c)) == sorted([MODEL, third])  # SECOND had the shortest keep-alive
            assert len(server.runner_pids()) == 2
    finally:
        server.stop()


def test_new_load_options_reload_after_running_requests_finish(server: HerdServer) -> None:
    long = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}],
            "options": {"num_predict": 150, "temperature": 2.0, "top_k": 0, "top_p": 1.0, "seed": 5}}
    with httpx.Client(base_url=server.url, timeout=120) as c:
        c.post("/api/chat", json={"model": MODEL, "messages": []})
        before = server.runner_pids()
        with cf.ThreadPoolExecutor(2) as pool:
            running = pool.submit(c.post, "/api/chat", json={**long, "stream": False})
            time.sleep(0.3)
            other = pool.submit(c.post, "/api/chat", json={"model": MODEL, "stream": False, "messages": [
                {"role": "user", "content": "hi"}], "options": {"num_ctx": 1024, "num_predict": 3}})
            first = running.result()
            second = other.result()
        assert first.status_code == 200 and first.json()["eval_count"] == 150  # not cut short by the reload
        assert second.status_code == 200
        after = server.runner_pids()
        assert after and after != before
        assert c.get("/api/ps").json()["models"][0]["context_length"] == 1024


def test_queue_bound_gives_503() -> None:
    server = HerdServer(env={"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_MAX_QUEUE": "1"}).start()
    body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "Tell me a story."}],
            "options": {"num_predict": 200, "temperature": 2.0, "top_k": 0, "top_p": 1.0}}
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            c.post("/api/chat", json={"model": MODEL, "messages": []})
            with cf.ThreadPoolExecutor(4) as pool:
                results = list(pool.map(lambda _: c.post("/api/chat", json=body), range(4)))
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) >= 2 and 503 in codes
        busy = next(r for r in results if r.status_code == 503)
        assert busy.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
    finally:
        server.stop()
