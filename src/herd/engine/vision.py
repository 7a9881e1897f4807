"""A runner's vision projector: llama.cpp's multimodal library (mtmd, `llama_cpp.mtmd_cpp`) next to the text model.

mtmd turns one image into the model's input chunks: the image's own tokens (embeddings from the projector), and
for some projectors text tokens around them (Gemma 3's `<start_of_image>`, Qwen-VL's vision start and end). The
worker puts those in the sequence's prompt where the image goes, and evaluates an image chunk into the sequence's own
KV on its own (an image's embeddings cannot share a llama_batch with other sequences' tokens), one image chunk per
step, so the other streams keep decoding between images.

Runs inside the runner process only.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass, field

from herd.engine.protocol import ImageInput


def cache_keys(items: Sequence[int | ImageChunk]) -> list[int]:
    """One entry per KV position: the token, or the image's key at each of its positions."""
    keys: list[int] = []
    for item in items:
        if isinstance(item, ImageChunk):
            keys.extend([item.key] * item.n_pos)
        else:
            keys.append(item)
    return keys


def image_key(digest: bytes) -> int:
    """What a slot's cached tokens hold at each position of an image: a negative number (token ids are not) from
    the image's content hash, so only the same image matches in a later prompt."""
    return -1 - int.from_bytes(digest[:7], "big")


@dataclass(eq=False)
class ImageChunk:
    ptr: object  # mtmd_input_chunk *, owned by its PreparedImage's chunk list
    n_tokens: int  # embeddings it adds (what Ollama counts in prompt_eval_count)
    n_pos: int  # positions it takes (fewer than n_tokens with M-RoPE)
    key: int


@dataclass(eq=False)
class PreparedImage:
    chunks: object  # mtmd_input_chunks *: freed with free()
    items: list[int | ImageChunk] = field(default_factory=list)


class Vision:
    def __init__(self, L: object, model: object, lctx: object, projector_path: str, n_threads: int,
                 n_batch: int) -> None:
        import llama_cpp.mtmd_cpp as M

        self.M = M
        self.L = L
        self.lctx = lctx
        self.n_batch = n_batch
        self._log_cb = M.llama_cpp.llama_log_callback(lambda level, text, data: None)  # kept alive for ctypes
        M.mtmd_log_set(self._log_cb, ctypes.c_void_p(0))
        M.mtmd_helper_log_set(self._log_cb, ctypes.c_void_p(0))
        params = M.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = n_threads
        params.print_timings = False
        self.ctx = M.mtmd_init_from_file(projector_path.encode(), model, params)
        if not self.ctx:
            raise RuntimeError(f"unable to load the vision projector {projector_path}")
        if not M.mtmd_support_vision(self.ctx):
            M.mtmd_free(self.ctx)
            self.ctx = None
            raise RuntimeError(f"the projector {projector_path} has no vision encoder")
        self.marker = M.mtmd_default_marker()

    def prepare(self, image: ImageInput) -> PreparedImage:
        """The chunks mtmd makes of one image (preprocessed, not yet encoded). Raises ValueError if it cannot."""
        M = self.M
        if len(image.rgb) != image.width * image.height * 3:
            raise ValueError("the image's pixels do not match its size")
        # mtmd copies the pixels: it may read them straight from the bytes object.
        data = ctypes.cast(ctypes.c_char_p(image.rgb), ctypes.POINTER(ctypes.c_uint8))
        bitmap = M.mtmd_bitmap_init(image.width, image.height, data)
        if not bitmap:
            raise ValueError("mtmd could not take the image")
        chunks = M.mtmd_input_chunks_init()
        try:
            M.mtmd_bitmap_set_id(bitmap, image.digest.hex().encode())
            text = M.mtmd_input_text(self.marker, len(self.marker), False, True)
            bitmaps = (M.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = M.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), bitmaps, 1)
        finally:
            M.mtmd_bitmap_free(bitmap)
        prepared = PreparedImage(chunks)
        if rc != 0:
            self.free(prepared)
            raise ValueError(f"mtmd could not tokenize the image ({rc})")
        key = image_key(image.digest)
        for i in range(M.mtmd_input_chunks_size(chunks)):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            kind = M.mtmd_input_chunk_get_type(chunk)
            if kind == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                tokens = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                prepared.items.extend(int(tokens[j]) for j in range(n.value))
            elif kind == M.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                prepared.items.append(ImageChunk(chunk, int(M.mtmd_input_chunk_get_n_tokens(chunk)),
                                                 int(M.mtmd_input_chunk_get_n_pos(chunk)), key))
            else:
                self.free(prepared)
                raise ValueError("the projector made a chunk that is not an image")
        return prepared

    def prompt_items(self, tokens: Sequence[int], images: Sequence[ImageInput]
                     ) -> tuple[list[int | ImageChunk], list[PreparedImage]]:
        """The prompt as the KV cache will hold it: text tokens, with each image's mtmd chunks where it goes."""
        prepared: list[PreparedImage] = []
        items: list[int | ImageChunk] = []
        last = 0
        try:
            for image in images:
                items.extend(tokens[last:image.at])
                last = image.at
                p = self.prepare(image)
                prepared.append(p)
                items.extend(p.items)
        except Exception:
            for p in prepared:
                self.free(p)
            raise
        items.extend(tokens[last:])
        return items, prepared

    def free(self, prepared: PreparedImage) -> None:
        if prepared.chunks:
            self.M.mtmd_input_chunks_free(prepared.chunks)
            prepared.chunks = None
            prepared.items.clear()

    def evaluate(self, chunk: ImageChunk, n_past: int, seq_id: int) -> None:
        """Encode an image chunk with the projector and decode its embeddings into `seq_id`'s KV at `n_past`."""
        M = self.M
        rc = M.mtmd_encode_chunk(self.ctx, chunk.ptr)
        if rc != 0:
            raise RuntimeError(f"the projector failed to encode the image ({rc})")
        embd = M.mtmd_get_output_embd(self.ctx)
        new_n_past = self.L.llama_pos(0)
        rc = M.mtmd_helper_decode_image_chunk(self.ctx, self.lctx, chunk.ptr, embd, n_past, seq_id, self.n_batch,
                                              ctypes.byref(new_n_past), M.mtmd_helper_post_decode_callback(), None)
        if rc != 0:
            raise RuntimeError(f"decoding the image failed ({rc})")

    def close(self) -> None:
        if self.ctx:
            self.M.mtmd_free(self.ctx)
            self.ctx = None
