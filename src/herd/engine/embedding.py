"""Embeddings in the runner process: many inputs packed into one decode, pooled into one vector each.

Vectors are raw (not normalised); the server normalises, as /api/embed and the legacy /api/embeddings differ there.
Inputs arrive already fitted to num_ctx by the server.

Short inputs are packed into one decode, one sequence each (up to EMBED_MAX_SEQS, and as many tokens as one ubatch
and the cache hold): one decode of many texts costs far less than one decode per text. A model with a pooling type
(BERT-style embedding models) gives one pooled vector per sequence; each input must then fit one ubatch (non-causal
attention, and pooling sees only the last ubatch), so the server loads embedding runners with num_batch = num_ctx.
A causal chat model has no pooling: we average its per-token hidden states ourselves (mean pooling), and a long
input is decoded alone, chunk after chunk. Ollama's runner takes the last token's state instead; for a model never
trained to embed, the mean is the steadier summary of the text.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np

# Inputs of one embedding request decoded together, at most (each is a sequence of the same llama_batch).
EMBED_MAX_SEQS = 16


def put_token(batch: Any, i: int, token: int, pos: int, seq_id: int, output: bool) -> None:
    """Entry i of a llama_batch: one token of one sequence, with or without its output (logits or embedding)."""
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq_id
    batch.logits[i] = output


class Embedder:
    def __init__(self, L: Any, model: object, ctx: object, batch: Any, n_batch: int, num_ctx: int) -> None:
        self.L, self.ctx, self.batch = L, ctx, batch
        self.mem = L.llama_get_memory(ctx)
        self.n_embd = L.llama_model_n_embd(model)
        self.pooled = L.llama_pooling_type(ctx) != L.LLAMA_POOLING_TYPE_NONE
        self.cap = min(n_batch, num_ctx)  # tokens per decode: one ubatch, within the cache

    def embed(self, inputs: tuple[tuple[int, ...], ...]) -> tuple[tuple[float, ...], ...]:
        vectors: list[tuple[float, ...]] = [()] * len(inputs)
        group: list[int] = []  # indices of the inputs packed into the next decode
        used = 0
        try:
            for i, tokens in enumerate(inputs):
                if not tokens:
                    # Nothing to decode (an empty string on a model that adds no BOS): the zero vector.
                    vectors[i] = (0.0,) * self.n_embd
                elif len(tokens) > self.cap:
                    if self.pooled:
                        raise RuntimeError("the input length exceeds the context length")
                    vectors[i] = self._embed_long(tokens)
                else:
                    if used + len(tokens) > self.cap or len(group) == EMBED_MAX_SEQS:
                        self._flush(inputs, group, vectors)
                        used = 0
                    group.append(i)
                    used += len(tokens)
            self._flush(inputs, group, vectors)
            return tuple(vectors)
        finally:
            # Forget the cells; their data need not be zeroed (masked out, and a memset of the whole cache per
            # request would cost more than embedding a short text).
            self.L.llama_memory_clear(self.mem, False)

    def _flush(self, inputs: tuple[tuple[int, ...], ...], group: list[int], vectors: list[tuple[float, ...]]) -> None:
        if group:
            for i, vec in zip(group, self._embed_packed([inputs[i] for i in group])):
                vectors[i] = vec
            group.clear()

    def _decode(self, n: int) -> None:
        self.batch.n_tokens = n
        if self.L.llama_decode(self.ctx, self.batch) != 0:
            raise RuntimeError("llama_decode failed")

    def _embed_packed(self, inputs: list[tuple[int, ...]]) -> list[tuple[float, ...]]:
        L, n_embd = self.L, self.n_embd
        L.llama_memory_clear(self.mem, False)
        n = 0
        for seq, tokens in enumerate(inputs):
            for pos, tok in enumerate(tokens):
                # Every token is an output: pooling (ours or llama.cpp's) reads all of them.
                put_token(self.batch, n, tok, pos, seq, True)
                n += 1
        self._decode(n)
        if self.pooled:
            out = []
            for seq in range(len(inputs)):
                ptr = L.llama_get_embeddings_seq(self.ctx, seq)
                if not ptr:
                    raise RuntimeError("the model produced no pooled embedding")
                out.append(tuple(float(x) for x in np.ctypeslib.as_array(ptr, shape=(n_embd,))))
            return out
        # With pooling NONE the context keeps every output token's hidden state, in batch order.
        states = np.ctypeslib.as_array(L.llama_get_embeddings(self.ctx), shape=(n * n_embd,)).reshape(n, n_embd)
        bounds = np.cumsum([0, *(len(t) for t in inputs)])
        return [tuple(float(x) for x in states[a:b].mean(axis=0, dtype=np.float64))
                for a, b in pairwise(bounds)]

    def _embed_long(self, tokens: tuple[int, ...]) -> tuple[float, ...]:
        """Mean pooling of an input longer than one decode: the causal cache carries the earlier chunks."""
        L, n_embd = self.L, self.n_embd
        L.llama_memory_clear(self.mem, False)
        acc = np.zeros(n_embd, dtype=np.float64)
        for start in range(0, len(tokens), self.cap):
            chunk = tokens[start:start + self.cap]
            for j, tok in enumerate(chunk):
                put_token(self.batch, j, tok, start + j, 0, True)
            self._decode(len(chunk))
            ptr = L.llama_get_embeddings(self.ctx)
            acc += np.ctypeslib.as_array(ptr, shape=(len(chunk) * n_embd,)).reshape(len(chunk), n_embd).sum(
                axis=0, dtype=np.float64)
        return tuple(float(x) for x in acc / len(tokens))
