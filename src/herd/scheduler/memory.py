"""Will a load fit? The weights' file size (and a vision projector's) plus the KV cache a LoadSpec asks for,
against MemAvailable, and, for a model offloaded to this machine's GPUs, their free memory first (what the startup
device report saw: scheduler/machine.py). llama.cpp then fits the layers to the GPUs' memory as it loads
(engine/worker.py), so what does not fit there must fit in the host's.

Ollama refuses a load that cannot fit before it starts a runner (`model requires more system memory (X) than is
available (Y)`); without it, an absurd num_ctx ends in the kernel's OOM killer, which may pick the server itself.
The KV cache is `num_ctx` cells per sequence, `num_parallel` sequences (one for an embedding runner), and per cell
and layer K and V of `n_head_kv x head_dim` elements of the spec's cache type: f16 is 2 bytes an element, and the
quantized types are ggml blocks of 32 elements (q8_0: 32 int8 and one f16 scale = 34 bytes; q4_0: 32 nibbles and one
f16 scale = 18 bytes). Compute buffers are left out: they are small beside the cache at the sizes that matter here.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from herd.engine.protocol import LoadSpec
from herd.errors import RunnerFailed
from herd.scheduler.machine import MACHINE, Machine

# (bytes, elements) of one ggml block of each KV cache type (ggml-common.h: block_q8_0, block_q4_0)
KV_BLOCK_BYTES: dict[str, tuple[int, int]] = {"f16": (2, 1), "q8_0": (34, 32), "q4_0": (18, 32)}


class InsufficientMemory(RunnerFailed):
    """A load that the machine's free memory cannot hold (500, Ollama's text)."""


def human_bytes(n: float) -> str:
    """Ollama's format.HumanBytes2: binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _per_layer(value: object, n_layer: int) -> list[int]:
    """A head count is one number or, in some architectures, one per layer."""
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value][:n_layer]
    return [int(value)] * n_layer  # type: ignore[call-overload]


def row_bytes(cache_type: str, elements: int) -> int:
    """Bytes of a row of `elements` of a cache type, as ggml_row_size counts them (whole blocks)."""
    size, block = KV_BLOCK_BYTES[cache_type]
    return -(-elements // block) * size


def kv_bytes(metadata: dict[str, object], arch: str, num_ctx: int, sequences: int, cache_type: str = "f16") -> int:
    n_layer = int(metadata.get(f"{arch}.block_count", 0) or 0)  # type: ignore[call-overload]
    if n_layer <= 0:
        return 0
    n_embd = int(metadata.get(f"{arch}.embedding_length", 0) or 0)  # type: ignore[call-overload]
    n_head = metadata.get(f"{arch}.attention.head_count", 0) or 0
    heads = _per_layer(n_head, n_layer)
    kv_heads = _per_layer(metadata.get(f"{arch}.attention.head_count_kv", n_head) or n_head, n_layer)
    default_dim = n_embd // max(heads[0], 1) if heads and heads[0] else 0
    key_dim = int(metadata.get(f"{arch}.attention.key_length", default_dim) or default_dim)  # type: ignore[call-overload,arg-type]
    value_dim = int(metadata.get(f"{arch}.attention.value_length", default_dim) or default_dim)  # type: ignore[call-overload,arg-type]
    # Per layer and cell, one row of K (n_head_kv x key_dim) and one of V, as llama.cpp's cache lays them out.
    per_cell = sum(row_bytes(cache_type, h * key_dim) + row_bytes(cache_type, h * value_dim) for h in kv_heads)
    return per_cell * num_ctx * sequences


def required_bytes(spec: LoadSpec) -> int:
    """Weights plus KV cache for this spec; 0 when the file cannot be read (the load then says why)."""
    from herd.registry.gguf_info import read_gguf_info

    path = Path(spec.model_path)
    try:
        size = path.stat().st_size
        info = read_gguf_info(path)
    except Exception:
        return 0
    if spec.projector_path:
        try:
            size += Path(spec.projector_path).stat().st_size  # the projector's weights load next to the model's
        except OSError:
            pass
    sequences = 1 if spec.embedding else spec.num_parallel
    return size + kv_bytes(info.metadata, info.architecture, spec.num_ctx, sequences, spec.kv_cache_type)


MAX_AUTO_SLOTS = 8  # the most slots herd gives a model by itself (OLLAMA_NUM_PARALLEL may set more)


def slots_that_fit(spec: LoadSpec, have: int | None, most: int = MAX_AUTO_SLOTS) -> int:
    """How many slots of `spec.num_ctx` cells (each its own KV stream) fit in `have` bytes beside the weights: at
    most `most`, at least 1 (a model whose one slot does not fit is then refused by check_fits, with Ollama's text).
    Unknown memory or an unreadable file: `most`."""
    one = required_bytes(replace(spec, num_parallel=1, embedding=False))
    weights = required_bytes(replace(spec, num_parallel=0, embedding=False))
    per_slot = one - weights
    if have is None or not one or per_slot <= 0:
        return most
    return max(1, min(most, (have - weights) // per_slot))


def available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux: what sysconf knows, else no check
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gpu_bytes(spec: LoadSpec, machine: Machine = MACHINE) -> int:
    """The free GPU memory this spec's layers may go to: none for a model kept on the CPU (num_gpu 0) or sent to
    RPC workers (whose memory llama.cpp checks as it allocates there), one GPU's with main_gpu, else all of them."""
    if spec.n_gpu_layers == 0 or spec.rpc_servers or not machine.gpus:
        return 0
    if 0 <= spec.main_gpu < len(machine.gpus):
        return machine.gpus[spec.main_gpu].free
    return machine.free_vram()


def memory_for(spec: LoadSpec, machine: Machine = MACHINE) -> int | None:
    """The memory a model's slots may take (slots_that_fit): the GPUs' when weights and one slot fit there (its KV
    cache goes with its layers), else the GPUs' and the host's together; the host's alone on the CPU."""
    host = available_bytes()
    gpu = gpu_bytes(spec, machine)
    if not gpu:
        return host
    if required_bytes(replace(spec, num_parallel=1, embedding=False)) <= gpu or host is None:
        return gpu
    return gpu + host


# What a GPU keeps free beside a model's layers and KV (compute buffers, the runtime's own): llama.cpp's own fit
# leaves 1 GiB per device by default (common.h: fit_params_target).
GPU_MARGIN = 1 << 30


def layers_that_fit(spec: LoadSpec, free: int, margin: int = GPU_MARGIN) -> int:
    """Ollama's default offload (num_gpu unset): as many of the model's layers as fit in `free` bytes of GPU memory,
    each with its weights and its share of the KV cache; -1 when the whole model (output layer too) fits, else the
    count for llama.cpp's n_gpu_layers, which offloads the last layers first. The weights per layer are the
    tensors' own sizes (`blk.N.*`), read from the GGUF header."""
    from herd.registry.gguf_info import read_gguf_full

    need = required_bytes(spec)
    if not need or need + margin <= free:
        return -1
    try:
        info = read_gguf_full(Path(spec.model_path))
    except Exception:
        return -1  # the load says why
    n_layer = int(info.metadata.get(f"{info.architecture}.block_count", 0) or 0)  # type: ignore[call-overload]
    if n_layer <= 0:
        return -1
    per_layer = [0] * n_layer
    for t in info.tensors:
        if t.name.startswith("blk."):
            index = t.name.split(".", 2)[1]
            if index.isdigit() and int(index) < n_layer:
                per_layer[int(index)] += tensor_bytes(t.type, t.shape)
    sequences = 1 if spec.embedding else spec.num_parallel
    kv_layer = kv_bytes(info.metadata, info.architecture, spec.num_ctx, sequences, spec.kv_cache_type) // n_layer
    budget, count = free - margin, 0
    for weights in reversed(per_layer):
        budget -= weights + kv_layer
        if budget < 0:
            break
        count += 1
    return count


def tensor_bytes(qtype: str, shape: tuple[int, ...]) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    elements = 1
    for d in shape:
        elements *= d
    return elements * size // block


def check_fits(spec: LoadSpec, machine: Machine = MACHINE) -> None:
    need = required_bytes(spec)
    have = available_bytes()
    # What the GPUs cannot hold stays in system memory; Ollama's text counts only that part.
    need -= min(need, gpu_bytes(spec, machine))
    if need and have is not None and need > have:
        raise InsufficientMemory(
            f"model requires more system memory ({human_bytes(need)}) than is available ({human_bytes(have)})"
        )
