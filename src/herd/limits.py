"""Per-request resource bounds (Settings.max_*): how many messages, images, tools, stop sequences and embedding
inputs a request may carry, and how large an image, a stop sequence or an embed request's tokens may be. Past a
bound the request is a 400 (LimitExceeded) before any work is done, so a hostile or runaway client cannot make the
server render, tokenize or hold more than the operator allowed.

Ollama has no such bounds; the body limit (64 MiB by default) is what keeps them finite there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
    max_embed_inputs: int = 2048
    max_embed_tokens: int = 262144
    max_stop: int = 64
    max_stop_length: int = 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(settings.max_messages, settings.max_images, settings.max_image_bytes, settings.max_tools,
                   settings.max_embed_inputs, settings.max_embed_tokens, settings.max_stop, settings.max_stop_length)

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

    def check_options(self, options: Mapping[str, object]) -> None:
        """The `stop` list: each sequence is searched for after every token, so their number and length are
        bounded. Given the merged options, a Modelfile's PARAMETER stop counts too."""
        stop = options.get("stop")
        if not isinstance(stop, (list, tuple)):
            return  # absent, or a type error that option validation reports
        if len(stop) > self.max_stop:
            raise LimitExceeded(f"{len(stop)} stop sequences exceed the limit of {self.max_stop}")
        for seq in stop:
            if isinstance(seq, str) and len(seq) > self.max_stop_length:
                raise LimitExceeded(f"a stop sequence of {len(seq)} characters exceeds the limit of "
                                    f"{self.max_stop_length} characters")

    def check_embed_inputs(self, count: int) -> None:
        if count > self.max_embed_inputs:
            raise LimitExceeded(f"{count} inputs exceed the limit of {self.max_embed_inputs} per embed request")

    def check_embed_tokens(self, tokens: Sequence[Sequence[int]]) -> None:
        total = sum(len(t) for t in tokens)
        if total > self.max_embed_tokens:
            raise LimitExceeded(f"{total} input tokens exceed the limit of {self.max_embed_tokens} per embed request")
