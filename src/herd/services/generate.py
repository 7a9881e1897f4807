"""One /api/generate request (spec 5.1): a completion of `prompt`, built from ChatService's pieces.

Resolution, capability and option handling, the scheduler lease, grammar, output parsing and the runner are
the chat service's; only the prompt differs. Unless `raw`, the prompt is a one-turn conversation rendered with
the model's template like /api/chat (Ollama's "chat-like flow"), or with a request `template` (Go template,
legacy `.System/.Prompt/.Response` or `.Messages`), or, with `suffix`, the fill-in-the-middle form.
The final chunk carries `context`: the prompt tokens and the generated tokens, to be sent back next time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import cast

from herd.engine.tokenizer import Tokenizer, get_tokenizer
from herd.errors import CapabilityMissing, EmptyPrompt, InvalidRequest, ModelNotFound, PromptTooLong
from herd.options import merge, sampling_params
from herd.prompt.builder import NUM_KEEP, PROMPT_TOO_LONG, THINK_OPEN, Encoder, RenderedPrompt, build_prompt
from herd.prompt.images import ImageTags, encode_with_images
from herd.registry.models import ResolvedModel
from herd.registry.names import InvalidName, ModelName
from herd.services.chat import ChatChunk, ChatService, decode_images
from herd.types import ChatTurn, Message, Think

RAW_CONFLICT = "raw mode does not support template, system, or context"


@dataclass(frozen=True)
class GenerateRequest:
    """One /api/generate request, validated. Empty strings mean "not given", as in Ollama's Go structs."""

    model: str  # as sent (echoed back)
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    template: str = ""
    context: tuple[int, ...] | None = None  # None = not sent (then the model's MESSAGEs are used)
    raw: bool = False
    images: tuple[bytes, ...] = ()
    format: object = None
    options: dict[str, object] = field(default_factory=dict)
    think: Think | None = None
    keep_alive: float | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    truncate: bool = True
    shift: bool = True
    debug_render_only: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id of the model's vocabulary, bias) pairs


class _WithoutSeeds:
    """The model as `build_prompt` sees it for /api/generate: without its SYSTEM and MESSAGE history, because
    generate places those itself (system first, MESSAGEs only when no `context` is sent), where /api/chat's
    assembly would put them elsewhere."""

    messages: tuple[()] = ()
    system: str | None = None

    def __init__(self, model: ResolvedModel) -> None:
        self._model = model

    def __getattr__(self, name: str) -> object:
        return getattr(self._model, name)


class GenerateService:
    def __init__(self, chat: ChatService) -> None:
        self.chat = chat

    async def resolve(self, name: str) -> ResolvedModel:
        # Ollama's GenerateHandler answers an empty or unparsable name with 404, not 400.
        try:
            ModelName.parse(name)
            return await self.chat.aresolve(name)
        except (InvalidName, ModelNotFound):
            raise ModelNotFound(f"model '{name}' not found") from None

    def check_capabilities(self, model: ResolvedModel, req: GenerateRequest) -> Think | None:
        caps = model.capabilities
        missing = []
        if "completion" not in caps:
            raise CapabilityMissing(f'"{req.model}" does not support generate')
        if req.suffix and "insert" not in caps:
            missing.append("insert")
        if req.images and "vision" not in caps:
            missing.append("vision")
        if missing:
            # Several missing capabilities are joined with a newline, as Ollama words it (spec 4).
            raise CapabilityMissing("\n".join(f"{model.fully_qualified} does not support {c}" for c in missing))
        think = req.think
        if "thinking" in caps:
            if think is None:
                think = Think(True)
        elif think is not None and think.enabled:
            raise CapabilityMissing(f'"{req.model}" does not support thinking')
        return think

    def turn_view(self, req: GenerateRequest, think: Think | None) -> ChatTurn:
        """What ChatService's generation reads: format, thinking and logprobs; generate has no tools."""
        return ChatTurn(model=req.model, messages=(), format=req.format, think=think, options=req.options,
                        logprobs=req.logprobs, top_logprobs=req.top_logprobs, constrain_tools=False)

    async def generate(self, req: GenerateRequest) -> AsyncIterator[ChatChunk]:
        t0 = time.perf_counter_ns()
        self.chat.request_limits.check_images(req.images)  # 400 past a bound, before any work
        chat = self.chat
        model = await self.resolve(req.model)
        ref = chat.model_ref(model)
        if not req.prompt and req.keep_alive == 0:
            await chat.scheduler.unload(ref.key)
            yield ChatChunk(done=True, done_reason="unload")
            return
        if req.raw and (req.template or req.system or req.context):
            raise InvalidRequest(RAW_CONFLICT)
        think = self.check_capabilities(model, req)
        decoded = await decode_images(list(req.images))
        opts = merge(model.parameters, req.options)
        chat.request_limits.check_options(opts)
        spec = await chat.aload_spec(model, opts)
        sampling = await chat.with_logit_bias(sampling_params(opts, chat.limits, shift=req.shift), req.logit_bias,
                                              spec.model_path)
        turn = self.turn_view(req, think)
        grammar = chat.grammar_for(model, turn, think)
        async with chat.scheduler.lease(ref, spec, req.keep_alive) as loaded:
            t_loaded = time.perf_counter_ns()
            if not req.prompt:
                yield ChatChunk(done=True, done_reason="load")
                return
            tokenizer = await asyncio.to_thread(get_tokenizer, spec.model_path)
            prompt = await asyncio.to_thread(self.build_prompt, model, req, think, spec.num_ctx, tokenizer)
            if req.debug_render_only:
                yield ChatChunk(debug_prompt=prompt.display_text)
                return
            if not prompt.tokens:
                # A template that renders nothing (`{{ .System }}` without a system) on a model without BOS: the
                # runner would get zero tokens and never finish.
                raise EmptyPrompt()
            async for chunk in chat.generate_turn(loaded.runner, model, turn, think, prompt, tokenizer, sampling,
                                                  grammar, t0, t_loaded, decoded):
                if chunk.done and req.raw:
                    # Raw prompts return no context (Ollama): they were never part of a templated conversation.
                    chunk = replace(chunk, context=())
                yield chunk

    # ---- prompt ------------------------------------------------------------------------------------------
    def build_prompt(self, model: ResolvedModel, req: GenerateRequest, think: Think | None, num_ctx: int,
                     tokenizer: Tokenizer) -> RenderedPrompt:
        tags = ImageTags.new() if req.images else None
        if req.raw:
            return _fit(_raw_with_images(req.prompt, len(req.images), tags), tags, req.images, tokenizer, num_ctx,
                        req.truncate, think)
        # The deprecated `context`: earlier tokens, detokenised and put in front of the new prompt (Ollama).
        prefix = tokenizer.decode(req.context) if req.context else ""
        if req.suffix:
            text = _fill_in_the_middle(req.template or model.template[1], req, think)
            if tags is not None:
                text = "".join(tags.tag(n) for n in range(len(req.images))) + text
        else:
            messages: list[Message] = []
            system = req.system or model.system
            if system:
                messages.append(Message(role="system", content=system))
            if req.context is None:
                messages.extend(Message(role=m.role, content=m.content) for m in model.messages)
            messages.append(Message(role="user", content=req.prompt, images=req.images))
            if req.template:
                from herd.prompt import gotemplate

                marked = tags.mark_contents(messages) if tags is not None else messages
                text = gotemplate.render_chat(
                    gotemplate.GoTemplate(req.template), cast("list[gotemplate.MessageLike]", marked), (),
                    think=think.enabled if think is not None else None,
                    think_level=think.level if think is not None else "",
                )
            else:
                # The chat-like flow: the model's own template, with /api/chat's fitting into num_ctx.
                seeded = cast(ResolvedModel, _WithoutSeeds(model))
                rendered = build_prompt(seeded, messages, (), think, num_ctx, cast(Encoder, tokenizer), req.truncate)
                if not prefix:
                    return rendered
                text = rendered.text
                tags = rendered.image_tags
        return _fit(prefix + text, tags, req.images, tokenizer, num_ctx, req.truncate, think)


def _raw_with_images(prompt: str, count: int, tags: ImageTags | None) -> str:
    """A raw prompt places its images with `[img-N]` (Ollama's runner reads those); images it does not place go
    in front of it."""
    if tags is None:
        return prompt
    import re

    for m in re.finditer(r"\[img-(\d+)\]", prompt):
        if int(m.group(1)) >= count:
            raise InvalidRequest(f"invalid image index: {m.group(1)}")  # Ollama's runner's refusal
    prefix = ""
    for n in range(count):
        ref = f"[img-{n}]"
        if ref in prompt:
            prompt = prompt.replace(ref, tags.tag(n))
        else:
            prefix += tags.tag(n)
    return prefix + prompt


def _fill_in_the_middle(source: str, req: GenerateRequest, think: Think | None) -> str:
    from herd.prompt import gotemplate

    return gotemplate.GoTemplate(source).render({
        "Prompt": req.prompt,
        "Suffix": req.suffix,
        "Response": "",
        "Think": bool(think and think.enabled),
        "ThinkLevel": think.level if think is not None else "",
        "IsThinkSet": think is not None,
    })


def _fit(text: str, tags: ImageTags | None, images: tuple[bytes, ...], encoder: Encoder, num_ctx: int,
         truncate: bool, think: Think | None) -> RenderedPrompt:
    """A prompt with no messages to drop: like Ollama's runner, keep the first num_keep tokens and the end,
    leaving one position for the answer (or refuse, with truncate:false or when images would be cut off)."""
    enc = encode_with_images(text, tags, encoder.encode)
    tokens = enc.tokens
    if len(tokens) >= num_ctx:
        if not truncate or enc.image_at:
            raise PromptTooLong(PROMPT_TOO_LONG)
        keep = min(NUM_KEEP, num_ctx // 2)
        tokens = tokens[:keep] + tokens[len(tokens) - (num_ctx - keep - 1):]
    prefilled = think is not None and think.enabled and text.rstrip().endswith(THINK_OPEN)
    return RenderedPrompt(text, tokens, prefilled, len(images), tags, enc.image_at,
                          tuple(images[r] for r in enc.image_refs if r < len(images)))

