"""One chat turn: resolve the model, check capabilities, acquire a runner, render, constrain, generate, parse.

The same async stream of `ChatChunk`s feeds the NDJSON encoder, the non-streaming aggregator and the OpenAI
translation, so every dialect sees the same behaviour.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field, replace

from herd.config import Settings
from herd.engine.protocol import DoneEvent, ImageInput, LoadSpec, SamplingParams, TokenLogprob
from herd.engine.rpc import choose_workers
from herd.engine.runner import Runner
from herd.engine.tokenizer import Tokenizer, get_tokenizer
from herd.errors import (
    CapabilityMissing,
    EmptyPrompt,
    InvalidRequest,
    ModelNotFound,
    NotImplementedFeature,
    PromptTooLong,
    RunnerFailed,
)
from herd.images import DecodedImage, decode_all, image_digest
from herd.limits import RequestLimits
from herd.options import Limits, cache_settings, load_options, merge, sampling_params
from herd.parsing.base import Delta, IncrementalParser, PassThrough, ToolCall
from herd.prompt.builder import IMAGE_TOKENS, PROMPT_TOO_LONG, THINK_CLOSE, THINK_OPEN, RenderedPrompt, build_prompt
from herd.registry.models import ModelCatalog, ResolvedModel
from herd.scheduler.machine import MACHINE, Machine, context_for_vram
from herd.scheduler.scheduler import ModelRef, Scheduler
from herd.types import ChatTurn, Think


@dataclass(frozen=True)
class Metrics:
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 7x more, and one is made per token
class ChatChunk:
    content: str = ""
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    done: bool = False
    done_reason: str = ""
    metrics: Metrics | None = None
    context: tuple[int, ...] = field(default_factory=tuple)
    debug_prompt: str | None = None
    image_count: int = 0  # with debug_prompt: the images the prompt places
    stop_sequence: str = ""  # on the done chunk: the stop string that ended the text, if one did


async def drain(chunks: AsyncIterator[ChatChunk]) -> ChatChunk:
    """stream:false in every dialect: the same stream drained into one chunk (text and thinking concatenated,
    calls and logprobs collected, reason, metrics and context from the last). A debug-render chunk is returned
    as it is."""
    content: list[str] = []
    thinking: list[str] = []
    calls: list[ToolCall] = []
    logprobs: list[TokenLogprob] = []
    last: ChatChunk | None = None
    async for chunk in chunks:
        if chunk.debug_prompt is not None:
            return chunk
        content.append(chunk.content)
        thinking.append(chunk.thinking)
        calls.extend(chunk.tool_calls)
        logprobs.extend(chunk.logprobs)
        last = chunk
    assert last is not None
    return ChatChunk("".join(content), "".join(thinking), tuple(calls), tuple(logprobs), True, last.done_reason,
                     last.metrics, context=last.context, stop_sequence=last.stop_sequence)


def not_found(name: str) -> ModelNotFound:
    return ModelNotFound(f"model '{name}' not found")


VISION_MIN_CTX = 2048  # spec 2.7: vision models get at least this context


async def decode_images(images: list[bytes]) -> dict[bytes, DecodedImage]:
    """Decode a request's images off the event loop: bytes that are not an image are a 400 before any work."""
    return await asyncio.to_thread(decode_all, images) if images else {}


def check_done(done: DoneEvent) -> None:
    if done.reason == "error":
        if done.error_kind == "too_long":
            raise PromptTooLong(PROMPT_TOO_LONG)  # images made it longer than the server's count could know
        raise RunnerFailed(done.error or "generation failed")


def image_inputs(image_at: tuple[int, ...], images: tuple[bytes, ...], decoded: Mapping[bytes, DecodedImage]
                 ) -> tuple[ImageInput, ...]:
    out = []
    for at, data in zip(image_at, images):
        d = decoded[image_digest(data)]
        out.append(ImageInput(at, d.digest, d.width, d.height, d.rgb))
    return tuple(out)


class ChatService:
    def __init__(self, catalog: ModelCatalog, scheduler: Scheduler, settings: Settings,
                 machine: Machine = MACHINE) -> None:
        self.catalog = catalog
        self.scheduler = scheduler
        self.settings = settings
        self.machine = machine
        self.limits = Limits(settings.context_length or 4096, settings.max_num_ctx, settings.max_num_predict,
                             settings.threads, settings.max_num_batch)
        self.request_limits = RequestLimits.from_settings(settings)
        self._auto_slots: dict[tuple[str, int, str, str, int, int], int] = {}
        self._gpu_layers: dict[tuple[str, int, str, int, int, bool], int] = {}

    def resolve(self, name: str) -> ResolvedModel:
        try:
            return self.catalog.resolve(name)
        except ModelNotFound:
            raise not_found(name) from None

    async def aresolve(self, name: str) -> ResolvedModel:
        """`resolve` in a thread, with the GGUF header and templates read there: a model's first use (a 256k
        vocabulary) must not stall every other stream on the event loop."""
        try:
            return await self.catalog.aresolve(name)
        except ModelNotFound:
            raise not_found(name) from None

    def model_ref(self, model: ResolvedModel) -> ModelRef:
        return ModelRef(key=model.stored.name.key, name=model.name, digest=model.digest,
                        details=model.details, size=model.size)

    def default_num_ctx(self) -> int:
        """OLLAMA_CONTEXT_LENGTH, else Ollama's tier for this machine's VRAM (4096 without a GPU), within the
        server's num_ctx limit; a model trained on less gets its own length (load_options)."""
        if self.settings.context_length > 0:
            return self.settings.context_length
        return min(context_for_vram(self.machine.total_vram()), self.settings.max_num_ctx)

    async def aload_spec(self, model: ResolvedModel, opts: dict[str, object], embedding: bool = False) -> LoadSpec:
        """load_spec once the startup device report is in: the default context and the slots depend on the GPUs."""
        await self.machine.known_gpus()
        spec = self.load_spec(model, opts, embedding)
        if spec.n_gpu_layers < 0 and self.machine.gpus:
            spec = replace(spec, n_gpu_layers=await asyncio.to_thread(self.gpu_layers, spec))
        return spec

    def gpu_layers(self, spec: LoadSpec) -> int:
        """num_gpu unset on a machine with GPUs: the layers that fit in their free memory (-1: all of them), counted
        once per model and settings, for the reason auto_slots gives."""
        from herd.scheduler.memory import gpu_bytes, layers_that_fit

        key = (spec.model_path, spec.num_ctx, spec.kv_cache_type, spec.num_parallel, spec.main_gpu, spec.embedding)
        layers = self._gpu_layers.get(key)
        if layers is None:
            free = gpu_bytes(spec, self.machine)
            layers = self._gpu_layers[key] = layers_that_fit(spec, free) if free else -1
        return layers

    def load_spec(self, model: ResolvedModel, opts: dict[str, object], embedding: bool = False) -> LoadSpec:
        lo = load_options(opts, model.gguf.context_length, replace(self.limits, default_num_ctx=self.default_num_ctx()))
        projector = model.vision_projector if not embedding else None
        num_ctx = lo.num_ctx
        if projector is not None and num_ctx < VISION_MIN_CTX:
            num_ctx = min(VISION_MIN_CTX, model.gguf.context_length or VISION_MIN_CTX)
        # The model's kv_cache_type option (request or Modelfile) over OLLAMA_KV_CACHE_TYPE; a quantized cache with
        # flash attention off is refused here, before any runner starts (400).
        kv_cache_type, flash_attention = cache_settings(
            lo.kv_cache_type or self.settings.kv_cache_type, self.settings.flash_attention,
            "kv_cache_type" if lo.kv_cache_type else "OLLAMA_KV_CACHE_TYPE",
        )
        spec = LoadSpec(
            model_path=str(model.model_path),
            num_ctx=num_ctx,
            num_batch=lo.num_batch,
            num_parallel=1 if embedding else self.settings.num_parallel,
            num_thread=lo.num_thread,
            use_mmap=lo.use_mmap,
            embedding=embedding,
            prompt_cache=self.settings.prompt_cache,
            projector_path=str(projector) if projector is not None else "",
            draft_path=str(model.draft_path) if model.draft_path is not None and not embedding else "",
            kv_cache_type=kv_cache_type,
            flash_attention=flash_attention,
            n_gpu_layers=lo.num_gpu,
            main_gpu=lo.main_gpu,
            rpc_servers=choose_workers(lo.rpc_servers, self.settings.rpc_servers),
            tensor_split=lo.tensor_split,
            speculative=self.settings.speculative,
            fast_forward=self.settings.fast_forward,
        )
        if spec.num_parallel <= 0:
            spec = replace(spec, num_parallel=self.auto_slots(spec))
        return spec

    def auto_slots(self, spec: LoadSpec) -> int:
        """Slots for a model when OLLAMA_NUM_PARALLEL is not set: as many (up to 8) as its KV cache of num_ctx
        cells each fits in the memory available, counted once per model and settings. Counted again on every
        request, the memory the loaded model itself takes would shrink the count and force a reload."""
        key = (spec.model_path, spec.num_ctx, spec.kv_cache_type, spec.projector_path, spec.n_gpu_layers, spec.main_gpu)
        slots = self._auto_slots.get(key)
        if slots is None:
            from herd.scheduler.memory import memory_for, slots_that_fit

            slots = self._auto_slots[key] = slots_that_fit(spec, memory_for(spec, self.machine))
        return slots

    def check_capabilities(self, model: ResolvedModel, turn: ChatTurn, sent_name: str) -> Think | None:
        caps = model.capabilities
        if "completion" not in caps:
            raise CapabilityMissing(f'"{sent_name}" does not support chat')
        if turn.tools and "tools" not in caps:
            raise CapabilityMissing(f"{model.fully_qualified} does not support tools")
        if any(m.images for m in turn.messages) and "vision" not in caps:
            raise CapabilityMissing(f"{model.fully_qualified} does not support vision")
        think = turn.think
        if "thinking" in caps:
            if think is None:
                think = Think(True)  # current Ollama: thinking models think unless told not to
        elif think is not None and think.enabled and think.optional:
            think = None
        elif think is not None and think.enabled:
            raise CapabilityMissing(f'"{sent_name}" does not support thinking')
        return think

    async def chat(self, turn: ChatTurn) -> AsyncIterator[ChatChunk]:
        t0 = time.perf_counter_ns()
        self.request_limits.check_chat(turn.messages, turn.tools)  # 400 past a bound, before any work
        model = await self.aresolve(turn.model)
        ref = self.model_ref(model)
        if not turn.messages and turn.keep_alive == 0:
            await self.scheduler.unload(ref.key)
            yield ChatChunk(done=True, done_reason="unload")
            return
        think = self.check_capabilities(model, turn, turn.model)
        decoded = await decode_images([i for m in turn.messages for i in m.images])
        opts = merge(model.parameters, turn.options)
        self.request_limits.check_options(opts)  # the stop list's bounds, Modelfile and request together
        spec = await self.aload_spec(model, opts)
        sampling = await self.with_logit_bias(sampling_params(opts, self.limits, shift=turn.shift), turn.logit_bias,
                                              spec.model_path)
        special = await self.special_markers(model, turn, spec.model_path)
        grammar = self.grammar_for(model, turn, think, special=special)
        async with self.scheduler.lease(ref, spec, turn.keep_alive) as loaded:
            t_loaded = time.perf_counter_ns()
            if not turn.messages:
                yield ChatChunk(done=True, done_reason="load")
                return
            tokenizer = await asyncio.to_thread(get_tokenizer, spec.model_path)
            prompt = await asyncio.to_thread(
                build_prompt, model, turn.messages, turn.tools, think, spec.num_ctx, tokenizer, turn.truncate
            )
            if turn.debug_render_only:
                yield ChatChunk(done=False, debug_prompt=prompt.display_text, image_count=len(prompt.image_at))
                return
            if not prompt.tokens:
                raise EmptyPrompt()  # zero tokens would give the runner nothing to decode from: it would never end
            async for chunk in self.generate_turn(loaded.runner, model, turn, think, prompt, tokenizer, sampling,
                                                  grammar, t0, t_loaded, decoded):
                yield chunk

    async def count_prompt_tokens(self, turn: ChatTurn) -> int:
        """The whole prompt's length in tokens as this turn would be rendered, untruncated, without loading or
        generating (the tokenizer runs in its own process). An image counts as the prompt builder's estimate
        (IMAGE_TOKENS): how many tokens it really becomes is known to the projector of a loaded runner."""
        self.request_limits.check_chat(turn.messages, turn.tools)
        model = await self.aresolve(turn.model)
        think = self.check_capabilities(model, turn, turn.model)
        tokenizer = await asyncio.to_thread(get_tokenizer, str(model.model_path))
        prompt = await asyncio.to_thread(
            build_prompt, model, turn.messages, turn.tools, think, 1 << 40, tokenizer, False
        )
        return len(prompt.tokens) + len(prompt.image_at) * IMAGE_TOKENS

    async def generate_turn(
        self, runner: Runner, model: ResolvedModel, turn: ChatTurn, think: Think | None, prompt: RenderedPrompt,
        tokenizer: Tokenizer, sampling: SamplingParams, grammar: str | None, t0: int, t_loaded: int,
        decoded: Mapping[bytes, DecodedImage] | None = None,
    ) -> AsyncIterator[ChatChunk]:
        """Generate from a rendered prompt on a leased runner, parse, and end with the metrics chunk. Shared by
        /api/chat and /api/generate."""
        parser = self.parser_for(model, turn, think, prompt.thinking_prefilled)
        two_phase = grammar is not None and turn.format is not None and prompt.thinking_prefilled
        first_grammar = None if two_phase else grammar
        first_sampling = replace(sampling, stop=sampling.stop + (THINK_CLOSE,)) if two_phase else sampling
        done: DoneEvent | None = None
        raw: list[str] = []
        images = image_inputs(prompt.image_at, prompt.images, decoded or {})
        one_call = bool(turn.tools) and not turn.parallel_tool_calls
        cut = False
        t_first = 0
        events = runner.generate(prompt.tokens, first_sampling, turn.logprobs, turn.top_logprobs, first_grammar,
                                 images)
        async for ev in events:
            if isinstance(ev, DoneEvent):
                done = ev
                break
            t_first = t_first or time.perf_counter_ns()
            raw.append(ev.text)
            delta = parser.feed(ev.text) if ev.text else Delta()
            if delta or ev.logprobs:
                yield ChatChunk(delta.content, delta.thinking, delta.tool_calls, ev.logprobs)
            if one_call and delta.tool_calls:
                # parallel_tool_calls false: the turn ends with its first complete call (OpenAI's "at most one").
                # Closing the stream cancels the sequence; the runner's own counts are gone with it, so the
                # metrics are this side's: the prompt as sent and one token per text event.
                await events.aclose()  # type: ignore[attr-defined]
                now = time.perf_counter_ns()
                done = DoneEvent(0, "stop", prompt_tokens=len(prompt.tokens), eval_count=len(raw),
                                 prompt_eval_ns=t_first - t_loaded, eval_ns=now - t_first,
                                 tokens=())
                cut = True
                break
        assert done is not None
        check_done(done)
        first = done
        if two_phase and done.reason == "stop":
            # Ollama's way for format on a thinking model (spec 2.10): think unconstrained; when thinking
            # ends (the close tag, or the model's own end of turn), close the block and generate the answer
            # under the constraint. The prompt plus the thinking is a prefix of the KV cache: only the close
            # tag is evaluated again.
            parser.feed(THINK_CLOSE)
            enc = prompt.encode_more(prompt.text + "".join(raw) + THINK_CLOSE + "\n", tokenizer)
            left = sampling.num_predict - first.eval_count if sampling.num_predict >= 0 else -1
            answer_grammar = self.grammar_for(model, turn, None)
            async for ev in runner.generate(enc.tokens, replace(sampling, num_predict=left), turn.logprobs,
                                            turn.top_logprobs, answer_grammar,
                                            image_inputs(enc.image_at, prompt.images, decoded or {})):
                if isinstance(ev, DoneEvent):
                    done = ev
                    break
                delta = parser.feed(ev.text) if ev.text else Delta()
                if delta or ev.logprobs:
                    yield ChatChunk(delta.content, delta.thinking, delta.tool_calls, ev.logprobs)
            check_done(done)
        # After a call that ended the turn, what the parser still holds is the start of the text that was cut off.
        tail = Delta() if cut else parser.finish()
        t_end = time.perf_counter_ns()
        second = done if done is not first else None
        metrics = Metrics(
            total_duration=t_end - t0,
            load_duration=t_loaded - t0,
            prompt_eval_count=first.prompt_tokens,
            prompt_eval_duration=first.prompt_eval_ns,
            eval_count=first.eval_count + (second.eval_count if second else 0),
            eval_duration=first.eval_ns + (second.eval_ns + second.prompt_eval_ns if second else 0),
        )
        yield ChatChunk(tail.content, tail.thinking, tail.tool_calls, (), True, done.reason, metrics,
                        context=prompt.tokens + first.tokens + (second.tokens if second else ()),
                        stop_sequence=done.stop_sequence if done.stop_sequence != THINK_CLOSE else "")

    # ---- helpers -----------------------------------------------------------------------------------------
    def parser_for(
        self, model: ResolvedModel, turn: ChatTurn, think: Think | None, prefilled: bool
    ) -> IncrementalParser:
        enabled = think is not None and think.enabled and "thinking" in model.capabilities
        if turn.force_tool is not None and turn.tools and turn.format is None:
            # A forced call starts at the first token, even after a template that pre-opened the thinking block:
            # what comes is the call, not reasoning.
            enabled = prefilled = False
        # A family's own parser reads its thinking and calls (and, for Harmony, its channels) in one pass; it is
        # used with or without tools, so its markup never reaches `content`.
        own = model.family.make_parser(turn.tools, enabled or not model.family.can_disable_thinking, prefilled)
        if own is not None:
            return own
        thinking = None
        tools = None
        if enabled:
            from herd.parsing.thinking import ThinkingParser

            thinking = ThinkingParser(THINK_OPEN, THINK_CLOSE, prefilled=prefilled)
        if turn.tools:
            from herd.parsing.toolcalls import ToolCallParser, detect_tool_format

            fmt, tag = detect_tool_format(model.template[1])
            # Spec 7.4: an unparsed tagged call is dropped, not shown as content.
            tools = ToolCallParser([t.name for t in turn.tools], fmt, tag or None, unparsed_as_content=False)
        if thinking is None and tools is None:
            return PassThrough()
        from herd.parsing.pipeline import OutputParser

        return OutputParser(thinking, tools)

    async def with_logit_bias(self, sampling: SamplingParams, bias: tuple[tuple[int, float], ...], model_path: str
                              ) -> SamplingParams:
        """The sampling with a logit bias whose token ids are checked against the model's vocabulary first (a 400
        before loading, never an index past the logits in the runner)."""
        if not bias:
            return sampling
        tokenizer = await asyncio.to_thread(get_tokenizer, model_path)
        bad = next((tok for tok, _ in bias if not 0 <= tok < tokenizer.n_vocab), None)
        if bad is not None:
            raise InvalidRequest(f"logit_bias: token {bad} is not in the model's vocabulary of "
                                 f"{tokenizer.n_vocab} tokens")
        return replace(sampling, logit_bias=bias)

    async def special_markers(self, model: ResolvedModel, turn: ChatTurn, model_path: str) -> dict[str, int]:
        """The family's call markers that are one special token in the model's vocabulary, with that token's id
        (for the constraint: llguidance names a token that is not written `<...>`, like Mistral's `[TOOL_CALLS]`,
        only by its id)."""
        from herd.constrain.families import FAMILY_MARKERS

        markers = FAMILY_MARKERS.get(model.family.name, ())
        if not turn.tools or not markers:
            return {}
        tokenizer = await asyncio.to_thread(get_tokenizer, model_path)
        found = await asyncio.to_thread(tokenizer.special_tokens, markers)
        ids: dict[str, int] = {}
        for marker in sorted(found):
            tokens = await asyncio.to_thread(tokenizer.encode, marker, False)
            if len(tokens) == 1:
                ids[marker] = tokens[0]
        return ids

    def grammar_for(self, model: ResolvedModel, turn: ChatTurn, think: Think | None,
                    prefilled: bool = False, special: Collection[str] = frozenset()) -> str | None:
        """The constraint for this turn, or None. Called before loading (so a bad schema is a 400 before any
        work) and again after rendering, when it is known whether the template pre-opened thinking."""
        constrain_tools = turn.constrain_tools and self.settings.constrain_tools
        if turn.format is None and not (turn.tools and (constrain_tools or turn.force_tool is not None)):
            return None
        from herd.constrain import grammar as g

        thinking = think is not None and think.enabled and "thinking" in model.capabilities
        if turn.format is not None:
            if thinking:
                return g.grammar_for_format_after_thinking(turn.format, THINK_OPEN, THINK_CLOSE, prefilled=prefilled)
            return g.grammar_for_format(turn.format)
        from herd.parsing.toolcalls import ToolFormat, detect_tool_format

        specs = [g.ToolSpec(t.name, t.description, t.parameters) for t in turn.tools]
        family = model.family
        if family.parser or family.name == "qwen3":
            from herd.constrain.families import family_call_grammar

            family_grammar = family_call_grammar(family.name, model.template[1], specs, turn.force_tool, special)
            if family_grammar is None and turn.force_tool is not None:
                raise NotImplementedFeature(f"tool_choice cannot force a call in the {family.name} format: herd "
                                            "parses its calls but does not constrain them")
            if family_grammar is not None:
                g.check_grammar(family_grammar, what="tool definitions")
            return family_grammar
        fmt, _ = detect_tool_format(model.template[1])
        if fmt in (ToolFormat.LLAMA3, ToolFormat.MISTRAL):
            # The format the parser reads (by the template, as parser_for picks it) has a grammar of its own;
            # None: unforced with a special marker the grammar cannot name, so parsed only.
            from herd.constrain.families import family_call_grammar

            grammar = family_call_grammar(fmt.value, model.template[1], specs, turn.force_tool, special)
            if grammar is None:
                return None
        elif turn.force_tool is not None:
            grammar = g.grammar_for_forced_tool_call(specs, turn.force_tool or None, special_tags=special)
        else:
            if fmt != ToolFormat.HERMES:
                return None  # the generic tag: parsed as Ollama does, not constrained
            # Free text before the tag (thinking included) stays unconstrained; the call itself is not.
            grammar = g.grammar_for_tool_calls(specs, special_tags=special)
        g.check_grammar(grammar, what="tool definitions")
        return grammar
