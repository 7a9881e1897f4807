"""One runner serving many conversations: batching, determinism under load, prompt-cache reuse."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest

from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

PROMPTS = [
    "Write a haiku about the sea.",
    "List three fruits.",
    "What is 2 + 2?",
    "Describe a cat in one sentence.",
    "Name a famous painter.",
    "Give me a tip for learning Python.",
    "What colour is grass?",
    "Tell me a fun fact about space.",
]


def body(i: int) -> dict[str, object]:
    return {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": PROMPTS[i]}],
            "options": {"temperature": 0.7, "seed": 100 + i, "num_predict": 48}}


def runners(c: httpx.Client) -> dict[str, object]:
    return c.get("/api/herd/runners").json()["runners"][0]  # type: ignore[no-any-return]


def test_eight_concurrent_requests_match_the_same_requests_one_by_one(http: httpx.Client) -> None:
    http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": "10m"})
    alone = [http.post("/api/chat", json=body(i)).json()["message"]["content"] for i in range(8)]
    with cf.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda i: http.post("/api/chat", json=body(i)).json()["message"]["content"],
                                 range(8)))
    assert together == alone


def test_requests_are_decoded_together(server: HerdServer) -> None:
    """While one long stream runs, a second request joins the same runner and finishes first."""
    long = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "options": {"num_predict": 400, "temperature": 2.0, "top_k": 0, "top_p": 1.0, "seed": 1}}
    with httpx.Client(base_url=server.url, timeout=120) as c:
        c.post("/api/chat", json={"model": MODEL, "messages": []})
        with c.stream("POST", "/api/chat", json=long) as resp:
            lines = resp.iter_lines()
            next(lines)
            pids = sorted(server.runner_pids())  # other test files may have left other models loaded
            short = c.post("/api/chat", json={**body(0), "options": {"num_predict": 5, "temperature": 0}})
            assert short.status_code == 200 and short.json()["eval_count"] == 5
            assert runners(c)["active"] == 1  # the long one is still running: the short one did not wait
            assert sorted(server.runner_pids()) == pids  # and it ran on the same runner, not a new one


def test_second_turn_reuses_the_cached_prefix(http: httpx.Client) -> None:
    http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": "10m"})
    history = [{"role": "user", "content": "Tell me about the history of Rome in detail. " * 8}]
    first = http.post("/api/chat", json={"model": MODEL, "messages": history, "stream": False,
                                         "options": {"num_predict": 16, "temperature": 0}}).json()
    before = runners(http)
    history += [first["message"], {"role": "user", "content": "And Greece?"}]
    second = http.post("/api/chat", json={"model": MODEL, "messages": history, "stream": False,
                                          "options": {"num_predict": 16, "temperature": 0}}).json()
    after = runners(http)
    evaluated = after["prompt_evaluated"] - before["prompt_evaluated"]  # type: ignore[operator]
    cached = after["prompt_cached"] - before["prompt_cached"]  # type: ignore[operator]
    # prompt_eval_count stays the full prompt, as Ollama reports it; only the new tokens were evaluated.
    assert second["prompt_eval_count"] == evaluated + cached
    assert cached >= first["prompt_eval_count"]
    assert evaluated < 20
