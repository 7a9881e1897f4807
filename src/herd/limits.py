"""Per-request resource bounds (Settings.max_*): how many messages, images and tools a request may carry, and how
large an image may be. Past a bound the request is a 400 (LimitExceeded) before any work is done, so a hostile or
runaway client cannot make the server render, tokenize or hold more than the operator allowed.

Ollama has no such bounds; the body limit (64 MiB by default) is what keeps them finite there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from herd.config import Settings
from herd.errors import LimitExceeded
from herd.types import Message, ToolDef


@dataclass(frozen=True)
class RequestLimits:
    max_messages: int = 10000
    max_images: int = 32
    max_image_bytes: int = 20 * 1024 * 1024
    max_tools: int = 256

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(settings.max_messages, settings.max_images, settings.max_image_bytes, settings.max_tools)

    def check_images(self, images: Iterable[bytes]) -> None:
        count = 0
        for image in images:
            count += 1
            if len(image) > self.max_image_bytes:
                raise LimitExceeded(f"image of {len(image)} bytes exceeds the limit of {self.max_image_bytes} bytes")
        if count > self.max_images:
            raise LimitExceeded(f"{count} images exceed the limit of {self.max_images} per request")

    def check_chat(self, messages: Sequence[Message], tools: Sequence[ToolDef]) -> None:
        if len(messages) > self.max_messages:
            raise LimitExceeded(f"{len(messages)} messages exceed the limit of {self.max_messages}")
        if len(tools) > self.max_tools:
            raise LimitExceeded(f"{len(tools)} tools exceed the limit of {self.max_tools}")
        self.check_images(image for m in messages for image in m.images)
