"""Milliseconds per image, from request to first token: herd against mtmd driven directly, in the same run.

    python bench/vision_bench.py                 # 8 repeats per case
    python bench/vision_bench.py --repeats 20 --images 32x32:png,1024x768:jpeg

The model is the default SmolLM2-135M with the synthetic LLaVA-style projector of tests/vision_fixture.py (each
image is 16 image tokens). For each image size:
  herd   a streamed /api/chat with one image, `num_predict: 1`: the time from sending the request to the first
         token's line, on a server with HERD_PROMPT_CACHE=0 (raw mtmd starts from an empty KV cache every time, so
         herd evaluates the whole prompt too). The image is new each time.
  raw    bench/mtmd_raw.py on the same image bytes and the same prompt text (herd's rendered prompt, with mtmd's
         marker where herd places the image): bitmap from the file bytes, mtmd tokenize, mtmd_helper_eval_chunks,
         and the first token's argmax, from an empty KV cache. No HTTP, no JSON, no process hop.
  ratio  raw / herd (1.0 = as fast as raw; the target is >= 0.9).
Then the second turn: a conversation whose history repeats turn 1's image, timed to the first token with the image
KV reused (prompt cache on) and without (a server started with HERD_PROMPT_CACHE=0).

Figures are medians; on a 2-core machine run it with nothing else running. Comparable only within one run.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench._common import stream_chat
from bench.mtmd_raw import MtmdRaw, default_model_file
from herd.registry.default_model import DEFAULT_MODEL, register_default_model
from herd.registry.names import ModelName
from herd.registry.store import LAYER_PREFIX, Layer, Manifest, Store
from tests.integration.server import HerdServer
from tests.vision_fixture import image_bytes, write_projector

MODEL = "smolvision"
QUESTION = "What is in this picture?"
OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 1}


def make_store(root: Path) -> Path:
    store = Store(root / "models")
    register_default_model(store)
    projector = write_projector(root / "mmproj.gguf")
    blob = store.write_blob(projector.read_bytes())
    base = store.find(DEFAULT_MODEL).manifest
    layers = (*base.layers, Layer(LAYER_PREFIX + "projector", blob.digest, blob.size))
    store.write_manifest(ModelName.parse(MODEL), Manifest(config=base.config, layers=layers))
    return projector


def chat_body(messages: list[dict[str, object]], num_predict: int = 1) -> dict[str, object]:
    return {"model": MODEL, "messages": messages, "options": {**OPTIONS, "num_predict": num_predict}}


def user(text: str, image: bytes | None = None) -> dict[str, object]:
    msg: dict[str, object] = {"role": "user", "content": text}
    if image is not None:
        msg["images"] = [base64.b64encode(image).decode()]
    return msg


def rendered_prompt(url: str, image: bytes) -> str:
    r = httpx.post(url + "/api/chat", json={**chat_body([user(QUESTION, image)]), "_debug_render_only": True,
                                            "stream": False}, timeout=60)
    r.raise_for_status()
    return str(r.json()["_debug_info"]["rendered_template"])


def herd_ttft(url: str, images: list[bytes]) -> list[float]:
    return [stream_chat(url, chat_body([user(QUESTION, img)]))[0] * 1e3 for img in images]


def second_turn_ttft(url: str, images: list[bytes]) -> list[float]:
    out = []
    for img in images:
        first = [user(QUESTION, img)]
        r = httpx.post(url + "/api/chat", json={**chat_body(first, 12), "stream": False}, timeout=120)
        r.raise_for_status()
        answer = r.json()["message"]["content"]
        history = [*first, {"role": "assistant", "content": answer}, user("And what colour is it?")]
        out.append(stream_chat(url, chat_body(history))[0] * 1e3)
    return out


def images_of(case: str, count: int, start: int) -> list[bytes]:
    """`count` different pictures (random pixels, seeded) of a case "WxH:format"."""
    size, _, fmt = case.partition(":")
    w, h = (int(v) for v in size.split("x"))
    return [image_bytes(fmt or "png", w, h, start + i) for i in range(count)]


def med(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=8)
    # A JPEG of random pixels at quality 90 is about the size of a photo (0.7 MB at 1024x768); a PNG of random
    # pixels cannot be compressed (2.3 MB, 3.1 MB as base64 in the request): the worst case for the transport.
    ap.add_argument("--images", default="32x32:png,1024x768:jpeg,1024x768:png")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="herd-vision-bench-"))
    projector = make_store(root)
    sizes = [s for s in args.images.split(",") if s]
    rows = []
    # Image to first token on a server without prefix reuse: raw mtmd starts every request from an empty KV
    # cache, so herd must evaluate the whole prompt too (with reuse it would skip the text before the image).
    no_cache = HerdServer(root / "models", env={"HERD_PROMPT_CACHE": "0"}).start()
    try:
        herd_ttft(no_cache.url, images_of("32x32:png", 2, 9000))  # load the runner, warm both paths
        marker_prompt = {size: rendered_prompt(no_cache.url, images_of(size, 1, 0)[0]) for size in sizes}
        herd = {size: herd_ttft(no_cache.url, images_of(size, args.repeats, 100 * (i + 1)))
                for i, size in enumerate(sizes)}
        not_reused = second_turn_ttft(no_cache.url, images_of("32x32:png", args.repeats, 5000))
    finally:
        no_cache.stop()
    with MtmdRaw(default_model_file(), projector) as raw:
        raw.run(images_of("32x32:png", 1, 9000)[0], "{marker}hi", 1)  # warm
        raw_ms = {}
        for i, size in enumerate(sizes):
            prompt = marker_prompt[size].replace("[img-0]", "{marker}")
            raw_ms[size] = [float(raw.run(img, prompt, 1)["ttft_ms"])  # type: ignore[arg-type]
                            for img in images_of(size, args.repeats, 100 * (i + 1))]
    server = HerdServer(root / "models").start()
    try:
        herd_ttft(server.url, images_of("32x32:png", 1, 9000))
        reused = second_turn_ttft(server.url, images_of("32x32:png", args.repeats, 5000))
    finally:
        server.stop()
    print(f"image to first token, median of {args.repeats} (ms); the image is new every time")
    print(f"{'image':>15} {'bytes':>9} {'herd':>8} {'raw mtmd':>9} {'raw/herd':>9}")
    for size in sizes:
        h, r = med(herd[size]), med(raw_ms[size])
        rows.append((size, h, r))
        print(f"{size:>15} {len(images_of(size, 1, 100)[0]):9d} {h:8.1f} {r:9.1f} {r / h:9.2f}")
    print(f"\nsecond turn, its history repeating turn 1's 32x32 image: first token, median of {args.repeats} (ms)")
    print(f"{'image KV reused':>22} {med(reused):8.1f}")
    print(f"{'no reuse (cache off)':>22} {med(not_reused):8.1f}")
    print(f"{'speed-up':>22} {med(not_reused) / med(reused):8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
