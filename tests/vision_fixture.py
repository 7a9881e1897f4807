"""A synthetic vision projector ("mmproj") for SmolLM2-135M, and small test images.

`write_projector` writes a LLaVA-style CLIP GGUF (`clip.projector_type = "mlp"`) with random weights: a 32x32
input, 8x8 patches (16 patches), a 64-wide ViT with 2 blocks (LLaVA reads the penultimate layer, so mtmd runs
block 0 only; block 1 is loaded and unused, as in real LLaVA files), and a two-layer MLP projector whose output
width equals the text model's embedding width (576 for SmolLM2). llama.cpp's mtmd (libmtmd in
llama-cpp-python 0.3.36) loads it next to the text model like any real mmproj file.

What it proves: an image's pixels reach the text model through a real mtmd path: the image is decoded from its
file bytes (stb_image inside mtmd), resized to 32x32, encoded by a real ggml CLIP graph, projected to 576 and
decoded by llama.cpp as `IMAGE_TOKENS` embedding positions. Different pixels give different embeddings and
so different logits; the same pixels give the same output.

What it cannot prove: anything about answer quality (the weights are noise, so the "description" of an image
is gibberish), nor anything about real projector types other than "mlp" (no M-RoPE, no non-causal decode, no
image begin/end tokens, no tiling/slicing, no dynamic resolution: every image becomes exactly IMAGE_TOKENS
tokens whatever its size).
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np

# Vision tower and projector shapes (all measured against libmtmd of llama-cpp-python 0.3.36).
IMAGE_SIZE = 32  # clip.vision.image_size: every image is padded to a square and resized to 32x32
PATCH_SIZE = 8  # clip.vision.patch_size
N_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 16
VISION_EMBD = 64  # clip.vision.embedding_length
VISION_FF = 128  # clip.vision.feed_forward_length (must differ from VISION_EMBD: mtmd swaps up/down if equal)
VISION_HEADS = 4  # clip.vision.attention.head_count
VISION_BLOCKS = 2  # clip.vision.block_count (LLaVA graph runs block_count - 1 of them)
N_EMBD = 576  # default projector output width = SmolLM2-135M's llama.embedding_length

IMAGE_TOKENS = 16  # tokens (and positions) one image takes in the text model, any input size
IMAGE_N_POS = 16  # mtmd_input_chunk_get_n_pos of the image chunk (causal model, 1 position per token)
# mtmd adds no text chunk of its own around an mlp image: "<marker>" alone tokenizes to one image chunk.
IMAGE_WRAPPER_TOKENS = 0

PROJECTOR_NAME = "herd-synthetic-llava-mlp"


def write_projector(path: Path, n_embd: int = N_EMBD, seed: int = 0) -> Path:
    """Write the synthetic mmproj GGUF to `path` (same seed and width, same bytes) and return `path`."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    d, ff, n_pos = VISION_EMBD, VISION_FF, N_PATCHES + 1  # +1: class embedding
    tensors: list[tuple[str, np.ndarray]] = [
        # numpy shapes are PyTorch order; the GGUF stores them reversed (ggml ne[0] = last numpy axis).
        ("v.class_embd", normal((d,), 0.5)),
        ("v.patch_embd.weight", normal((d, 3, PATCH_SIZE, PATCH_SIZE), 1.0 / np.sqrt(3 * PATCH_SIZE**2))),
        ("v.position_embd.weight", normal((n_pos, d), 0.5)),
        ("v.pre_ln.weight", np.ones(d, np.float32)),
        ("v.pre_ln.bias", np.zeros(d, np.float32)),
    ]
    for il in range(VISION_BLOCKS):
        p = f"v.blk.{il}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors += [(f"{p}.{name}.weight", normal((d, d), 1.0 / np.sqrt(d))), (f"{p}.{name}.bias", normal((d,), 0.02))]
        tensors += [
            (f"{p}.ln1.weight", np.ones(d, np.float32)),
            (f"{p}.ln1.bias", np.zeros(d, np.float32)),
            (f"{p}.ffn_up.weight", normal((ff, d), 1.0 / np.sqrt(d))),
            (f"{p}.ffn_up.bias", normal((ff,), 0.02)),
            (f"{p}.ffn_down.weight", normal((d, ff), 1.0 / np.sqrt(ff))),
            (f"{p}.ffn_down.bias", normal((d,), 0.02)),
            (f"{p}.ln2.weight", np.ones(d, np.float32)),
            (f"{p}.ln2.bias", np.zeros(d, np.float32)),
        ]
    tensors += [
        ("v.post_ln.weight", np.ones(d, np.float32)),
        ("v.post_ln.bias", np.zeros(d, np.float32)),
        # LLaVA projector: mm.0 (d -> n_embd), GELU, mm.2 (n_embd -> n_embd). The output is scaled to about the
        # spread of SmolLM2's token embeddings (std 0.14) so the text model sees inputs of a familiar size.
        ("mm.0.weight", normal((n_embd, d), 1.0 / np.sqrt(d))),
        ("mm.0.bias", normal((n_embd,), 0.02)),
        ("mm.2.weight", normal((n_embd, n_embd), 0.25 / np.sqrt(n_embd))),
        ("mm.2.bias", normal((n_embd,), 0.02)),
    ]

    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), arch="clip")  # writes general.architecture = "clip"
    w.add_string("general.name", PROJECTOR_NAME)
    w.add_string("general.description", f"synthetic random-weight LLaVA mlp projector, seed {seed}; test fixture only")
    w.add_uint32("general.file_type", 0)  # all F32
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", False)
    w.add_string("clip.projector_type", "mlp")
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH_SIZE)
    w.add_uint32("clip.vision.embedding_length", d)
    w.add_uint32("clip.vision.feed_forward_length", ff)
    w.add_uint32("clip.vision.projection_dim", n_embd)
    w.add_uint32("clip.vision.block_count", VISION_BLOCKS)
    w.add_uint32("clip.vision.attention.head_count", VISION_HEADS)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
    w.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])
    w.add_bool("clip.use_gelu", False)  # gelu_quick in the ViT FFN, as OpenAI CLIP
    for name, arr in tensors:
        w.add_tensor(name, np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------------------
# Test images

Color = tuple[int, int, int]


def image(width: int, height: int, color_or_seed: Color | int = (200, 30, 30)):  # -> PIL.Image.Image
    """An RGB Pillow image: a solid colour for an (r, g, b) tuple, seeded random noise for an int."""
    from PIL import Image

    if isinstance(color_or_seed, int):
        r = random.Random(color_or_seed)
        return Image.frombytes("RGB", (width, height), r.randbytes(width * height * 3))
    return Image.new("RGB", (width, height), tuple(color_or_seed))


def encode(img, fmt: str, **save_args) -> bytes:
    """Pillow image -> file bytes in `fmt` ("PNG", "JPEG", "WEBP", "GIF", "BMP")."""
    buf = io.BytesIO()
    img.save(buf, format=fmt.upper(), **save_args)
    return buf.getvalue()


def png_bytes(width: int = 32, height: int = 32, color_or_seed: Color | int = (200, 30, 30)) -> bytes:
    return encode(image(width, height, color_or_seed), "PNG")


def jpeg_bytes(width: int = 32, height: int = 32, color_or_seed: Color | int = (200, 30, 30)) -> bytes:
    return encode(image(width, height, color_or_seed), "JPEG", quality=95)


def webp_bytes(width: int = 32, height: int = 32, color_or_seed: Color | int = (200, 30, 30)) -> bytes:
    return encode(image(width, height, color_or_seed), "WEBP", lossless=True)


def gif_bytes(width: int = 32, height: int = 32, color_or_seed: Color | int = (200, 30, 30)) -> bytes:
    return encode(image(width, height, color_or_seed), "GIF")


def bmp_bytes(width: int = 32, height: int = 32, color_or_seed: Color | int = (200, 30, 30)) -> bytes:
    return encode(image(width, height, color_or_seed), "BMP")


IMAGE_MAKERS = {"png": png_bytes, "jpeg": jpeg_bytes, "webp": webp_bytes, "gif": gif_bytes, "bmp": bmp_bytes}
# What mtmd_helper_bitmap_init_from_buf decodes in this build (stb_image): everything but WebP. For bytes stb_image
# cannot read, the helper tries audio (the mlp projector has none) and then video by launching `ffprobe` (absent
# here), and returns NULL; with ffmpeg on PATH the outcome for WebP may differ.
DECODABLE_FORMATS = ("png", "jpeg", "gif", "bmp")
UNDECODABLE_FORMATS = ("webp",)


def image_bytes(fmt: str, width: int = 32, height: int = 32, color_or_seed: Color | int = (200, 30, 30)) -> bytes:
    return IMAGE_MAKERS[fmt.lower()](width, height, color_or_seed)


def rgb_bytes(width: int = 32, height: int = 32, color_or_seed: Color | int = (200, 30, 30)) -> bytes:
    """Raw packed RGB (width*height*3 bytes, row-major), as `mtmd_bitmap_init(nx, ny, data)` takes it."""
    return image(width, height, color_or_seed).tobytes()


__all__ = [
    "DECODABLE_FORMATS",
    "IMAGE_MAKERS",
    "IMAGE_N_POS",
    "IMAGE_SIZE",
    "IMAGE_TOKENS",
    "IMAGE_WRAPPER_TOKENS",
    "N_EMBD",
    "PATCH_SIZE",
    "UNDECODABLE_FORMATS",
    "bmp_bytes",
    "encode",
    "gif_bytes",
    "image",
    "image_bytes",
    "jpeg_bytes",
    "png_bytes",
    "rgb_bytes",
    "webp_bytes",
    "write_projector",
]
