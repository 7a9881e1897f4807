"""The lean GGUF header cache: read once per blob, no long arrays kept, bounded, and as exact as the gguf package."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import tracemalloc
from pathlib import Path

import gguf as gguf_pkg
import numpy as np
import pytest

from herd.errors import InvalidRequest
from herd.registry import gguf_info
from herd.registry.gguf_info import LEAN_ARRAY_MAX, read_gguf_full, read_gguf_info
from herd.registry.models import ModelCatalog
from herd.registry.names import ModelName
from herd.registry.store import CONFIG_MEDIA_TYPE, LAYER_PREFIX, Layer, Manifest, Store
from herd.services.model_views import ModelViews

N_VOCAB = 3000


def write_vocab_gguf(path: Path, n_vocab: int = N_VOCAB, salt: str = "t") -> Path:
    w = gguf_pkg.GGUFWriter(str(path), "llama")
    w.add_name("lean")
    w.add_context_length(4096)
    w.add_embedding_length(8)
    w.add_block_count(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"{salt}{i}" for i in range(n_vocab)])
    w.add_token_types([1] * n_vocab)
    w.add_token_scores([0.5] * n_vocab)
    w.add_token_merges([f"{salt}{i} m{i}" for i in range(n_vocab)])
    w.add_bos_token_id(7)
    w.add_eos_token_id(n_vocab - 1)
    w.add_array("general.languages", ["en", "fr"])  # a short array: kept in a lean read
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    w.add_tensor("token_embd.weight", np.zeros((n_vocab % 7 + 4, 8), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    with gguf_info._lock:
        gguf_info._cache.clear()


@pytest.fixture()
def vocab(tmp_path: Path) -> Path:
    return write_vocab_gguf(tmp_path / "vocab.gguf")


def test_lean_read_keeps_no_long_array_and_names_bos_eos(vocab: Path) -> None:
    info = read_gguf_info(vocab)
    assert not info.full and info.tensors == ()
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        assert key in info.metadata and info.metadata[key] is None
    assert all(not isinstance(v, list) or len(v) <= LEAN_ARRAY_MAX for v in info.metadata.values())
    assert info.metadata["general.languages"] == ["en", "fr"]
    assert (info.bos_token, info.eos_token) == ("t7", f"t{N_VOCAB - 1}")
    assert info.architecture == "llama" and info.context_length == 4096 and info.embedding_length == 8
    assert info.parameter_count == (N_VOCAB % 7 + 4) * 8 + 8
    show = info.model_info(False)
    assert show["tokenizer.ggml.tokens"] is None and "tokenizer.chat_template" not in show
    assert "general.name" not in show


def test_full_read_matches_the_gguf_package(vocab: Path) -> None:
    full = read_gguf_full(vocab)
    reader = gguf_pkg.GGUFReader(str(vocab), "r")
    for name, fld in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        want = fld.contents()
        want = want.item() if isinstance(want, np.generic) else want
        assert full.metadata[name] == want, name
    assert [(t.name, t.type, t.shape) for t in full.tensors] == [
        (t.name, t.tensor_type.name, tuple(int(x) for x in t.shape)) for t in reader.tensors]
    assert len(full.metadata["tokenizer.ggml.tokens"]) == N_VOCAB  # type: ignore[arg-type]
    lean = read_gguf_info(vocab)
    assert lean.model_info(False) == full.model_info(False)
    assert (lean.bos_token, lean.eos_token, lean.parameter_count) == (full.bos_token, full.eos_token,
                                                                      full.parameter_count)


def test_the_header_is_parsed_once_per_blob_and_again_when_the_file_changes(vocab: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = gguf_info._read_header
    monkeypatch.setattr(gguf_info, "_read_header", lambda p, keep: calls.append(p) or real(p, keep))
    first = read_gguf_info(vocab)
    assert read_gguf_info(vocab) is first and len(calls) == 1
    write_vocab_gguf(vocab, N_VOCAB + 1)  # same path, new size and mtime: a new blob as far as the cache knows
    assert read_gguf_info(vocab).eos_token == f"t{N_VOCAB}" and len(calls) == 2


def test_concurrent_first_reads_of_one_blob_parse_it_once(vocab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    gate = threading.Event()
    real = gguf_info._read_header

    def slow(path: Path, keep: bool) -> object:
        calls.append(path)
        gate.wait(5)
        return real(path, keep)

    monkeypatch.setattr(gguf_info, "_read_header", slow)
    out: list[object] = []
    threads = [threading.Thread(target=lambda: out.append(read_gguf_info(vocab))) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert len(out) == 8 and len({id(x) for x in out}) == 1
    assert len(calls) == 1


def test_the_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_info, "_CACHE_MAX", 3)
    paths = [write_vocab_gguf(tmp_path / f"v{i}.gguf", 50, salt=f"s{i}") for i in range(5)]
    for p in paths:
        read_gguf_info(p)
    assert gguf_info.cached_infos() == 3


def test_a_lean_read_of_a_big_vocabulary_stays_small(tmp_path: Path) -> None:
    """A 100k vocabulary and 100k merges as Python strings take well over 10 MB; the lean read never builds them."""
    big = write_vocab_gguf(tmp_path / "big.gguf", 100_000)
    tracemalloc.start()
    try:
        info = read_gguf_info(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.eos_token == "t99999"
    assert peak < 4 << 20, f"lean read peaked at {peak / 1e6:.1f} MB"


# ---- malformed files: a clear 400, whatever the header claims ------------------------------------------------


def _header(n_tensors: int, kvs: list[bytes], tensors: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs)) + b"".join(kvs) + tensors


def _s(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def _kv_u32(key: str, value: int) -> bytes:
    return _s(key) + struct.pack("<II", 4, value)


@pytest.mark.parametrize("data, message", [
    (_header(0, [_s("a") + struct.pack("<IIQ", 9, 8, 1 << 40)]), "array length"),
    (_header(0, [_kv_u32("x", 1), _kv_u32("x", 2)]), "duplicate key"),
    (_header(0, [_s("a") + struct.pack("<I", 99)]), "unknown value type"),
    (_header(1 << 40, []), "tensor count"),
    (_header(1, [], _s("w") + struct.pack("<IQIQ", 1, 4, 12345, 0)) + b"\0" * 64, "unknown type"),
    (_header(1, [], _s("w") + struct.pack("<IQIQ", 1, 1 << 20, 0, 0)) + b"\0" * 64, "truncated"),
    (_header(0, [_kv_u32("general.alignment", 3)]) + b"\0" * 16, "alignment"),
    # A vocabulary whose second string claims more bytes than the file has (the lean skip loop's own check).
    (_header(0, [_s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 6) + _s("a") + struct.pack("<Q", 1000)
                 + b"\0" * 40]), "truncated"),
])
def test_malformed_headers_are_invalid_requests(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(InvalidRequest, match=message):
        read_gguf_info(path)
    assert gguf_info.cached_infos() == 0


# ---- the catalog and the views on top ------------------------------------------------------------------------


def add_model(store: Store, name: str, gguf_path: Path) -> None:
    digest, size = store.add_blob_file(gguf_path)
    config = store.write_blob(json.dumps({"model_format": "gguf"}).encode())
    store.write_manifest(ModelName.parse(name), Manifest(Layer(CONFIG_MEDIA_TYPE, config.digest, config.size),
                                                         (Layer(LAYER_PREFIX + "model", digest, size),)))


def test_prepare_computes_every_fact_once_and_aresolve_runs_off_the_loop(tmp_path: Path, vocab: Path) -> None:
    store = Store(tmp_path / "models")
    add_model(store, "lean", vocab)
    catalog = ModelCatalog(store)
    loop_thread = threading.get_ident()
    seen: list[int] = []
    real = gguf_info._read_header

    def spy(path: Path, keep: bool) -> object:
        seen.append(threading.get_ident())
        return real(path, keep)

    gguf_info._read_header = spy  # type: ignore[assignment]
    try:
        model = asyncio.run(catalog.aresolve("lean"))
    finally:
        gguf_info._read_header = real  # type: ignore[assignment]
    assert seen and loop_thread not in seen
    for name in ("gguf", "template", "capabilities", "parameters", "config"):
        assert name in vars(model), name  # an attribute read from now on
    assert model.capabilities == ("completion",)
    assert catalog.resolve("lean") is model


def test_the_catalog_forgets_deleted_models(tmp_path: Path, vocab: Path) -> None:
    store = Store(tmp_path / "models")
    add_model(store, "a", vocab)
    add_model(store, "b", vocab)
    catalog = ModelCatalog(store)
    assert len(catalog.list()) == 2 and len(catalog._cache) == 2
    store.delete("a")
    assert [m.name for m in catalog.list()] == ["b:latest"] and len(catalog._cache) == 1


def test_show_is_lean_unless_verbose(tmp_path: Path, vocab: Path) -> None:
    store = Store(tmp_path / "models")
    add_model(store, "lean", vocab)
    views = ModelViews(ModelCatalog(store), scheduler=None)  # type: ignore[arg-type]
    doc = views.show("lean", verbose=False, system=None)
    assert doc["model_info"]["tokenizer.ggml.tokens"] is None and "tensors" not in doc  # type: ignore[index]
    verbose = views.show("lean", verbose=True, system=None)
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == N_VOCAB  # type: ignore[index]
    assert [t["name"] for t in verbose["tensors"]] == ["token_embd.weight", "output_norm.weight"]  # type: ignore
    assert read_gguf_info(store.blob_path(store.find("lean").manifest.layers[0].digest)).full is False
