"""Messages between the server and a runner process, over a pipe. Frozen dataclasses, except the one sent once per
token (TextEvent): see `TextEvent`.

Commands (server -> runner) are pickled. Events (runner -> server) come from a process that parses untrusted model
files with native code, so the server never unpickles them freely: a step's frame of text events only is a compact
binary record (`TEXT_FRAME`), decoded without pickle, and any other frame goes through `loads_event`, an unpickler
that builds only the classes of this module and plain builtins (tuples, lists, dicts, str, int, float, bytes, bool,
None)."""

from __future__ import annotations

import io
import pickle
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

# Runner messages are framed as multiprocessing.Connection frames them (a 4-byte big-endian length, then the pickle),
# so the Ready that runner_main sends with Connection.send reads the same way. Both sides frame by hand: Connection's
# send and recv cost extra reads and layers of Python, once per token. Messages of 2 GiB or more are refused.
FRAME_HEADER = struct.Struct("!i")


# A frame whose payload starts with this byte holds text events only: per event a `TEXT_HEAD` (request id, byte
# length) and the UTF-8 text. A pickle always starts with its PROTO opcode (0x80), so the two cannot be confused.
# It is what a decode step usually sends, once per token; it decodes about twice as fast as a pickle, with no
# class lookup at all.
TEXT_FRAME = 0
TEXT_HEAD = struct.Struct("!II")


def frame(message: object) -> bytes:
    if type(message) is list and message:
        parts = [b"\x00"]
        for ev in message:
            if type(ev) is not tuple or ev[2]:
                break  # a DoneEvent, or text with logprobs: the whole frame is pickled
            data = ev[1].encode()
            parts.append(TEXT_HEAD.pack(ev[0], len(data)))
            parts.append(data)
        else:
            payload = b"".join(parts)
            return FRAME_HEADER.pack(len(payload)) + payload
    payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(payload)) + payload


class _EventUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if module == __name__ and name in EVENT_TYPES:
            return EVENT_TYPES[name]
        raise pickle.UnpicklingError(f"runner sent a forbidden type {module}.{name}")


def loads_event(data: bytes | bytearray | memoryview) -> object:
    """Unpickle a message from a runner, admitting only this module's classes and builtins."""
    return _EventUnpickler(io.BytesIO(data)).load()


# KV cache element types a runner can be loaded with (OLLAMA_KV_CACHE_TYPE's values), K and V alike. A quantized V
# cache needs flash attention (llama.cpp refuses the context otherwise).
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
FLASH_ATTENTION_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class LoadSpec:
    """Everything that fixes a runner at load time (spec 3.1). A request that needs other values reloads."""

    model_path: str
    num_ctx: int  # per sequence
    num_batch: int
    num_parallel: int
    num_thread: int
    use_mmap: bool
    embedding: bool = False
    prompt_cache: bool = True
    projector_path: str = ""  # a vision projector (mmproj GGUF) loaded with mtmd next to the model
    kv_cache_type: str = "f16"  # one of KV_CACHE_TYPES, for K and V (Ollama sets both from one setting)
    # one of FLASH_ATTENTION_MODES; "auto" is llama.cpp's own choice (on where the device supports it)
    flash_attention: str = "auto"
    # Offload (Ollama's num_gpu / main_gpu): layers to put on GPUs, -1 = all of them; main_gpu -1 = split the layers
    # over every GPU, >= 0 = the whole model on that one. A build without GPU offload runs every value on the CPU.
    n_gpu_layers: int = -1
    main_gpu: int = -1
    # llama.cpp RPC workers ("host:port") that hold the offloaded layers (HERD_RPC_SERVERS, PARAMETER rpc_servers),
    # and the share of layers per device (llama.cpp's tensor_split; empty = by free memory)
    rpc_servers: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()
    # Speculative decoding (HERD_SPECULATIVE): prompt lookup, grammar fast-forward, and a draft model (a GGUF with
    # the same vocabulary, Modelfile DRAFT) when draft_path is set
    speculative: bool = True
    fast_forward: bool = True
    draft_path: str = ""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    num_predict: int = -1
    stop: tuple[str, ...] = ()
    # Context shift (spec 2.7): when a generation fills num_ctx, keep the first num_keep tokens, drop half of the
    # rest and go on; shift=False ends it with "length" instead.
    shift: bool = True
    num_keep: int = 4
    # OpenAI's logit_bias: (token id, bias) pairs added to the logits before sampling (ids checked by the server)
    logit_bias: tuple[tuple[int, float], ...] = ()
    # Speculation's most proposed tokens per step for this request (Ollama's option); -1 = the runner's default
    draft_num_predict: int = -1


@dataclass(frozen=True)
class ImageInput:
    """One image of a prompt: it goes before token `at` of GenerateCmd.tokens. The runner turns it into the
    model's image tokens with mtmd; `digest` names it in the slot's prompt cache."""

    at: int
    digest: bytes
    width: int
    height: int
    rgb: bytes


@dataclass(frozen=True)
class GenerateCmd:
    req_id: int
    tokens: tuple[int, ...]
    sampling: SamplingParams
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: str | None = None
    images: tuple[ImageInput, ...] = ()


@dataclass(frozen=True)
class EmbedCmd:
    req_id: int
    inputs: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class CancelCmd:
    req_id: int


@dataclass(frozen=True)
class ShutdownCmd:
    pass


@dataclass(frozen=True)
class StatusCmd:
    pass


# ---- events (runner -> server) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Ready:
    ok: bool
    error: str = ""
    n_ctx_train: int = 0
    memory_bytes: int = 0
    # Where the layers went: (device, where, layers) per device, where = an RPC worker's host:port or "local"
    placement: tuple[tuple[str, str, int], ...] = ()
    error_kind: str = ""  # with ok False: engine/rpc.py's name of the error class ("rpc_failed", "rpc_timeout")
    vram_bytes: int = 0  # weights and KV in this machine's GPU memory (/api/ps size_vram)


@dataclass(frozen=True)
class RunnerFatal:
    """A runner's last frame before it ends itself (an RPC worker died or froze under it: engine/rpc.py). The
    server fails every request in flight with this message rather than a bare "runner stopped"."""

    error: str
    kind: str = ""  # as Ready.error_kind


class TextEvent(NamedTuple):
    """Text for one request. The runner sends it as a plain `(req_id, text, logprobs)` tuple and the server makes
    it a TextEvent again: a class-less tuple unpickles about 6x faster, and this crosses the pipe once per token."""

    req_id: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class DoneEvent:
    req_id: int
    reason: str  # "stop" | "length" | "cancel" | "error"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    eval_count: int = 0
    prompt_eval_ns: int = 0
    eval_ns: int = 0
    error: str = ""
    tokens: tuple[int, ...] = field(default_factory=tuple)  # generated token ids (for /api/generate context)
    # With reason "error": "too_long" when the prompt, image tokens included, does not fit num_ctx (only the
    # runner knows how many tokens an image takes), which the client gets as a 400 like any over-long prompt.
    error_kind: str = ""
    stop_sequence: str = ""  # with reason "stop": the stop string that ended it, "" for the model's own end


@dataclass(frozen=True)
class EmbedEvent:
    req_id: int
    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int
    error: str = ""


@dataclass(frozen=True)
class StatusEvent:
    active: int
    free_slots: int
    slot_tokens: tuple[int, ...]
    prompt_evaluated: int = 0  # prompt tokens run through the model since load
    prompt_cached: int = 0  # prompt tokens served from a slot's KV cache instead
    # Speculation since load (engine/speculative.py): steps that verified proposals, tokens proposed, tokens of
    # them accepted, and tokens a grammar forced (fast-forward, appended without sampling)
    spec_steps: int = 0
    spec_proposed: int = 0
    spec_accepted: int = 0
    ff_tokens: int = 0


# What a runner may send: the only classes `loads_event` builds.
EVENT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (TopLogprob, TokenLogprob, Ready, RunnerFatal, TextEvent, DoneEvent, EmbedEvent, StatusEvent)
}
