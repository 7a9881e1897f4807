"""Where a conversation's images go in its prompt.

Rendering puts a placeholder tag where each image belongs, and encoding splits the text at the tags: the text
between them is tokenized, and each tag becomes an image input at that token offset, which the runner expands with
mtmd into the model's own image tokens (with whatever begin/end markers the projector wants). The tags carry a
random nonce per render, so no text a client sends can pose as an image.

Three ways a template places images (spec 7.1, step 4):
- a Jinja template that emits its own marker for an `{"type": "image"}` content part (Gemma 3's `<start_of_image>`,
  Qwen-VL's `<|vision_start|><|image_pad|><|vision_end|>`, `<image>`, `[IMG]`, ...): the marker it emits is found
  by rendering a probe conversation with and without an image, and each marker it emits becomes a tag;
- a Go template that ranges over a message's `.Images`: each image value prints as its tag;
- any other template: Ollama's way, the tag goes in front of the message's text, or replaces an `[img]` in it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from herd.errors import InvalidRequest
from herd.types import Message

IMG_REF = "[img]"
ENDS_WITH_IMAGE = "a prompt must not end with an image: the answer needs a text token after it"


@dataclass(frozen=True)
class ImageTags:
    """The placeholder tags of one render."""

    nonce: str

    @classmethod
    def new(cls) -> ImageTags:
        return cls(secrets.token_hex(8))

    def tag(self, n: int) -> str:
        return f"<|herd-image-{self.nonce}-{n}|>"

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(f"<|herd-image-{self.nonce}-") + r"(\d+)\|>")

    def display(self, text: str) -> str:
        """The prompt as Ollama shows it (`_debug_render_only`): `[img-N]` where each image goes."""
        return self.pattern.sub(lambda m: f"[img-{m.group(1)}]", text)

    def mark_contents(self, messages: Sequence[Message]) -> list[Message]:
        """Ollama's placement: each image's tag in front of its message's text, or in place of an `[img]`."""
        out = []
        n = 0
        for m in messages:
            if not m.images:
                out.append(m)
                continue
            prefix = ""
            content = m.content
            for _ in m.images:
                if IMG_REF in content:
                    content = content.replace(IMG_REF, self.tag(n), 1)
                else:
                    prefix += self.tag(n)
                n += 1
            out.append(replace(m, content=prefix + content))
        return out

    def split(self, text: str) -> list[str | int]:
        """The text between tags, and each tag's image number, in order."""
        parts: list[str | int] = []
        last = 0
        for m in self.pattern.finditer(text):
            parts.append(text[last:m.start()])
            parts.append(int(m.group(1)))
            last = m.end()
        parts.append(text[last:])
        return parts


@dataclass(frozen=True)
class EncodedPrompt:
    tokens: tuple[int, ...]
    image_at: tuple[int, ...]  # for each image input, the token offset it goes before
    image_refs: tuple[int, ...]  # for each image input, its number among the conversation's images


def encode_with_images(text: str, tags: ImageTags | None, encode: Callable[[str, bool], tuple[int, ...]]
                       ) -> EncodedPrompt:
    """Tokenize a rendered prompt, its text pieces one by one (only the first gets the BOS)."""
    if tags is None:
        return EncodedPrompt(encode(text, True), (), ())
    tokens: list[int] = []
    at: list[int] = []
    refs: list[int] = []
    first = True
    for part in tags.split(text):
        if isinstance(part, int):
            at.append(len(tokens))
            refs.append(part)
            continue
        if part or first:
            tokens.extend(encode(part, first))
        first = False
    if at and at[-1] == len(tokens):
        raise InvalidRequest(ENDS_WITH_IMAGE)
    return EncodedPrompt(tuple(tokens), tuple(at), tuple(refs))


# ---- Jinja templates that emit their own image marker --------------------------------------------------------


def jinja_content(m: Message) -> object:
    """A message's content as HF templates read a multimodal one: image parts, then the text part."""
    if not m.images:
        return m.content
    parts: list[dict[str, object]] = [{"type": "image"} for _ in m.images]
    parts.append({"type": "text", "text": m.content})
    return parts


@lru_cache(maxsize=64)
def template_image_marker(source: str, render: Callable[[str, list[dict[str, object]]], str]) -> str:
    """What this Jinja template writes for one image part, or "" when it writes nothing (or cannot take content
    parts): the difference between a probe conversation rendered with and without an image."""
    probe_text = "herd probe text"
    as_string = [{"role": "user", "content": probe_text}]
    plain = [{"role": "user", "content": [{"type": "text", "text": probe_text}]}]
    with_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": probe_text}]}]
    try:
        a = render(source, plain)
        b = render(source, with_image)
        # A template that reads content parts renders a text part as it renders the same string; one that
        # prints the list as it is (or fails on it) does not, and gets its images in front of the text instead.
        if a != render(source, as_string):
            return ""
    except Exception:
        return ""
    if probe_text not in a or a == b:
        return ""
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[len(a) - 1 - end] == b[len(b) - 1 - end]:
        end += 1
    marker = b[start:len(b) - end] if len(b) - end > start else ""
    # The diff may end inside the marker's neighbourhood (a newline both renders share); the marker is the
    # visible part, and it must not be the probe text itself.
    marker = marker.strip()
    return "" if not marker or probe_text in marker else marker


def tag_template_markers(text: str, marker: str, count: int, tags: ImageTags) -> str | None:
    """Each marker the template wrote, in order, as image tag 0, 1, ...; None if it did not write one per image."""
    if not marker or text.count(marker) != count:
        return None
    pieces = text.split(marker)
    out = [pieces[0]]
    for n, piece in enumerate(pieces[1:]):
        out.append(tags.tag(n))
        out.append(piece)
    return "".join(out)
