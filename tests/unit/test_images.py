"""Request images decoded with Pillow before any work (herd/images.py).

What it proves: the five accepted formats decode to the same RGB pixels as the image they were made from (lossless
ones exactly), a GIF gives its first frame, transparency is dropped, the digest names the bytes as sent, and
anything else (garbage, a truncated file, a format outside the five, a picture past the pixel bound) is an
InvalidRequest with a clear text. What it cannot prove: how a real projector resizes what it gets (mtmd does that)."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from herd import images
from herd.errors import InvalidRequest, LimitExceeded
from tests.vision_fixture import image_bytes, png_bytes


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "gif", "bmp"])
def test_accepted_formats_decode(fmt: str) -> None:
    data = image_bytes(fmt, 20, 10, (200, 30, 30))
    img = images.decode_image(data)
    assert (img.width, img.height) == (20, 10)
    assert len(img.rgb) == 20 * 10 * 3
    assert img.digest == hashlib.sha256(data).digest()
    r, g, b = img.rgb[0], img.rgb[1], img.rgb[2]
    assert abs(r - 200) < 12 and abs(g - 30) < 12 and abs(b - 30) < 12  # lossy formats land near the colour


def test_lossless_formats_give_identical_pixels() -> None:
    assert images.decode_image(image_bytes("png", 16, 16, 7)).rgb == images.decode_image(
        image_bytes("bmp", 16, 16, 7)).rgb


def test_gif_first_frame_and_alpha_dropped() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert images.decode_image(buf.getvalue()).rgb[:3] == bytes((255, 0, 0))
    rgba = io.BytesIO()
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(rgba, "PNG")
    assert len(images.decode_image(rgba.getvalue()).rgb) == 4 * 4 * 3


@pytest.mark.parametrize("data", [b"", b"not an image at all", png_bytes()[:40]])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidRequest, match="cannot be decoded"):
        images.decode_image(data)


def test_other_formats_are_refused() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "TIFF")
    with pytest.raises(InvalidRequest, match="cannot be decoded"):
        images.decode_image(buf.getvalue())


def test_pixel_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(LimitExceeded, match="11x10 pixels exceeds"):
        images.decode_image(png_bytes(11, 10))
    assert images.decode_image(png_bytes(10, 10)).width == 10


def test_same_image_decoded_once() -> None:
    a, b = png_bytes(4, 4, 1), png_bytes(4, 4, 2)
    out = images.decode_all([a, b, a])
    assert len(out) == 2 and set(out) == {hashlib.sha256(a).digest(), hashlib.sha256(b).digest()}
