"""Fetching a remote image URL, only when the operator allows it (HERD_ALLOW_IMAGE_URLS=1).

Off by default: a server that fetches any URL a request names can be made to reach hosts that only it can see
(request forgery). When allowed, a fetch is bounded in time and in bytes (HERD_MAX_IMAGE_BYTES), follows at most a
few redirects, and any failure is a 400 naming the URL.
"""

from __future__ import annotations

import httpx

from herd.errors import InvalidRequest, LimitExceeded

FETCH_TIMEOUT_S = 20.0
MAX_REDIRECTS = 3


async def fetch_image(url: str, max_bytes: int) -> bytes:
    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=True, max_redirects=MAX_REDIRECTS,
                                     trust_env=False) as client, client.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise InvalidRequest(f"could not fetch image {url}: HTTP {resp.status_code}")
            data = bytearray()
            async for piece in resp.aiter_bytes():
                data += piece
                if len(data) > max_bytes:
                    raise LimitExceeded(f"image at {url} exceeds the limit of {max_bytes} bytes")
            return bytes(data)
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"could not fetch image {url}: {exc.__class__.__name__}") from None
