"""engine/devices.py: what a runner reports from llama.cpp's load log."""

from __future__ import annotations

from herd.engine.devices import LoadLog, vram_mib


def test_size_vram_counts_this_machines_gpu_buffers_only() -> None:
    """A load log of the shape llama.cpp writes for a model split over a CUDA GPU, the CPU and one RPC worker. The
    lines are written here, not printed by a GPU build (no GPU is lent to these machines): it proves the reading and
    the sum, not that a CUDA build names its buffers exactly so."""
    log = LoadLog()
    for line in (
        "load_tensors: offloading 20 repeating layers to GPU",
        "load_tensors:        CUDA0 model buffer size =  1200.00 MiB",
        "load_tensors:   CPU_Mapped model buffer size =   300.50 MiB",
        "load_tensors: RPC0[10.0.0.2:50052] model buffer size =   400.00 MiB",
        "llama_kv_cache:      CUDA0 KV buffer size =   256.00 MiB",
        "llama_kv_cache: RPC0[10.0.0.2:50052] KV buffer size =    64.00 MiB",
        "llama_context:  CUDA_Host  output buffer size =     0.19 MiB",
    ):
        log(2, line.encode(), None)
    _, weights, kv, _ = log.placement()
    assert weights["CUDA0"] == 1200.0 and kv["CUDA0"] == 256.0  # the same name in both: summed apart
    assert vram_mib(weights, kv) == 1456.0
    assert vram_mib({"CPU_Mapped": 92.1}, {"CPU": 180.0}) == 0.0  # the CPU build: size_vram 0
