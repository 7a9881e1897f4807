"""Prompt assembly (spec 7.1) and fitting into num_ctx (spec 2.7).

The conversation is the model's MESSAGE history plus the request's messages, with the model's SYSTEM in front
unless the request brings its own. It is rendered with the model's template (the GGUF's Jinja template, or a Go
template from a Modelfile) and, if too long, oldest messages are dropped (system messages are kept) until it fits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date

from herd.errors import PromptTooLong
from herd.prompt.images import (
    EncodedPrompt,
    ImageTags,
    encode_with_images,
    jinja_content,
    tag_template_markers,
    template_image_marker,
)
from herd.prompt.jinja import render_jinja
from herd.registry.models import ResolvedModel, TemplateKind
from herd.types import Message, Think, ToolDef

PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; shorten the prompt, adjust "
    "the context length in settings, or use a model with a longer context length"
)
NUM_KEEP = 4
IMAGE_TOKENS = 768  # Ollama counts each image as this many tokens when fitting
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


class Encoder:
    def encode(self, text: str, add_special: bool = True) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class RenderedPrompt:
    text: str  # with image tags where images go (see prompt/images.py)
    tokens: tuple[int, ...]
    thinking_prefilled: bool  # the template already opened the thinking block
    image_count: int = 0
    image_tags: ImageTags | None = None
    image_at: tuple[int, ...] = ()  # per image input: the token offset it goes before
    images: tuple[bytes, ...] = ()  # per image input: the image, as sent

    @property
    def display_text(self) -> str:
        return self.image_tags.display(self.text) if self.image_tags else self.text

    def encode_more(self, text: str, encoder: Encoder) -> EncodedPrompt:
        """A longer prompt that starts with this one (the thinking turn's continuation), images in place."""
        return encode_with_images(text, self.image_tags, encoder.encode)


def assemble_messages(model: ResolvedModel, messages: Sequence[Message]) -> list[Message]:
    msgs = [Message(role=m.role, content=m.content) for m in model.messages]
    msgs.extend(messages)
    if model.system and not (messages and messages[0].role == "system"):
        msgs.insert(0, Message(role="system", content=model.system))
    family = model.gguf.architecture.lower()
    if family.startswith("qwen3") or "deepseek" in family:
        last_user = max((i for i, m in enumerate(msgs) if m.role == "user"), default=-1)
        msgs = [
            Message(**{**m.__dict__, "content": _THINK_BLOCK.sub("", m.content)})
            if m.role == "assistant" and i < last_user else m
            for i, m in enumerate(msgs)
        ]
    return msgs


class JsonArguments(dict):  # type: ignore[type-arg]
    """A call's arguments as templates see them: a mapping (for `tojson`, `.items()` and `is mapping`, which most
    templates use) that prints and concatenates as its JSON text, which DeepSeek V3.1's template does
    (`'<｜tool▁sep｜>' + tool['function']['arguments']`) because its clients send arguments as a string."""

    def __str__(self) -> str:
        return json.dumps(self, ensure_ascii=False)

    def __add__(self, other: object) -> str:
        if isinstance(other, str):
            return str(self) + other
        return NotImplemented

    def __radd__(self, other: object) -> str:
        if isinstance(other, str):
            return other + str(self)
        return NotImplemented


def _jinja_message(m: Message, parts: bool = False) -> dict[str, object]:
    doc: dict[str, object] = {"role": m.role, "content": jinja_content(m) if parts else m.content}
    if m.thinking:
        doc["thinking"] = m.thinking
        doc["reasoning_content"] = m.thinking
    if m.tool_calls:
        doc["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"index": c.index, "name": c.name,
                                                      "arguments": JsonArguments(c.arguments)}}
            for c in m.tool_calls
        ]
    if m.role == "tool":
        if m.tool_name:
            doc["tool_name"] = m.tool_name
            doc["name"] = m.tool_name
        if m.tool_call_id:
            doc["tool_call_id"] = m.tool_call_id
    return doc


def _probe_render(source: str, messages: list[dict[str, object]]) -> str:
    return render_jinja(source, {"messages": messages, "add_generation_prompt": True, "bos_token": "",
                                 "eos_token": ""})


def render(model: ResolvedModel, messages: Sequence[Message], tools: Sequence[ToolDef], think: Think | None,
           tags: ImageTags | None = None) -> str:
    """The prompt text; with `tags`, each image of `messages` is an image tag where the template places it."""
    kind, source = model.template
    count = sum(len(m.images) for m in messages)
    if tags is not None and count:
        if kind == TemplateKind.JINJA:
            marker = template_image_marker(source, _probe_render)
            if marker:
                tagged = tag_template_markers(_render(model, messages, tools, think, parts=True), marker, count, tags)
                if tagged is not None:
                    return tagged
        elif _go_uses_images(source):
            return _render(model, messages, tools, think, image_values=tags)
        messages = tags.mark_contents(messages)
    return _render(model, messages, tools, think)


def _own_renderer(model: ResolvedModel) -> str:
    """herd's own renderer when the model's config names one (Modelfile RENDERER), else "" (its template)."""
    config = getattr(model, "config", None)
    named = config.get("renderer") if isinstance(config, dict) else None
    family = getattr(model, "family", None)
    return family.renderer if named and family is not None else ""


def _go_uses_images(source: str) -> bool:
    from herd.prompt import gotemplate

    try:
        return "images" in gotemplate.GoTemplate(source).identifiers
    except Exception:
        return False


def _render(model: ResolvedModel, messages: Sequence[Message], tools: Sequence[ToolDef], think: Think | None,
            parts: bool = False, image_values: ImageTags | None = None) -> str:
    kind, source = model.template
    if _own_renderer(model) == "harmony":
        from herd.parsing.harmony import harmony_reasoning_effort
        from herd.prompt.harmony import render_harmony

        return render_harmony(messages, tools, harmony_reasoning_effort(think), date=date.today().isoformat())
    if kind == TemplateKind.JINJA:
        variables: dict[str, object] = {
            "messages": [_jinja_message(m, parts) for m in messages],
            "add_generation_prompt": True,
            "bos_token": model.gguf.bos_token,
            "eos_token": model.gguf.eos_token,
            "date_string": date.today().strftime("%d %b %Y"),
        }
        if tools:
            variables["tools"] = [t.raw or {"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}} for t in tools]
        if think is not None:
            # Each family's switch: Qwen's enable_thinking, DeepSeek V3.1's thinking, gpt-oss's reasoning_effort.
            variables["enable_thinking"] = think.enabled
            variables["thinking"] = think.enabled
            if think.enabled:
                level = think.level or "medium"
                variables["reasoning_effort"] = "high" if level == "max" else level
        return render_jinja(source, variables)
    from herd.prompt import gotemplate

    if image_values is not None:
        # A template that ranges over .Images prints each one: it prints as its tag.
        numbered: list[Message] = []
        n = 0
        for m in messages:
            values = tuple(image_values.tag(n + i) for i in range(len(m.images)))
            n += len(m.images)
            numbered.append(replace(m, images=values))  # type: ignore[arg-type]
        messages = numbered
    return gotemplate.render_chat(
        gotemplate.GoTemplate(source),
        messages,
        tools,
        think=think.enabled if think is not None else None,
        think_level=think.level if think is not None else "",
    )


def leave_last_assistant_open(text: str, messages: Sequence[Message]) -> str:
    """When the conversation ends with an assistant message, the model continues it (Open WebUI's "continue
    response", a prefilled answer): cut the rendered prompt right after that message's text, so neither its
    end-of-turn marker nor a new assistant header follows. Ollama's templates do this with `$last`; for the
    others (Jinja, or Go templates that always close a turn) this is what HF's `continue_final_message` does."""
    if not messages or messages[-1].role != "assistant":
        return text
    content = messages[-1].content
    for candidate in (content, content.strip()):
        if candidate:
            i = text.rfind(candidate)
            if i >= 0:
                return text[: i + len(candidate)]
    return text


def build_prompt(
    model: ResolvedModel,
    messages: Sequence[Message],
    tools: Sequence[ToolDef],
    think: Think | None,
    num_ctx: int,
    encoder: Encoder,
    truncate: bool = True,
) -> RenderedPrompt:
    msgs = assemble_messages(model, messages)
    tags = ImageTags.new() if any(m.images for m in msgs) else None

    def attempt(candidate: list[Message]) -> tuple[str, EncodedPrompt, tuple[bytes, ...]]:
        text = leave_last_assistant_open(render(model, candidate, tools, think, tags), candidate)
        images = tuple(i for m in candidate for i in m.images)
        return text, encode_with_images(text, tags, encoder.encode), images

    text, enc, images = attempt(msgs)
    if len(enc.tokens) + len(images) * IMAGE_TOKENS > num_ctx:
        if not truncate:
            raise PromptTooLong(PROMPT_TOO_LONG)
        # Drop from the front one message at a time; system messages of the dropped part stay, first.
        for start in range(1, len(msgs)):
            kept_system = [m for m in msgs[:start] if m.role == "system"]
            candidate = kept_system + [m for m in msgs[start:] if not (m.role == "system" and m in kept_system)]
            text, enc, images = attempt(candidate)
            if len(enc.tokens) + len(images) * IMAGE_TOKENS <= num_ctx:
                break
    tokens = enc.tokens
    if len(tokens) >= num_ctx:
        if enc.image_at:
            # Cutting the middle out of a prompt would cut between an image and its text: refuse instead.
            raise PromptTooLong(PROMPT_TOO_LONG)
        # Only the last message is left and it alone is too long: like Ollama's runner, keep the first num_keep
        # tokens and the end of the prompt, leaving one position for the answer.
        keep = min(NUM_KEEP, num_ctx // 2)
        tokens = tokens[:keep] + tokens[len(tokens) - (num_ctx - keep - 1):]
    prefilled = think is not None and think.enabled and text.rstrip().endswith(THINK_OPEN)
    return RenderedPrompt(text, tokens, prefilled, len(images), tags, enc.image_at,
                          tuple(images[r] for r in enc.image_refs if r < len(images)))
