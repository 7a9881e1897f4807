"""Where images go in a rendered prompt (prompt/images.py and prompt/builder.render), with a fake tokenizer.

What it proves: the three placements of spec 7.1 step 4 (a Jinja template's own image marker, a Go template's
`.Images`, else Ollama's tag in front of the text or in place of `[img]`), that a client's text cannot pose as an
image, and that encoding gives each image the token offset of its place. What it cannot prove: that a real
model's template is rendered the way its authors meant; those templates are checked in their own tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from herd.prompt.builder import _probe_render, render
from herd.prompt.images import ImageTags, encode_with_images, tag_template_markers, template_image_marker
from herd.registry.models import TemplateKind
from herd.types import Message

GEMMA_LIKE = """{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }}
{% if m.content is string %}{{ m.content }}{% else %}{% for p in m.content %}{% if p.type == 'image' %}<start_of_image>{% elif p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{% endif %}<end_of_turn>
{% endfor %}<start_of_turn>model
"""
QWEN_VL_LIKE = """{% for m in messages %}<|im_start|>{{ m.role }}
{% if m.content is string %}{{ m.content }}{% else %}{% for p in m.content %}{% if p.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ p.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>
{% endfor %}<|im_start|>assistant
"""
STRING_ONLY = """{% for m in messages %}<|im_start|>{{ m.role }}
{{ m.content | trim }}<|im_end|>
{% endfor %}<|im_start|>assistant
"""
CHATML_GO = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
GO_IMAGES = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ range .Images }}<image>{{ . }}</image>{{ end }}"
             "{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n")


@dataclass
class _GGUF:
    bos_token: str = "<bos>"
    eos_token: str = "<eos>"
    architecture: str = "llama"


@dataclass
class _Model:
    template: tuple[TemplateKind, str]
    gguf: _GGUF = field(default_factory=_GGUF)


def _render(kind: TemplateKind, source: str, messages: list[Message], tags: ImageTags) -> str:
    return render(_Model((kind, source)), messages, (), None, tags)  # type: ignore[arg-type]


PNG_A, PNG_B = b"image-a", b"image-b"


def test_jinja_marker_found_by_probe() -> None:
    assert template_image_marker(GEMMA_LIKE, _probe_render) == "<start_of_image>"
    assert template_image_marker(QWEN_VL_LIKE, _probe_render) == "<|vision_start|><|image_pad|><|vision_end|>"
    assert template_image_marker(STRING_ONLY, _probe_render) == ""  # `| trim` of a list fails: no marker


def test_jinja_template_places_its_own_marker() -> None:
    tags = ImageTags.new()
    text = _render(TemplateKind.JINJA, QWEN_VL_LIKE,
                   [Message("user", "look", images=(PNG_A,)), Message("assistant", "ok"),
                    Message("user", "and this", images=(PNG_B,))], tags)
    assert "<|image_pad|>" not in text  # the template's marker became the tag; mtmd adds the model's own tokens
    assert tags.display(text) == ("<|im_start|>user\n[img-0]look<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
                                  "<|im_start|>user\n[img-1]and this<|im_end|>\n<|im_start|>assistant")


def test_jinja_without_marker_puts_images_before_text() -> None:
    tags = ImageTags.new()
    text = _render(TemplateKind.JINJA, STRING_ONLY, [Message("user", "look", images=(PNG_A, PNG_B))], tags)
    assert tags.display(text) == "<|im_start|>user\n[img-0][img-1]look<|im_end|>\n<|im_start|>assistant"


def test_user_text_with_the_marker_falls_back_to_front_placement() -> None:
    # The user typed the template's marker: one marker per image no longer holds, so the marker is left as text.
    tags = ImageTags.new()
    text = _render(TemplateKind.JINJA, GEMMA_LIKE, [Message("user", "<start_of_image> hi", images=(PNG_A,))], tags)
    assert tags.display(text).count("[img-0]") == 1
    assert "<start_of_image> hi" in tags.display(text)


def test_go_template_img_reference_and_prefix() -> None:
    tags = ImageTags.new()
    text = _render(TemplateKind.GO, CHATML_GO, [Message("user", "first [img] then", images=(PNG_A, PNG_B))], tags)
    assert tags.display(text) == "<|im_start|>user\n[img-1]first [img-0] then<|im_end|>\n<|im_start|>assistant\n"


def test_go_template_ranging_over_images() -> None:
    tags = ImageTags.new()
    text = _render(TemplateKind.GO, GO_IMAGES, [Message("user", "two", images=(PNG_A, PNG_B))], tags)
    assert tags.display(text) == ("<|im_start|>user\n<image>[img-0]</image><image>[img-1]</image>two<|im_end|>\n"
                                  "<|im_start|>assistant\n")


def test_client_text_cannot_pose_as_an_image() -> None:
    tags = ImageTags.new()
    forged = ImageTags("0" * 16).tag(0) + " [img-0]"
    text = _render(TemplateKind.GO, CHATML_GO, [Message("user", forged, images=(PNG_A,))], tags)
    parts = tags.split(text)
    assert parts.count(0) == 1 and sum(isinstance(p, int) for p in parts) == 1


def test_encoding_gives_each_image_its_offset() -> None:
    tags = ImageTags.new()
    text = f"ab{tags.tag(0)}cde{tags.tag(1)}{tags.tag(0)}f"
    calls: list[tuple[str, bool]] = []

    def encode(piece: str, special: bool) -> tuple[int, ...]:
        calls.append((piece, special))
        return tuple(ord(c) for c in piece)

    enc = encode_with_images(text, tags, encode)
    assert enc.tokens == tuple(ord(c) for c in "abcdef")
    assert enc.image_at == (2, 5, 5)
    assert enc.image_refs == (0, 1, 0)
    assert calls[0] == ("ab", True) and all(not special for _, special in calls[1:])  # one BOS, at the start


def test_tag_template_markers_needs_one_per_image() -> None:
    tags = ImageTags.new()
    assert tag_template_markers("x<m>y<m>", "<m>", 2, tags) == f"x{tags.tag(0)}y{tags.tag(1)}"
    assert tag_template_markers("x<m>y", "<m>", 2, tags) is None
