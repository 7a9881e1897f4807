"""GGUF header facts (architecture, sizes, chat template, model_info) read with the `gguf` package, without weights."""

from __future__ import annotations

import math
import mmap
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from herd.errors import InvalidRequest

# llama.cpp's LLAMA_FTYPE values, as Ollama prints them in details.quantization_level.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}

GGUF_MAGIC = b"GGUF"

# Bounds for the header pre-scan (see _check_header). Real models have at most a few thousand tensors and a few
# dozen keys; the vocabulary array (up to ~260k strings) is the largest thing in a header.
_MAX_TENSORS = 1 << 20
_MAX_KV = 1 << 16
_MAX_KEY_LEN = 1 << 16
_MAX_DIMS = 8
_MAX_ARRAY_DEPTH = 4
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str
    shape: tuple[int, ...]


class _BadHeader(Exception):
    pass


# Array items that a lean read keeps: Ollama's /api/show blanks longer arrays unless verbose, so nothing that serves
# tags, show or chat needs them. The vocabulary, scores, token types and merges (each up to ~260k items) are the
# long ones; parsed into Python lists they cost hundreds of MB and seconds per read.
LEAN_ARRAY_MAX = 5

_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_SCALARS: dict[int, struct.Struct] = {
    0: struct.Struct("<B"), 1: struct.Struct("<b"), 2: struct.Struct("<H"), 3: struct.Struct("<h"),
    4: struct.Struct("<I"), 5: struct.Struct("<i"), 6: struct.Struct("<f"), 7: struct.Struct("<?"),
    10: struct.Struct("<Q"), 11: struct.Struct("<q"), 12: struct.Struct("<d"),
}
_DTYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8",
           12: "<f8"}
_TOKENS_KEY = "tokenizer.ggml.tokens"


class _Scan:
    """Walks a GGUF header with bounds checks at every length and count, reading nothing but the header.

    The `gguf` package's reader is not used for this: it trusts the counts and lengths in the header (an absurd
    tensor count or string length, from a truncated or hostile file, makes it allocate or loop without end), and it
    builds a numpy view per array item, which takes seconds for a 256k-token vocabulary."""

    def __init__(self, data: mmap.mmap | bytes) -> None:
        self.data = data
        self.size = len(data)
        self.pos = 0

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > self.size:
            raise _BadHeader("truncated file")
        start = self.pos
        self.pos += n
        return start

    def u32(self) -> int:
        return int(_U32.unpack_from(self.data, self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack_from(self.data, self.take(8))[0])

    def string(self, limit: int | None = None) -> str:
        n = self.u64()
        if limit is not None and n > limit:
            raise _BadHeader(f"string length {n} is out of range")
        start = self.take(n)
        return bytes(self.data[start:start + n]).decode("utf-8", "replace")

    def skip_strings(self, count: int) -> None:
        # The hot loop of a lean read (a vocabulary is one string per token): locals and no method calls.
        data, pos, size, unpack = self.data, self.pos, self.size, _U64.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                raise _BadHeader("truncated file")
            pos += 8 + unpack(data, pos)[0]
            if pos > size:
                raise _BadHeader("truncated file")
        self.pos = pos

    def value(self, kind: int, keep: bool, depth: int = 0) -> object:
        """The value at the cursor; with keep=False, arrays longer than LEAN_ARRAY_MAX are skipped (None)."""
        if kind in _SCALARS:
            return _SCALARS[kind].unpack_from(self.data, self.take(_SCALARS[kind].size))[0]
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise _BadHeader(f"unknown value type {kind}")
        if depth >= _MAX_ARRAY_DEPTH:
            raise _BadHeader("arrays nested too deeply")
        item, count = self.u32(), self.u64()
        left = self.size - self.pos
        if item in _SCALARS:
            width = _SCALARS[item].size
            if count > left // width:
                raise _BadHeader(f"array length {count} is out of range")
            start = self.take(count * width)
            if not keep and count > LEAN_ARRAY_MAX:
                return None
            return np.frombuffer(self.data, dtype=_DTYPES[item], count=count, offset=start).tolist()
        if item not in (_STRING, _ARRAY):
            raise _BadHeader(f"unknown value type {item}")
        if count > left // 8:  # each item starts with at least an 8-byte length
            raise _BadHeader(f"array length {count} is out of range")
        if not keep and count > LEAN_ARRAY_MAX:
            if item == _STRING:
                self.skip_strings(count)
            else:
                for _ in range(count):
                    self.value(item, False, depth + 1)
            return None
        return [self.value(item, keep, depth + 1) for _ in range(count)]

    def string_at(self, start: int, index: int) -> str:
        """Item `index` of the string array whose items begin at `start` (the header has been walked already)."""
        self.pos = start
        self.skip_strings(index)
        return self.string()


@dataclass(frozen=True)
class _Header:
    metadata: dict[str, object]
    tensors: tuple[TensorInfo, ...]
    parameter_count: int
    bos_token: str
    eos_token: str


def _read_header(path: Path, keep_arrays: bool) -> _Header:
    """One bounded pass over the header: every count is checked against the bytes that are left, so the walk ends
    within the file; tensor extents are checked against the file size (a truncated download or upload has a whole
    header and missing weights, which llama.cpp would report later and more vaguely)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise _BadHeader("truncated header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            scan = _Scan(data)
            scan.take(4)  # magic, checked by the caller
            version = scan.u32()
            if version not in (2, 3):
                raise _BadHeader(f"unsupported version {version}")
            n_tensors, n_kv = scan.u64(), scan.u64()
            if n_tensors > _MAX_TENSORS or n_tensors > size // 32:  # a tensor entry takes at least 32 bytes
                raise _BadHeader(f"tensor count {n_tensors} is out of range")
            if n_kv > _MAX_KV or n_kv > size // 13:  # a key-value entry takes at least 13 bytes
                raise _BadHeader(f"key-value count {n_kv} is out of range")
            metadata: dict[str, object] = {}
            tokens_at: int | None = None  # where the vocabulary's first string starts, for the BOS/EOS texts
            n_tokens = 0
            for _ in range(n_kv):
                key = scan.string(limit=_MAX_KEY_LEN)
                if key in metadata:
                    raise _BadHeader(f"duplicate key {key}")
                kind = scan.u32()
                if key == _TOKENS_KEY and kind == _ARRAY:
                    mark = scan.pos
                    item, n_tokens = scan.u32(), scan.u64()
                    if item == _STRING:
                        tokens_at = scan.pos
                    scan.pos = mark
                metadata[key] = scan.value(kind, keep_arrays)
            tensors: list[TensorInfo] = []
            extents: list[tuple[str, int, int]] = []
            names: set[str] = set()
            param_count = 0
            for _ in range(n_tensors):
                name = scan.string(limit=_MAX_KEY_LEN)
                if name in names:
                    raise _BadHeader(f"duplicated tensor {name}")
                names.add(name)
                dims = scan.u32()
                if dims > _MAX_DIMS:
                    raise _BadHeader(f"tensor with {dims} dimensions")
                shape = tuple(scan.u64() for _ in range(dims))
                type_id, offset = scan.u32(), scan.u64()
                try:
                    qtype = GGMLQuantizationType(type_id)
                    block, type_size = GGML_QUANT_SIZES[qtype]
                except (ValueError, KeyError):
                    raise _BadHeader(f"tensor {name} has unknown type {type_id}") from None
                n_elems = math.prod(shape)
                param_count += n_elems
                tensors.append(TensorInfo(name, qtype.name, shape))
                extents.append((name, offset, n_elems * type_size // block))
            alignment = metadata.get("general.alignment", 32)
            if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
                raise _BadHeader("invalid alignment: must be a non-zero power of two")
            data_start = -(-scan.pos // alignment) * alignment
            for name, offset, n_bytes in extents:
                if data_start + offset + n_bytes > size:
                    raise InvalidRequest(f"invalid GGUF file: tensor {name} is truncated")

            def token_text(idx: object) -> str:
                if tokens_at is None or isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < n_tokens:
                    return ""
                return scan.string_at(tokens_at, idx)

            bos = token_text(metadata.get("tokenizer.ggml.bos_token_id"))
            eos = token_text(metadata.get("tokenizer.ggml.eos_token_id"))
    return _Header(metadata, tuple(tensors), param_count, bos, eos)


@dataclass(frozen=True)
class GGUFInfo:
    architecture: str
    parameter_count: int
    file_type: str
    context_length: int
    embedding_length: int
    chat_template: str
    has_pooling: bool
    has_vision: bool
    bos_token: str
    eos_token: str
    # Everything else, as /api/show model_info wants it (JSON-ready values). In a lean info (full=False), arrays
    # longer than LEAN_ARRAY_MAX are None and `tensors` is empty.
    metadata: dict[str, object] = field(default_factory=dict)
    tensors: tuple[TensorInfo, ...] = ()
    full: bool = False

    @property
    def parameter_size(self) -> str:
        n = self.parameter_count
        for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= scale:
                return f"{n / scale:.2f}".rstrip("0").rstrip(".") + unit
        return str(n)

    def model_info(self, verbose: bool = False) -> dict[str, object]:
        info: dict[str, object] = {}
        for key, value in self.metadata.items():
            if key in ("general.name", "tokenizer.chat_template"):
                continue
            if isinstance(value, list) and len(value) > LEAN_ARRAY_MAX and not verbose:
                value = None  # Ollama blanks long arrays unless verbose
            info[key] = value
        info.setdefault("general.parameter_count", self.parameter_count)
        return dict(sorted(info.items()))


# Lean infos by (resolved path, size, mtime): a blob's header is parsed once, whatever asks (tags, show, chat, the
# create path). Bounded, so a store that churns through models does not grow the server without end; an entry is a
# few kB (the chat template is the largest part).
_CACHE_MAX = 256
_cache: OrderedDict[tuple[str, int, int], GGUFInfo] = OrderedDict()
_lock = threading.Lock()
# One parse per blob at a time: twenty /api/tags threads asking for one new model wait for the first one's answer.
_parsing: dict[tuple[str, int, int], threading.Lock] = {}


def _parse(path: Path, keep_arrays: bool) -> GGUFInfo:
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise InvalidRequest("supplied file was not in GGUF format")
    try:
        header = _read_header(path, keep_arrays)
    except _BadHeader as exc:
        raise InvalidRequest(f"invalid GGUF file: {exc}") from None
    except (OSError, ValueError, OverflowError, struct.error) as exc:
        raise InvalidRequest(f"invalid GGUF file: {exc}") from None
    metadata = header.metadata
    param_count = header.parameter_count
    arch = str(metadata.get("general.architecture", ""))
    file_type = metadata.get("general.file_type", -1)
    return GGUFInfo(
        architecture=arch,
        parameter_count=int(metadata.get("general.parameter_count", param_count) or param_count),  # type: ignore[call-overload]
        file_type=_FILE_TYPES.get(file_type, "unknown") if isinstance(file_type, int) else "unknown",
        context_length=int(metadata.get(f"{arch}.context_length", 2048) or 2048),  # type: ignore[call-overload]
        embedding_length=int(metadata.get(f"{arch}.embedding_length", 0) or 0),  # type: ignore[call-overload]
        chat_template=str(metadata.get("tokenizer.chat_template", "") or ""),
        has_pooling=f"{arch}.pooling_type" in metadata,
        has_vision=f"{arch}.vision.block_count" in metadata or "clip.has_vision_encoder" in metadata,
        bos_token=header.bos_token,
        eos_token=header.eos_token,
        metadata={**metadata, "general.parameter_count": metadata.get("general.parameter_count", param_count)},
        tensors=header.tensors if keep_arrays else (),
        full=keep_arrays,
    )


def read_gguf_info(path: Path) -> GGUFInfo:
    """The lean facts of a GGUF header, parsed once per file and cached: arrays longer than LEAN_ARRAY_MAX (the
    vocabulary, merges, scores) are None and the tensor list is empty; `read_gguf_full` has them. Malformed files
    raise InvalidRequest, never crash the process. This reads the file: call it off the event loop."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, int(st.st_mtime_ns))
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
        gate = _parsing.setdefault(key, threading.Lock())
    with gate:
        with _lock:
            hit = _cache.get(key)
        if hit is not None:
            return hit
        try:
            info = _parse(path, keep_arrays=False)
        finally:
            with _lock:
                _parsing.pop(key, None)
        with _lock:
            _cache[key] = info
            while len(_cache) > _CACHE_MAX:
                _cache.popitem(last=False)
    return info


def read_gguf_full(path: Path) -> GGUFInfo:
    """Everything in the header, long arrays and tensors included, for `/api/show` with verbose. Never cached: a
    256k vocabulary as Python strings is tens of MB, and only a verbose show asks for it."""
    path = Path(path)
    return _parse(path, keep_arrays=True)


def cached_infos() -> int:
    """How many headers the lean cache holds (for tests)."""
    with _lock:
        return len(_cache)
