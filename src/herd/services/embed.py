"""Embeddings (spec 5.6, 5.7, 9.4): /api/embed, the legacy /api/embeddings and /v1/embeddings share this service.

The model is loaded for embeddings (`LoadSpec(embedding=True)`: a context that keeps hidden states, one
sequence). Every input is tokenized here, fitted to the context (cut, or refused with truncate:false), and all
of a request's inputs go to the runner in one command. Like Ollama, any model may embed: embedding models
pool as their GGUF says; chat models are mean-pooled by the runner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from herd.engine.protocol import LoadSpec
from herd.engine.tokenizer import Tokenizer, get_tokenizer
from herd.errors import InvalidRequest, ModelNotFound, RunnerFailed
from herd.options import merge
from herd.registry.models import ResolvedModel
from herd.registry.names import InvalidName, ModelName
from herd.services.chat import ChatService

INPUT_TOO_LONG = "the input length exceeds the context length"


@dataclass(frozen=True)
class EmbedRequest:
    model: str  # as sent (echoed back)
    inputs: tuple[str, ...]
    truncate: bool = True
    dimensions: int = 0  # 0 = the model's full size
    options: dict[str, object] = field(default_factory=dict)
    keep_alive: float | None = None
    normalize: bool = True  # the legacy /api/embeddings returns raw vectors


@dataclass(frozen=True)
class EmbedResult:
    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int = 0
    total_duration: int = 0
    load_duration: int = 0


def not_found(name: str) -> ModelNotFound:
    # /api/embed and /api/embeddings word a missing model as the scheduler does, in double quotes (spec 4).
    return ModelNotFound(f'model "{name}" not found, try pulling it first')


def l2_normalize(vec: Sequence[float]) -> tuple[float, ...]:
    norm = math.sqrt(math.fsum(x * x for x in vec))
    if norm == 0.0:
        return tuple(vec)  # the zero vector has no direction; Ollama leaves it as it is
    return tuple(x / norm for x in vec)


class EmbedService:
    def __init__(self, chat: ChatService) -> None:
        self.chat = chat

    async def resolve(self, name: str) -> ResolvedModel:
        if not name:
            raise ModelNotFound("model '' not found")  # Ollama's wording for a blank name on /api/embed
        try:
            ModelName.parse(name)
            return await self.chat.catalog.aresolve(name)
        except (InvalidName, ModelNotFound):
            raise not_found(name) from None

    async def aload_spec(self, model: ResolvedModel, opts: dict[str, object]) -> LoadSpec:
        spec = await self.chat.aload_spec(model, opts, embedding=True)
        if model.gguf.has_pooling:
            # llama.cpp pools only over one ubatch, and BERT-style attention is not causal: a whole input
            # must go in one decode. A chat model is mean-pooled by the runner chunk by chunk instead, so it
            # keeps the smaller batch (a num_ctx-sized ubatch costs hundreds of MB of compute buffers).
            spec = dataclasses.replace(spec, num_batch=spec.num_ctx)
        return spec

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        t0 = time.perf_counter_ns()
        chat = self.chat
        chat.request_limits.check_embed_inputs(len(req.inputs))  # 400 past the bound, before any work
        model = await self.resolve(req.model)
        ref = chat.model_ref(model)
        opts = merge(model.parameters, req.options)
        spec = await self.aload_spec(model, opts)
        async with chat.scheduler.lease(ref, spec, req.keep_alive) as loaded:
            t_loaded = time.perf_counter_ns()
            if not req.inputs:
                return EmbedResult(())  # an empty input only loads the model
            tokenizer = await asyncio.to_thread(get_tokenizer, spec.model_path)
            inputs = await asyncio.to_thread(self.tokenize, tokenizer, req.inputs, spec.num_ctx, req.truncate)
            chat.request_limits.check_embed_tokens(inputs)  # known only once tokenized; still before the runner
            ev = await loaded.runner.embed(inputs)
            if ev.error:
                raise RunnerFailed(ev.error)
        vectors = ev.vectors
        if req.normalize:
            vectors = tuple(self.finish_vector(v, req.dimensions) for v in vectors)
        return EmbedResult(vectors, ev.prompt_tokens, time.perf_counter_ns() - t0, t_loaded - t0)

    @staticmethod
    def finish_vector(vec: Sequence[float], dimensions: int) -> tuple[float, ...]:
        """Normalise; with `dimensions` below the native size, cut and normalise again (Ollama)."""
        out = l2_normalize(vec)
        if 0 < dimensions < len(out):
            out = l2_normalize(out[:dimensions])
        return out

    @staticmethod
    def tokenize(tokenizer: Tokenizer, texts: Sequence[str], num_ctx: int, truncate: bool
                 ) -> tuple[tuple[int, ...], ...]:
        # The special tokens the model wraps every input in (BERT: [CLS] ... [SEP]); a cut keeps the closing one.
        specials = tokenizer.encode("", True)
        closing = specials[1:] if tokenizer.add_bos else specials
        out = []
        for text in texts:
            tokens = tokenizer.encode(text, True)
            if len(tokens) > num_ctx:
                if not truncate:
                    raise InvalidRequest(INPUT_TOO_LONG)
                keep_tail = closing if closing and tokens[-len(closing):] == closing else ()
                if num_ctx <= len(keep_tail):
                    raise InvalidRequest(INPUT_TOO_LONG)
                tokens = tokens[: num_ctx - len(keep_tail)] + keep_tail
            out.append(tokens)
        return tuple(out)
