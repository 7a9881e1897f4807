"""Request images, decoded and checked once, before any work (issue: vision).

Pillow decodes every image in the server, so a request with bytes that are not an image, or an image in a format
herd does not take, is a 400 before a slot is taken, and the runner only ever sees plain RGB pixels (llama.cpp's
own decoder, stb_image, reads no WebP). An image is named by the SHA-256 of the bytes the client sent: the runner's
prompt cache matches images by that name, so the same image in a later turn reuses its KV and any other image is
a miss.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from herd.errors import InvalidRequest, LimitExceeded

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})
# Above this many pixels an image is refused: its RGB alone would be 3 bytes a pixel in the server and the runner,
# and no projector looks at more than a few megapixels (larger images are scaled down inside mtmd anyway).
MAX_PIXELS = 8192 * 8192
UNDECODABLE = "invalid image input: the image cannot be decoded (PNG, JPEG, WebP, GIF and BMP are accepted)"


@dataclass(frozen=True)
class DecodedImage:
    digest: bytes  # SHA-256 of the bytes as sent
    width: int
    height: int
    rgb: bytes = b""  # width * height * 3 bytes, row by row


def image_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def decode_image(data: bytes) -> DecodedImage:
    """Decode one image to RGB (a GIF's first frame, transparency over black as mtmd does), or InvalidRequest.
    Blocking (a few ms to a few hundred for a large photo): call it off the event loop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format not in ACCEPTED_FORMATS:
                    raise InvalidRequest(UNDECODABLE)
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise LimitExceeded(f"image of {width}x{height} pixels exceeds the limit of {MAX_PIXELS} pixels")
                img.seek(0)
                pixels = (img.convert("RGB") if img.mode != "RGB" else img).tobytes()
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning):
        # Pillow reports a truncated or corrupt file with any of these.
        raise InvalidRequest(UNDECODABLE) from None
    if width <= 0 or height <= 0:
        raise InvalidRequest(UNDECODABLE)
    return DecodedImage(image_digest(data), width, height, pixels)


def decode_all(images: Iterable[bytes]) -> dict[bytes, DecodedImage]:
    """Every distinct image of a request, by digest: the same image sent twice is decoded once."""
    out: dict[bytes, DecodedImage] = {}
    for data in images:
        key = image_digest(data)
        if key not in out:
            out[key] = decode_image(data)
    return out
