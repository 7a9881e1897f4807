"""Ollama's `options` (spec 3): typed, merged request > Modelfile PARAMETER > defaults, split into load-time and
sampling parts. A wrong type is a client error (400 here; Ollama answers 500)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from herd.engine.protocol import KV_CACHE_TYPES, SamplingParams
from herd.errors import InvalidRequest, LimitExceeded

INT_OPTIONS = {
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "seed", "num_predict", "top_k",
    "repeat_last_n", "mirostat", "num_gqa", "draft_num_predict",
}
FLOAT_OPTIONS = {
    "temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty",
    "mirostat_tau", "mirostat_eta", "tfs_z",
}
# Accepted and not used, as Ollama does (clients such as LangChain and Open WebUI still send them). num_gpu and
# main_gpu are load options (load_options): on a build without GPU offload every value runs on the CPU.
# draft_num_predict caps the tokens speculation proposes per step (0 = none for this request).
IGNORED_OPTIONS = frozenset({
    "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z", "penalize_newline", "low_vram", "f16_kv", "vocab_only",
    "logits_all", "num_gqa", "embedding_only", "use_mlock", "numa",
})
# Options whose value is one word of a fixed set. kv_cache_type is herd's per-model form of OLLAMA_KV_CACHE_TYPE
# (Ollama has only the variable): request options, and Modelfile PARAMETER once the registry reads string values.
STRING_OPTIONS: dict[str, tuple[str, ...]] = {"kv_cache_type": KV_CACHE_TYPES}
# Load options that are lists, written `a,b` in a Modelfile (or a JSON list in a request): herd's llama.cpp RPC
# workers for a model ("none" = none, on this machine) and llama.cpp's tensor_split, a share of layers per device.
LIST_OPTIONS = frozenset({"rpc_servers", "tensor_split"})
log = logging.getLogger(__name__)

BOOL_OPTIONS = {
    "use_mmap", "use_mlock", "numa", "penalize_newline", "low_vram", "f16_kv", "vocab_only", "embedding_only",
    "logits_all",
}


def _check(key: str, value: object) -> object:
    if key in INT_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f'option "{key}" must be of type integer')
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidRequest(f'option "{key}" must be of type integer')
        return int(value)  # any JSON number, truncated, as Ollama does
    if key in FLOAT_OPTIONS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f'option "{key}" must be of type float32')
        return float(value)
    if key in BOOL_OPTIONS:
        if not isinstance(value, bool):
            raise InvalidRequest(f'option "{key}" must be of type boolean')
        return value
    if key == "stop":
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise InvalidRequest('option "stop" must be of an array of strings')
        return tuple(value)
    if key in LIST_OPTIONS:
        from herd.engine.rpc import parse_servers, parse_tensor_split

        if not isinstance(value, (str, list, tuple)):
            raise InvalidRequest(f'option "{key}" must be a comma-separated string or an array')
        try:
            return parse_servers(value) if key == "rpc_servers" else parse_tensor_split(value)  # type: ignore[arg-type]
        except ValueError as exc:
            raise InvalidRequest(f'option "{key}": {exc}') from None
    if key in STRING_OPTIONS:
        allowed = STRING_OPTIONS[key]
        word = value.strip().lower() if isinstance(value, str) else None
        if word not in allowed:
            raise InvalidRequest(f'option "{key}" must be one of ' + ", ".join(f'"{a}"' for a in allowed))
        return word
    return value


def validate_options(options: Mapping[str, object]) -> dict[str, object]:
    """Type-check known keys; unknown keys are ignored and null values skipped, as in Ollama."""
    out: dict[str, object] = {}
    for key, value in options.items():
        if value is None:
            continue
        if (key in INT_OPTIONS or key in FLOAT_OPTIONS or key in BOOL_OPTIONS or key in STRING_OPTIONS
                or key in LIST_OPTIONS or key == "stop"):
            out[key] = _check(key, value)
    ignored = IGNORED_OPTIONS.intersection(out)
    if ignored:
        log.debug("options ignored, as Ollama ignores them: %s", ", ".join(sorted(ignored)))
    return out


@dataclass(frozen=True)
class LoadOptions:
    num_ctx: int
    num_batch: int
    num_thread: int
    use_mmap: bool
    num_gpu: int = -1  # layers offloaded, -1 = all (Ollama's default "as many as fit" is llama.cpp's placement)
    main_gpu: int = -1  # -1 = not set: the layers are split over every GPU
    kv_cache_type: str | None = None  # None = the server's OLLAMA_KV_CACHE_TYPE
    rpc_servers: tuple[str, ...] | None = None  # None = HERD_RPC_SERVERS; () = on this machine ("none")
    tensor_split: tuple[float, ...] = ()


class KvCacheNeedsFlashAttention(InvalidRequest):
    """A quantized KV cache with flash attention switched off: llama.cpp cannot run a quantized V cache without it
    and would refuse the context, so the load is refused first, naming both settings (400)."""


@dataclass(frozen=True)
class Limits:
    default_num_ctx: int
    max_num_ctx: int
    max_num_predict: int
    threads: int
    max_num_batch: int = 8192


def merge(model_params: Mapping[str, object], request: Mapping[str, object]) -> dict[str, object]:
    merged = validate_options({k: (list(v) if isinstance(v, tuple) else v) for k, v in model_params.items()})
    merged.update(validate_options(request))
    return merged


def load_options(opts: Mapping[str, object], n_ctx_train: int, limits: Limits) -> LoadOptions:
    num_ctx = int(opts.get("num_ctx", limits.default_num_ctx))  # type: ignore[call-overload]
    if num_ctx > limits.max_num_ctx:
        raise LimitExceeded(f"num_ctx {num_ctx} exceeds the limit of {limits.max_num_ctx}")
    num_ctx = max(4, min(num_ctx, n_ctx_train) if n_ctx_train > 0 else num_ctx)
    num_batch = int(opts.get("num_batch", 512))  # type: ignore[call-overload]
    if num_batch > limits.max_num_batch:
        raise LimitExceeded(f"num_batch {num_batch} exceeds the limit of {limits.max_num_batch}")
    num_batch = max(32, num_batch)
    num_thread = int(opts.get("num_thread", 0))  # type: ignore[call-overload]
    if num_thread <= 0 or num_thread > 256:
        num_thread = limits.threads
    # Ollama: num_gpu < 0 is its default (as many layers as fit); any other value is a layer count, and one past the
    # model's layers means all of them, as in llama.cpp.
    num_gpu = max(-1, int(opts.get("num_gpu", -1)))  # type: ignore[call-overload]
    # main_gpu given (any value >= 0) puts the whole model on that GPU; not given, the layers are split over all.
    main_gpu = max(0, int(opts["main_gpu"])) if "main_gpu" in opts else -1  # type: ignore[call-overload]
    kv = opts.get("kv_cache_type")
    rpc_servers, split = opts.get("rpc_servers"), opts.get("tensor_split", ())
    return LoadOptions(num_ctx, num_batch, num_thread, bool(opts.get("use_mmap", True)), num_gpu=num_gpu,
                       main_gpu=main_gpu, kv_cache_type=kv if isinstance(kv, str) else None,
                       rpc_servers=rpc_servers if isinstance(rpc_servers, tuple) else None,
                       tensor_split=split if isinstance(split, tuple) else ())


def cache_settings(kv_cache_type: str, flash_attention: str, source: str = "kv_cache_type") -> tuple[str, str]:
    """The KV cache type and flash attention mode a runner loads with. A quantized V cache needs flash attention:
    with it "auto", it is turned on (llama.cpp would do the same); with it "off", the load is refused. `source`
    names where the type came from, for the error."""
    if kv_cache_type == "f16":
        return kv_cache_type, flash_attention
    if flash_attention == "off":
        raise KvCacheNeedsFlashAttention(
            f"{source} {kv_cache_type} needs flash attention, which OLLAMA_FLASH_ATTENTION=0 turns off: use "
            f"kv_cache_type f16 or enable flash attention"
        )
    return kv_cache_type, "on"


def sampling_params(opts: Mapping[str, object], limits: Limits, shift: bool = True) -> SamplingParams:
    num_predict = int(opts.get("num_predict", -1))  # type: ignore[call-overload]
    if num_predict > limits.max_num_predict:
        raise LimitExceeded(f"num_predict {num_predict} exceeds the limit of {limits.max_num_predict}")
    stop = opts.get("stop", ())
    return SamplingParams(
        temperature=float(opts.get("temperature", 0.8)),  # type: ignore[arg-type]
        top_k=int(opts.get("top_k", 40)),  # type: ignore[call-overload]
        top_p=float(opts.get("top_p", 0.9)),  # type: ignore[arg-type]
        min_p=float(opts.get("min_p", 0.0)),  # type: ignore[arg-type]
        typical_p=float(opts.get("typical_p", 1.0)),  # type: ignore[arg-type]
        repeat_last_n=int(opts.get("repeat_last_n", 64)),  # type: ignore[call-overload]
        repeat_penalty=float(opts.get("repeat_penalty", 1.0)),  # type: ignore[arg-type]
        presence_penalty=float(opts.get("presence_penalty", 0.0)),  # type: ignore[arg-type]
        frequency_penalty=float(opts.get("frequency_penalty", 0.0)),  # type: ignore[arg-type]
        seed=int(opts.get("seed", -1)),  # type: ignore[call-overload]
        num_predict=num_predict,
        stop=tuple(stop),  # type: ignore[arg-type]
        shift=shift,
        num_keep=int(opts.get("num_keep", 4)),  # type: ignore[call-overload]
        draft_num_predict=int(opts.get("draft_num_predict", -1)),  # type: ignore[call-overload]
    )
