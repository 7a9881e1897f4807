"""A draft model in the runner process: a small model with the target's vocabulary that proposes each decoding
sequence's next tokens (Modelfile DRAFT; the worker verifies them, engine/speculative.py).

It has its own llama context with one KV stream per slot of the target (seq ids are the target's slot ids), and
remembers per sequence exactly which tokens its KV holds. A call gets each sequence's whole text; what the draft
already holds of it (the common prefix) is kept, the rest of its KV is removed, and only the missing tokens are
decoded: a sequence whose proposals were accepted costs one or two new tokens, one whose proposals were rejected
loses only the rejected ones. All sequences share every pass: the prompt catch-up in chunks of n_batch tokens,
then one pass per draft position for all sequences still drafting, so several streams cost about what one does.

Proposals are the draft's argmax (greedy), as llama.cpp's speculative examples do: verification samples from the
target anyway (engine/speculative.py), so a deterministic draft keeps the output distribution the target's.

Runs inside the runner process only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from herd.engine.embedding import put_token


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix. Slice comparisons run in C: after accepted proposals the two texts
    differ only near their ends, and a token-by-token loop over a long prompt would cost more than the decode."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class _Want:
    seq_id: int
    new: list[int]  # tokens of the text that the draft's KV does not hold yet
    k: int
    done: int = 0  # of `new`, decoded so far
    failed: bool = False


class DraftModel:
    def __init__(
        self,
        L: Any,
        path: str,
        n_seq: int,
        n_ctx: int,
        n_threads: int,
        n_batch: int,
        *,
        prefill_budget: int = 0,
        n_gpu_layers: int = -1,
        main_gpu: int = -1,
    ) -> None:
        """Load the draft GGUF and a context of n_seq streams of n_ctx cells each (RuntimeError if either fails).
        prefill_budget > 0 caps the catch-up tokens decoded per propose() call: a sequence still behind then gets
        no proposals that step, and goes on catching up in the next, so a long prompt does not stall one step.
        n_gpu_layers and main_gpu mean what they mean for the target (LoadSpec), so a model kept off the GPU
        (num_gpu 0) does not get its draft put there by llama.cpp's default of offloading everything."""
        self.L = L
        self.n_seq, self.n_ctx = n_seq, n_ctx
        self.prefill_budget = prefill_budget
        self.model: Any = None
        self.ctx: Any = None
        self.batch: Any = None
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = n_gpu_layers
        if main_gpu >= 0:
            mp.split_mode = L.LLAMA_SPLIT_MODE_NONE
            mp.main_gpu = main_gpu
        self.model = L.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"unable to load draft model: {path}")
        try:
            if L.llama_model_has_encoder(self.model):
                raise RuntimeError(f"draft model {path} is an encoder-decoder model; a draft must be a decoder only")
            self.vocab = L.llama_model_get_vocab(self.model)
            self.n_vocab: int = L.llama_vocab_n_tokens(self.vocab)
            self.eog = frozenset(t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t))
            cp = L.llama_context_default_params()
            cp.n_ctx = n_ctx * n_seq
            cp.n_batch = cp.n_ubatch = max(n_batch, n_seq)
            cp.n_seq_max = n_seq
            cp.n_threads = cp.n_threads_batch = n_threads
            # One stream per sequence, as the target has: a sequence's draft then reads only its own cells, and
            # proposes the same tokens whatever else runs beside it.
            cp.kv_unified = False
            cp.no_perf = True
            self.ctx = L.llama_init_from_model(self.model, cp)
            if not self.ctx:
                raise RuntimeError(
                    f"unable to create a llama context for draft model {path} ({n_seq} x {n_ctx} tokens)"
                )
        except BaseException:
            self.close()
            raise
        self.mem = L.llama_get_memory(self.ctx)
        self.n_batch = cp.n_batch
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        self.cached: list[list[int]] = [[] for _ in range(n_seq)]  # per seq id: exactly what its KV holds
        self.decoded = 0  # tokens decoded since load (tests and stats: KV reuse shows as few new tokens)
        self.passes = 0  # llama_decode calls since load
        self.failures = 0  # passes that failed (their sequences' new tokens were removed again)

    # ---- load-time check ---------------------------------------------------------------------------------
    def vocab_mismatch(self, target_vocab: Any) -> str | None:
        """How the target's vocabulary (a llama_vocab pointer) differs from the draft's, or None. The create step
        already compared the GGUF headers (registry/draft.py); this guards a draft put beside a model otherwise."""
        L = self.L
        n = L.llama_vocab_n_tokens(target_vocab)
        if n != self.n_vocab:
            return f"the draft has {self.n_vocab} tokens, the model {n}"
        for t in range(n):
            if L.llama_vocab_get_text(target_vocab, t) != L.llama_vocab_get_text(self.vocab, t):
                return f"token {t} differs"
        return None

    # ---- drafting ----------------------------------------------------------------------------------------
    def propose(self, wants: list[tuple[int, list[int], int]]) -> dict[int, list[int]]:
        """For each (seq_id, tokens, k): up to k greedy draft tokens continuing `tokens` (the sequence's whole text,
        its last token not yet decoded by the target). A sequence gets [] when its text does not fit n_ctx, holds
        an id outside the vocabulary (an image position, say), or its catch-up fails or is not done this call.
        Drafting stops after an end-of-generation token, which is proposed (the target may accept it)."""
        out: dict[int, list[int]] = {}
        todo: list[_Want] = []
        for seq_id, tokens, k in wants:
            if not 0 <= seq_id < self.n_seq or seq_id in out:
                raise ValueError(f"draft: seq id {seq_id} is out of range or asked twice")
            out[seq_id] = []
            text = tokens if isinstance(tokens, list) else list(tokens)
            # The KV must hold the text and all but the last proposal: len(text) + k - 1 cells.
            k = min(k, self.n_ctx - len(text) + 1)
            if k < 1 or not text:
                continue
            cached = self.cached[seq_id]
            keep = min(common_prefix(cached, text), len(text) - 1)  # the last token is decoded for its logits
            if any(not 0 <= t < self.n_vocab for t in text[keep:]):
                continue
            if len(cached) > keep:
                keep = self._truncate(seq_id, keep)
            todo.append(_Want(seq_id, text[keep:], k))
        self._catch_up(todo, out)
        self._extend([w for w in todo if out[w.seq_id]], out)
        return out

    def forget(self, seq_id: int) -> None:
        """Drop a sequence's draft KV (its slot goes to another request, or its KV was rebuilt otherwise)."""
        if self.cached[seq_id]:
            self._truncate(seq_id, 0)

    def close(self) -> None:
        L = self.L
        if self.batch is not None:
            L.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            L.llama_free(self.ctx)
        self.ctx = None
        if self.model:
            L.llama_model_free(self.model)
        self.model = None

    # ---- passes ------------------------------------------------------------------------------------------
    def _catch_up(self, todo: list[_Want], out: dict[int, list[int]]) -> None:
        """Decode every sequence's missing tokens, many sequences per batch; the pass that holds a sequence's last
        token gives its first proposal."""
        budget = self.prefill_budget or -1
        while budget != 0:
            n = 0
            touched: list[tuple[_Want, int]] = []
            firsts: list[tuple[_Want, int]] = []  # sequences whose text ends in this pass, and the batch row
            for w in todo:
                left = len(w.new) - w.done
                if w.failed or not left:
                    continue
                if n == self.n_batch or budget == 0:
                    break
                take = min(left, self.n_batch - n, budget if budget > 0 else left)
                cached = self.cached[w.seq_id]
                touched.append((w, len(cached)))
                chunk = w.new[w.done : w.done + take]
                for j, tok in enumerate(chunk):
                    put_token(self.batch, n + j, tok, len(cached) + j, w.seq_id, False)
                cached.extend(chunk)
                w.done += take
                n += take
                budget -= take if budget > 0 else 0
                if w.done == len(w.new):
                    self.batch.logits[n - 1] = True
                    firsts.append((w, n - 1))
            if not n:
                return
            if self._decode(n, touched):
                for w, row in firsts:
                    out[w.seq_id].append(self._argmax(row))

    def _extend(self, live: list[_Want], out: dict[int, list[int]]) -> None:
        """One pass per further draft position: each sequence's last proposal in, its next one out."""
        live = [w for w in live if len(out[w.seq_id]) < w.k and out[w.seq_id][-1] not in self.eog]
        while live:
            touched: list[tuple[_Want, int]] = []
            for i, w in enumerate(live):
                cached = self.cached[w.seq_id]
                touched.append((w, len(cached)))
                tok = out[w.seq_id][-1]
                put_token(self.batch, i, tok, len(cached), w.seq_id, True)
                cached.append(tok)
            if not self._decode(len(live), touched):
                return  # the proposals made so far stand: the KV behind them is what it was
            for i, w in enumerate(live):
                out[w.seq_id].append(self._argmax(i))
            live = [w for w in live if len(out[w.seq_id]) < w.k and out[w.seq_id][-1] not in self.eog]

    def _decode(self, n: int, touched: list[tuple[_Want, int]]) -> bool:
        """llama_decode of the batch's first n entries. On failure every sequence in it goes back to the length
        it had before the pass (cells and token list alike), whatever llama.cpp left in the KV, and stops."""
        self.batch.n_tokens = n
        self.passes += 1
        if self.L.llama_decode(self.ctx, self.batch) == 0:
            self.decoded += n
            return True
        self.failures += 1
        for w, before in touched:
            self._truncate(w.seq_id, before)
            w.failed = True
        return False

    def _truncate(self, seq_id: int, keep: int) -> int:
        """Remove the sequence's KV from position `keep` on; returns what it keeps. A recurrent or hybrid model
        (Mamba, say) cannot cut its state at a position: llama.cpp refuses, and the sequence starts over."""
        if not self.L.llama_memory_seq_rm(self.mem, seq_id, keep, -1):
            self.L.llama_memory_seq_rm(self.mem, seq_id, 0, -1)
            keep = 0
        del self.cached[seq_id][keep:]
        return keep

    def _argmax(self, row: int) -> int:
        # The first maximum, as llama.cpp's greedy sampler picks it.
        logits = np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))
        return int(logits.argmax())
