"""Settings from the environment: HERD_* names first, then the OLLAMA_* names that clients and scripts already set."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from herd.durations import parse_keep_alive
from herd.engine.protocol import KV_CACHE_TYPES
from herd.engine.rpc import parse_servers

DEFAULT_PORT = 11434


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value is not None:
            # Ollama strips surrounding quotes and whitespace from every variable.
            value = value.strip().strip("\"'").strip()
            if value:
                return value
    return None


def _int(default: int, *names: str) -> int:
    raw = _env(*names)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        return default  # Ollama logs a warning and keeps the default


def _context_length(value: int) -> int:
    """OLLAMA_CONTEXT_LENGTH: unset or 0 leaves the default to the VRAM tiers; any other value is at least 4."""
    return 0 if value <= 0 else max(4, value)


def parse_host(raw: str | None) -> tuple[str, int]:
    """`[scheme://]host[:port][/path]` as OLLAMA_HOST accepts it; a missing port is 11434."""
    if not raw:
        return "127.0.0.1", DEFAULT_PORT
    scheme = ""
    if "://" in raw:
        scheme, raw = raw.split("://", 1)
    raw = raw.split("/", 1)[0]
    default_port = {"http": 80, "https": 443}.get(scheme, DEFAULT_PORT)
    if raw.startswith("["):  # IPv6 literal
        host, _, rest = raw[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:] else default_port
        return host, port
    host, sep, port_text = raw.rpartition(":")
    if not sep:
        return raw or "127.0.0.1", default_port
    return host or "127.0.0.1", int(port_text) if port_text else default_port


def _float(default: float, *names: str) -> float:
    raw = _env(*names)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        return default


def kv_cache_type_from_env(raw: str | None) -> str:
    """OLLAMA_KV_CACHE_TYPE: f16 (the default), q8_0 or q4_0, any case; another value keeps f16, as Ollama does
    (`herd serve` logs the type it runs with, so a typo shows)."""
    value = (raw or "").lower()
    return value if value in KV_CACHE_TYPES else "f16"


def flash_attention_from_env(raw: str | None) -> str:
    """OLLAMA_FLASH_ATTENTION: unset = "auto" (llama.cpp decides per device, as current Ollama does), else Go's
    strconv.ParseBool as Ollama's envconfig reads it: 1/t/true on, 0/f/false off, anything else unparsable = on."""
    if raw is None or raw.lower() == "auto":
        return "auto"
    if raw in ("0", "f", "F", "false", "FALSE", "False"):
        return "off"
    return "on"


def physical_cores() -> int:
    """llama.cpp runs best with one thread per physical core; SMT siblings only add contention."""
    try:
        cores = set()
        for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*"):
            core = cpu / "topology" / "core_id"
            pkg = cpu / "topology" / "physical_package_id"
            if core.exists():
                cores.add((pkg.read_text().strip() if pkg.exists() else "0", core.read_text().strip()))
        if cores:
            return min(len(cores), len(os.sched_getaffinity(0)))
    except OSError:
        pass
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    models_dir: Path = field(default_factory=lambda: Path.home() / ".herd" / "models")
    keep_alive_s: float = 300.0  # seconds; negative = forever
    num_parallel: int = 0  # 0: per model, as many slots (up to 8) as fit in memory (see README)
    max_loaded_models: int = 3
    max_queue: int = 512
    context_length: int = 0  # 0: Ollama's default by VRAM (scheduler/machine.py: 4096 without a GPU)
    num_thread: int = 0  # 0 = physical cores
    origins: tuple[str, ...] = ()
    load_timeout_s: float = 300.0
    register_default_model: bool = True
    # Resource bounds: a request past one of them is a 400 with a message naming the limit, never an OOM.
    max_body_bytes: int = 64 * 1024 * 1024  # JSON bodies
    max_blob_bytes: int = 256 * 1024 * 1024 * 1024  # /api/blobs uploads: model weights, streamed to disk
    max_num_ctx: int = 131072
    max_num_predict: int = 1 << 20
    max_num_batch: int = 8192
    max_messages: int = 10000
    max_images: int = 32  # per request
    max_image_bytes: int = 20 * 1024 * 1024  # per image, decoded
    allow_image_urls: bool = False  # /v1 image_url parts with http(s) URLs: fetched by the server only if set
    max_tools: int = 256
    max_embed_inputs: int = 2048  # inputs per embed request
    max_embed_tokens: int = 262144  # tokens over all of an embed request's inputs, after truncation
    max_stop: int = 64  # stop sequences per request (request and Modelfile together)
    max_stop_length: int = 1024  # characters per stop sequence
    shutdown_grace_s: float = 10.0
    prompt_cache: bool = True
    constrain_tools: bool = True  # tool calls valid by construction (Ollama only parses them)
    # /v1/responses keeps recent responses for previous_response_id: at most this many, each for this long
    responses_max: int = 256
    responses_ttl_s: float = 3600.0
    # KV cache element type of every runner unless a model's kv_cache_type option says otherwise, and flash
    # attention (engine/protocol.py: KV_CACHE_TYPES, FLASH_ATTENTION_MODES)
    kv_cache_type: str = "f16"
    flash_attention: str = "auto"
    # Speculative decoding (engine/speculative.py): off with HERD_SPECULATIVE=0; HERD_SPEC_FASTFORWARD=0 turns off
    # only the grammar fast-forward part (to measure it)
    speculative: bool = True
    fast_forward: bool = True
    # llama.cpp RPC workers (`herd rpc-worker`) that models offload their layers to, and the only ones a
    # Modelfile or request may name (engine/rpc.py); how long one decode step through them may take
    rpc_servers: tuple[str, ...] = ()
    rpc_timeout_s: float = 60.0

    @property
    def threads(self) -> int:
        return self.num_thread if self.num_thread > 0 else physical_cores()

    @classmethod
    def from_env(cls) -> Settings:
        host, port = parse_host(_env("HERD_HOST", "OLLAMA_HOST"))
        models = _env("HERD_MODELS", "OLLAMA_MODELS")
        keep_alive_raw = _env("HERD_KEEP_ALIVE", "OLLAMA_KEEP_ALIVE")
        keep_alive = 300.0
        if keep_alive_raw is not None:
            try:
                # OLLAMA_KEEP_ALIVE also takes a bare integer of seconds.
                keep_alive = float(int(keep_alive_raw))
            except ValueError:
                try:
                    keep_alive = parse_keep_alive(keep_alive_raw)
                except ValueError:
                    pass
        origins = tuple(o.strip() for o in (_env("HERD_ORIGINS", "OLLAMA_ORIGINS") or "").split(",") if o.strip())
        max_loaded = _int(0, "HERD_MAX_LOADED_MODELS", "OLLAMA_MAX_LOADED_MODELS")
        return cls(
            host=host,
            port=port,
            models_dir=Path(models).expanduser() if models else Path.home() / ".herd" / "models",
            keep_alive_s=keep_alive,
            num_parallel=max(0, _int(0, "HERD_NUM_PARALLEL", "OLLAMA_NUM_PARALLEL")),
            max_loaded_models=max_loaded if max_loaded > 0 else 3,
            max_queue=max(1, _int(512, "HERD_MAX_QUEUE", "OLLAMA_MAX_QUEUE")),
            context_length=_context_length(_int(0, "HERD_CONTEXT_LENGTH", "OLLAMA_CONTEXT_LENGTH")),
            num_thread=_int(0, "HERD_NUM_THREAD"),
            origins=origins,
            load_timeout_s=float(_int(300, "HERD_LOAD_TIMEOUT")),
            register_default_model=(_env("HERD_NO_DEFAULT_MODEL") is None),
            prompt_cache=(_env("HERD_PROMPT_CACHE") or "1") not in ("0", "false", "off"),
            constrain_tools=(_env("HERD_CONSTRAIN_TOOLS") or "1") not in ("0", "false", "off"),
            max_body_bytes=max(1024, _int(cls.max_body_bytes, "HERD_MAX_BODY_BYTES")),
            max_blob_bytes=max(1024, _int(cls.max_blob_bytes, "HERD_MAX_BLOB_BYTES")),
            max_num_ctx=max(4, _int(cls.max_num_ctx, "HERD_MAX_NUM_CTX")),
            max_num_predict=max(1, _int(cls.max_num_predict, "HERD_MAX_NUM_PREDICT")),
            max_num_batch=max(32, _int(cls.max_num_batch, "HERD_MAX_NUM_BATCH")),
            max_messages=max(1, _int(cls.max_messages, "HERD_MAX_MESSAGES")),
            max_images=max(0, _int(cls.max_images, "HERD_MAX_IMAGES")),
            max_image_bytes=max(1, _int(cls.max_image_bytes, "HERD_MAX_IMAGE_BYTES")),
            allow_image_urls=(_env("HERD_ALLOW_IMAGE_URLS") or "0") not in ("0", "false", "off", ""),
            max_tools=max(0, _int(cls.max_tools, "HERD_MAX_TOOLS")),
            max_embed_inputs=max(1, _int(cls.max_embed_inputs, "HERD_MAX_EMBED_INPUTS")),
            max_embed_tokens=max(1, _int(cls.max_embed_tokens, "HERD_MAX_EMBED_TOKENS")),
            max_stop=max(0, _int(cls.max_stop, "HERD_MAX_STOP")),
            max_stop_length=max(1, _int(cls.max_stop_length, "HERD_MAX_STOP_LENGTH")),
            shutdown_grace_s=max(0.0, _float(cls.shutdown_grace_s, "HERD_SHUTDOWN_GRACE")),
            responses_max=max(0, _int(cls.responses_max, "HERD_RESPONSES_MAX")),
            responses_ttl_s=max(0.0, _float(cls.responses_ttl_s, "HERD_RESPONSES_TTL")),
            kv_cache_type=kv_cache_type_from_env(_env("HERD_KV_CACHE_TYPE", "OLLAMA_KV_CACHE_TYPE")),
            flash_attention=flash_attention_from_env(_env("HERD_FLASH_ATTENTION", "OLLAMA_FLASH_ATTENTION")),
            speculative=(_env("HERD_SPECULATIVE") or "1") not in ("0", "false", "off"),
            fast_forward=(_env("HERD_SPEC_FASTFORWARD") or "1") not in ("0", "false", "off"),
            # A bad worker list is an error (ValueError naming the entry; `herd serve` says it and exits), not a
            # silent local load: the user asked for the layers to be elsewhere.
            rpc_servers=parse_servers(_env("HERD_RPC_SERVERS") or ""),
            rpc_timeout_s=max(0.5, _float(cls.rpc_timeout_s, "HERD_RPC_TIMEOUT")),
        )
