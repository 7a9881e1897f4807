"""GGUF header facts (architecture, sizes, chat template, model_info) read with the `gguf` package, without weights."""

from __future__ import annotations

import mmap
import os
import struct
import threading
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
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class _BadHeader(Exception):
    pass


class _Scan:
    """Walks a GGUF header with bounds checks at every length and count, reading nothing but the header."""

    def __init__(self, data: mmap.mmap | bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > len(self.data):
            raise _BadHeader("truncated file")
        start = self.pos
        self.pos += n
        return start

    def u32(self) -> int:
        return int(struct.unpack_from("<I", self.data, self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack_from("<Q", self.data, self.take(8))[0])

    def string(self, limit: int | None = None) -> None:
        n = self.u64()
        if limit is not None and n > limit:
            raise _BadHeader(f"string length {n} is out of range")
        self.take(n)

    def value(self, kind: int, depth: int = 0) -> None:
        if kind in _SCALAR_SIZES:
            self.take(_SCALAR_SIZES[kind])
        elif kind == _STRING:
            self.string()
        elif kind == _ARRAY:
            if depth >= _MAX_ARRAY_DEPTH:
                raise _BadHeader("arrays nested too deeply")
            item, count = self.u32(), self.u64()
            left = len(self.data) - self.pos
            if item in _SCALAR_SIZES:
                if count > left // _SCALAR_SIZES[item]:
                    raise _BadHeader(f"array length {count} is out of range")
                self.take(count * _SCALAR_SIZES[item])
            elif item in (_STRING, _ARRAY):
                if count > left // 8:  # each item starts with at least an 8-byte length
                    raise _BadHeader(f"array length {count} is out of range")
                for _ in range(count):
                    self.value(item, depth + 1)
            else:
                raise _BadHeader(f"unknown value type {item}")
        else:
            raise _BadHeader(f"unknown value type {kind}")


def _check_header(path: Path) -> None:
    """Cheap sanity checks before the `gguf` package sees the file: it trusts the counts and lengths in the header,
    and an absurd tensor count or string length (a truncated or hostile file) would make it allocate or loop
    without end. Every count is checked against the bytes that are left, so the scan ends within the file."""
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
            for _ in range(n_kv):
                scan.string(limit=_MAX_KEY_LEN)
                scan.value(scan.u32())
            for _ in range(n_tensors):
                scan.string(limit=_MAX_KEY_LEN)
                dims = scan.u32()
                if dims > _MAX_DIMS:
                    raise _BadHeader(f"tensor with {dims} dimensions")
                scan.take(8 * dims + 4 + 8)  # the dimensions, the type and the data offset


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str
    shape: tuple[int, ...]


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
    # Everything else, as /api/show model_info wants it (JSON-ready values).
    metadata: dict[str, object] = field(default_factory=dict)
    tensors: tuple[TensorInfo, ...] = ()

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
            if isinstance(value, list) and len(value) > 5 and not verbose:
                value = None  # Ollama blanks long arrays unless verbose
            info[key] = value
        info.setdefault("general.parameter_count", self.parameter_count)
        return dict(sorted(info.items()))


def _value(field_: object) -> object:
    contents = field_.contents()  # type: ignore[attr-defined]
    if isinstance(contents, (np.generic,)):
        return contents.item()
    if isinstance(contents, bytes):
        return contents.decode("utf-8", "replace")
    return contents


_cache: dict[tuple[str, int, int], GGUFInfo] = {}
_lock = threading.Lock()


def read_gguf_info(path: Path) -> GGUFInfo:
    """Parse a GGUF header; malformed files raise InvalidRequest, never crash the process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, int(st.st_mtime_ns))
    with _lock:
        if key in _cache:
            return _cache[key]
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise InvalidRequest("supplied file was not in GGUF format")
    try:
        _check_header(path)
    except _BadHeader as exc:
        raise InvalidRequest(f"invalid GGUF file: {exc}") from None
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"invalid GGUF file: {exc}") from None
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path), "r")
        metadata: dict[str, object] = {}
        for name, fld in reader.fields.items():
            if name.startswith("GGUF."):
                continue
            try:
                metadata[name] = _value(fld)
            except Exception:  # an odd field must not hide the rest of the header
                continue
        for t in reader.tensors:
            # A truncated download or upload: the header is whole, the weights are not. llama.cpp would fail to
            # load it later with a vaguer error; say it here, as a client error.
            if int(t.data_offset) + int(t.n_bytes) > st.st_size:
                raise InvalidRequest(f"invalid GGUF file: tensor {t.name} is truncated")
        tensors = tuple(
            TensorInfo(t.name, t.tensor_type.name, tuple(int(x) for x in t.shape)) for t in reader.tensors
        )
        param_count = sum(int(np.prod(t.shape)) for t in reader.tensors)
    except InvalidRequest:
        raise
    except Exception as exc:  # whatever the gguf package raises on a bad file means a bad file
        raise InvalidRequest(f"invalid GGUF file: {exc}") from None
    arch = str(metadata.get("general.architecture", ""))
    tokens = None
    bos_id = metadata.get("tokenizer.ggml.bos_token_id")
    eos_id = metadata.get("tokenizer.ggml.eos_token_id")
    token_list = reader.fields.get("tokenizer.ggml.tokens")
    if token_list is not None:
        tokens = token_list
    def _token_text(idx: object) -> str:
        if tokens is None or not isinstance(idx, int):
            return ""
        try:
            return bytes(tokens.parts[tokens.data[idx]]).decode("utf-8", "replace")
        except Exception:
            return ""
    info = GGUFInfo(
        architecture=arch,
        parameter_count=int(metadata.get("general.parameter_count", param_count) or param_count),  # type: ignore[call-overload]
        file_type=_FILE_TYPES.get(metadata.get("general.file_type", -1), "unknown"),  # type: ignore[arg-type]
        context_length=int(metadata.get(f"{arch}.context_length", 2048) or 2048),  # type: ignore[call-overload]
        embedding_length=int(metadata.get(f"{arch}.embedding_length", 0) or 0),  # type: ignore[call-overload]
        chat_template=str(metadata.get("tokenizer.chat_template", "") or ""),
        has_pooling=f"{arch}.pooling_type" in metadata,
        has_vision=f"{arch}.vision.block_count" in metadata or "clip.has_vision_encoder" in metadata,
        bos_token=_token_text(bos_id),
        eos_token=_token_text(eos_id),
        metadata={**metadata, "general.parameter_count": metadata.get("general.parameter_count", param_count)},
        tensors=tensors,
    )
    with _lock:
        _cache[key] = info
    return info
