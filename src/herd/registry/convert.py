"""Hugging Face safetensors folders -> GGUF, written with the `gguf` package.

The part of llama.cpp's `convert_hf_to_gguf.py` that herd needs to `create` a model from a folder (Ollama converts
safetensors folders too): BERT encoders, the sentence-embedding models (all-MiniLM, bge, e5, ...). Tensor names are
mapped with gguf's own `TensorNameMap`, the vocabulary is turned into llama.cpp's WordPiece form, and the pooling
of a sentence-transformers folder (`1_Pooling/config.json`) becomes `bert.pooling_type`, so llama.cpp pools exactly
as sentence-transformers does. Weights are read with numpy from the safetensors layout (no torch, no safetensors
package): a little-endian u64 header size, a JSON header, then raw tensors.

Input is a mapping from relative file name (as in the folder: `config.json`, `1_Pooling/config.json`, ...) to a
path on disk, so the same code serves a local folder and blobs uploaded for /api/create.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from herd.errors import InvalidRequest
from herd.registry.store import Store, sha256_file

BERT_ARCHITECTURES = frozenset({"BertModel", "BertForMaskedLM", "BertForSequenceClassification"})
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}
# Tensors a sentence embedding does not use (the pretraining heads and the CLS pooler).
_SKIP_PREFIXES = ("cls.", "pooler.")
_SKIP_SUFFIXES = ("position_ids",)


def is_convertible(files: Mapping[str, Path]) -> bool:
    return any(name.lower().endswith(".safetensors") for name in files)


def _read_json(files: Mapping[str, Path], name: str) -> dict[str, object] | None:
    path = files.get(name)
    if path is None:
        return None
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot read {name}: {exc}") from None
    return doc if isinstance(doc, dict) else None


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Each tensor of a .safetensors file as a numpy array (memory-mapped; BF16 widened to float32)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise InvalidRequest(f"{Path(path).name}: not a safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if size > 100 * 1024 * 1024:
            raise InvalidRequest(f"{Path(path).name}: not a safetensors file")
        try:
            header = json.loads(f.read(size))
        except ValueError:
            raise InvalidRequest(f"{Path(path).name}: not a safetensors file") from None
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        kind = info["dtype"]
        if kind == "BF16":
            # bfloat16 is the top half of a float32.
            arr = (data[start:end].view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
        elif kind in _DTYPES:
            arr = data[start:end].view(_DTYPES[kind]).reshape(shape)
        else:
            raise InvalidRequest(f"{name}: unsupported tensor type {kind}")
        yield name, arr


def _vocab(files: Mapping[str, Path]) -> list[str]:
    if "vocab.txt" in files:
        lines = Path(files["vocab.txt"]).read_text(encoding="utf-8").split("\n")
        return lines[:-1] if lines and lines[-1] == "" else lines  # one token a line; ids are line numbers
    tok = _read_json(files, "tokenizer.json")
    model = tok.get("model") if tok else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if not isinstance(vocab, dict):
        raise InvalidRequest("no vocabulary (vocab.txt or tokenizer.json) in the model folder")
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def _phantom(token: str) -> str:
    """llama.cpp's WordPiece vocabulary marks word starts with U+2581 instead of marking continuations with ##."""
    if token.startswith("[") and token.endswith("]"):
        return token
    if token.startswith("##"):
        return token[2:]
    return "\u2581" + token


def _pooling(files: Mapping[str, Path]) -> int | None:
    import gguf

    modules = files.get("modules.json")
    folder = "1_Pooling"
    if modules is not None:
        try:
            for module in json.loads(Path(modules).read_text(encoding="utf-8")):
                if str(module.get("type", "")).endswith("Pooling"):
                    folder = str(module.get("path") or folder)
        except (OSError, ValueError, AttributeError):
            pass
    cfg = _read_json(files, f"{folder}/config.json")
    if cfg is None:
        return None  # no pooling: llama.cpp then returns per-token states, and herd's runner mean-pools them
    if cfg.get("pooling_mode_mean_tokens"):
        return int(gguf.PoolingType.MEAN)
    if cfg.get("pooling_mode_cls_token"):
        return int(gguf.PoolingType.CLS)
    if cfg.get("pooling_mode_lasttoken"):
        return int(gguf.PoolingType.LAST)
    raise InvalidRequest("unsupported pooling in 1_Pooling/config.json (mean, cls or last token only)")


def convert_to_gguf(files: Mapping[str, Path], out: Path, name: str = "") -> None:
    """Write a GGUF (F16 matrices, F32 vectors) for the model in `files`; InvalidRequest if it is not supported."""
    import gguf

    config = _read_json(files, "config.json")
    if config is None:
        raise InvalidRequest("config.json is missing from the model folder")
    archs = config.get("architectures") or []
    if not (isinstance(archs, list) and set(archs) & BERT_ARCHITECTURES) and config.get("model_type") != "bert":
        raise InvalidRequest(f"unsupported architecture {archs!r}: herd converts BERT models only")
    sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings")
    hp = {k: v for k in sizes if isinstance(v := config.get(k), int)}
    if len(hp) != 5:
        raise InvalidRequest("config.json lacks the BERT sizes (hidden_size, num_hidden_layers, ...)")
    tokens = _vocab(files)
    tok_cfg = _read_json(files, "tokenizer_config.json") or {}
    if tok_cfg.get("do_lower_case") is False:
        # llama.cpp's WordPiece tokenizer always lower-cases, so a cased model would see the wrong tokens.
        raise InvalidRequest("cased BERT tokenizers are not supported")

    arch = gguf.MODEL_ARCH.BERT
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name or str(config.get("_name_or_path") or "bert"))
    writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_block_count(hp["num_hidden_layers"])
    writer.add_head_count(hp["num_attention_heads"])
    writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))  # type: ignore[arg-type]
    writer.add_causal_attention(False)
    pooling = _pooling(files)
    if pooling is not None:
        writer.add_pooling_type(gguf.PoolingType(pooling))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    special = {t: i for i, t in enumerate(tokens) if t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([_phantom(t) for t in tokens])
    writer.add_token_types([int(gguf.TokenType.CONTROL) if t in special else int(gguf.TokenType.NORMAL)
                            for t in tokens])
    writer.add_token_type_count(int(config.get("type_vocab_size", 2)))  # type: ignore[call-overload]
    for token, add in (("[UNK]", writer.add_unk_token_id), ("[SEP]", writer.add_sep_token_id),
                       ("[PAD]", writer.add_pad_token_id), ("[MASK]", writer.add_mask_token_id)):
        if token in special:
            add(special[token])
    if "[CLS]" in special:
        writer.add_bos_token_id(special["[CLS]"])  # llama.cpp opens every input with it, and closes with [SEP]

    names = gguf.TensorNameMap(arch, hp["num_hidden_layers"])
    weights = sorted(n for n in files if n.lower().endswith(".safetensors"))
    if not weights:
        raise InvalidRequest("no .safetensors files in the model folder")
    written = 0
    for weight_file in weights:
        for src, arr in read_safetensors(files[weight_file]):
            src = src.removeprefix("bert.")  # BertForMaskedLM and friends nest the encoder under "bert."
            if src.startswith(_SKIP_PREFIXES) or src.endswith(_SKIP_SUFFIXES):
                continue
            dst = names.get_name(src, try_suffixes=(".weight", ".bias"))
            if dst is None:
                raise InvalidRequest(f"cannot map tensor {src!r} to GGUF")
            # Matrices in F16 (what llama.cpp's converter writes by default); norms, biases and the token-type
            # table stay F32 (llama.cpp adds a row of that table to F32 activations directly).
            half = arr.ndim == 2 and not dst.startswith("token_types")
            data = arr.astype(np.float16 if half else np.float32)
            writer.add_tensor(dst, np.ascontiguousarray(data))
            written += 1
    if not written:
        raise InvalidRequest("no tensors found in the safetensors files")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def convert_into_store(store: Store, files: Mapping[str, Path], name: str = "") -> tuple[str, int]:
    """Convert and add the GGUF to the store as a blob; returns (digest, size). The file is written inside the
    blob folder and renamed into place, so a half-written GGUF never carries a digest."""
    fd, tmp_name = tempfile.mkstemp(dir=store.blobs, prefix=".tmp-convert-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        convert_to_gguf(files, tmp, name)
        digest = "sha256:" + sha256_file(tmp)
        size = tmp.stat().st_size
        target = store.blob_path(digest)
        if target.exists():
            tmp.unlink()
        else:
            os.replace(tmp, target)
        return digest, size
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
