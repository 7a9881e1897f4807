"""Speculative decoding's decisions, apart from llama.cpp: what to propose, how many, and what to accept.

A decoding sequence's step normally puts one token (the last one sampled) into the batch. With speculation it also
puts up to k proposed tokens after it, all with logits, so one forward pass scores k + 1 positions. The runner then
samples position 0 as usual; while the sampled token equals the proposal at that position, the next position's
logits are valid too and it samples again. It keeps the agreeing prefix and removes the rest from the KV cache.

Why that is exact. Every emitted token is sampled by the sequence's own chain (penalties, grammar mask, logit bias,
temperature, its seeded RNG) from the target model's logits after exactly the tokens emitted before it; a proposal
only decides how many positions one pass computes. Proposals here are deterministic (prompt lookup, a draft
model's argmax), and for a one-hot draft q the standard speculative sampling rule (accept x with probability
min(1, p(x)/q(x)), else sample from norm(max(0, p - q))) is the same as "sample y from p; keep going while y == x":
both accept with probability p(x), and both otherwise return y from p restricted to y != x. So at temperature 0
the text is the target's argmax text, and above it the output distribution is the target's, with the same random
draws per emitted token as without speculation. (Batched kernels may round a near-tie differently: see the README.)

How many. A step's cost grows with its token count by a curve measured at load (`CostCurve`). Each proposed token
is worth its probability of being reached and accepted, a^i for the i-th with the sequence's acceptance estimate a
(`Acceptance`). `plan` adds proposed tokens, best first, while the step's expected tokens per unit of cost goes up,
so k grows while proposals are accepted, falls to 0 when they are not, and shrinks when many sequences already fill
the batch. With several sequences a sequence's proposals cost a pass of their own (llama.cpp splits a batch over
per-sequence KV streams into ubatches of equally many tokens per sequence), so at 8 streams proposals are rarely
worth it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MAX_PROPOSED = 8  # per sequence and step: draft_num_predict's default and ceiling
NGRAM_MAX = 4
NGRAM_MIN = 2  # a single-token match proposes mostly noise
# A proposal must raise the step's expected tokens per cost by this factor: the curve and the estimates are noisy
# and a wrong proposal costs time for sure while its gain is only expected.
MIN_GAIN = 1.02
# An estimate of 0.7 before any evidence: high enough that a first proposal is tried where a step of two tokens
# costs up to 1.6 one-token steps (Q4_1 on a CPU without its batched kernel), and one miss stops it.
PRIOR_ACCEPTED, PRIOR_PROPOSED = 1.4, 2.0
DECAY = 0.85  # per step with proposals: the estimate follows the text (a quote, then free prose)
# Per step without: back to the prior after about 60 tokens, so a sequence whose proposals failed is tried again
# at a cost of one wasted position per ~60 tokens.
IDLE_DECAY = 0.95


class PromptLookup:
    """The n-gram index of one sequence's text (prompt and generated tokens): for the text's last n tokens (n from
    NGRAM_MAX down to NGRAM_MIN) the most recent earlier place they occurred, and what followed them there."""

    __slots__ = ("_index", "tokens")

    def __init__(self, tokens: Sequence[int] = ()) -> None:
        self.tokens: list[int] = []
        # _index[n - NGRAM_MIN]: n-gram -> the position just after its latest occurrence that has a follower
        self._index: list[dict[tuple[int, ...], int]] = [{} for _ in range(NGRAM_MIN, NGRAM_MAX + 1)]
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        text = self.tokens
        for tok in tokens:
            end = len(text)
            # The n-grams ending at `end - 1` now have a follower, at `end`. The text's own suffix is entered only
            # once it has one, so a lookup of the suffix finds an earlier occurrence, never itself.
            for n in range(NGRAM_MIN, min(NGRAM_MAX, end) + 1):
                self._index[n - NGRAM_MIN][tuple(text[end - n : end])] = end
            text.append(tok)

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the longest recent match of the text's end; [] when nothing matches."""
        text = self.tokens
        if k <= 0:
            return []
        for n in range(min(NGRAM_MAX, len(text)), NGRAM_MIN - 1, -1):
            at = self._index[n - NGRAM_MIN].get(tuple(text[len(text) - n :]))
            if at is not None:
                return text[at : at + k]
        return []


@dataclass
class Acceptance:
    """A sequence's estimated chance that a proposed token is accepted, from its recent verify steps."""

    accepted: float = PRIOR_ACCEPTED
    proposed: float = PRIOR_PROPOSED

    @property
    def rate(self) -> float:
        return self.accepted / self.proposed

    def update(self, proposed: int, accepted: int) -> None:
        # Decayed toward the prior, also over steps that proposed nothing, so a sequence whose proposals stopped
        # being worth it is tried again once the evidence is old.
        d = DECAY if proposed else IDLE_DECAY
        self.accepted = d * self.accepted + (1 - d) * PRIOR_ACCEPTED + accepted
        self.proposed = d * self.proposed + (1 - d) * PRIOR_PROPOSED + proposed


@dataclass
class CostCurve:
    """A step's time by its number of tokens, relative to a one-token step: cost[n - 1] for n tokens."""

    cost: list[float] = field(default_factory=lambda: [1.0])

    def __call__(self, n: int) -> float:
        if n <= len(self.cost):
            return self.cost[max(n, 1) - 1]
        last = self.cost[-1]
        slope = (last - self.cost[-2]) if len(self.cost) > 1 else 1.0
        return last + max(slope, 0.0) * (n - len(self.cost))

    @classmethod
    def measure(cls, time_step: Callable[[int], float], sizes: Sequence[int], budget_s: float) -> CostCurve:
        """Times steps of each size (best of a few) with `time_step(n) -> seconds`, within about `budget_s`,
        and interpolates the sizes between. Non-decreasing by construction: noise must not make more look cheaper."""
        time_step(1)  # the first pass pays one-time setup (buffers, threads)
        spent, points = 0.0, []
        for n in sizes:
            best = min(time_step(n) for _ in range(3))
            points.append((n, best))
            spent += 4 * best
            if spent > budget_s:
                break
        base = points[0][1]
        cost = [1.0]
        for (n0, t0), (n1, t1) in itertools.pairwise(points):
            for n in range(n0 + 1, n1 + 1):
                t = t0 + (t1 - t0) * (n - n0) / (n1 - n0)
                cost.append(max(cost[-1], t / base))
        return cls(cost)


def verify(draft: Sequence[int], sample: Callable[[int], int | None]) -> tuple[int, int | None]:
    """The acceptance rule. sample(i) samples (and emits) the token at position i, the one after draft[:i], and
    returns it, or None when that token ended the sequence. Returns how many proposals were accepted and the last
    token sampled, which is the next one to decode (None when the sequence ended)."""
    accepted = 0
    for i in range(len(draft) + 1):
        token = sample(i)
        if token is None:
            break
        if i < len(draft) and token == draft[i]:
            accepted += 1
            continue
        return accepted, token
    return accepted, None


def plan(wants: Sequence[tuple[float, int]], base_tokens: int, expected: float, cost: CostCurve,
         room: int, apart: bool = False) -> list[int]:
    """How many tokens to propose for each sequence of a step.

    wants: per sequence (acceptance rate, the most it may propose). base_tokens: the step's tokens without
    proposals (decoding and prefill); expected: the tokens the step yields without them. room: batch slots left.
    A proposal's i-th token yields rate**i more tokens. apart: the proposals of each sequence take a pass of their
    own (several sequences on per-sequence KV streams: llama.cpp splits a batch into ubatches of equally many
    tokens per sequence, so k extra tokens of one sequence cost a pass of k tokens, cost(k), not cost(n + k) -
    cost(n)). Proposals are taken while they raise the step's expected yield per cost by MIN_GAIN."""
    if not apart:
        return _plan_one_pass(wants, base_tokens, expected, cost, room)
    ks = [0] * len(wants)
    spent, value = cost(base_tokens), expected
    left = {i for i, (rate, most) in enumerate(wants) if most > 0 and rate > 0}
    while left and room > 0:
        best: tuple[float, int, int, float] | None = None  # (yield per cost, sequence, k, gain)
        for i in left:
            rate, most = wants[i]
            gain, term = 0.0, 1.0
            for k in range(1, min(most, room) + 1):
                term *= rate
                gain += term
                ratio = (value + gain) / (spent + cost(k))
                if best is None or ratio > best[0]:
                    best = (ratio, i, k, gain)
        if best is None or best[0] < MIN_GAIN * value / spent:
            break
        _, i, k, gain = best
        ks[i] = k
        left.discard(i)
        spent += cost(k)
        value += gain
        room -= k
    return ks


def _plan_one_pass(wants: Sequence[tuple[float, int]], base_tokens: int, expected: float, cost: CostCurve,
                   room: int) -> list[int]:
    """plan() where the step is one pass: tokens are added best first while the step's expected yield per cost
    rises by MIN_GAIN."""
    ks = [0] * len(wants)
    heap = [(-rate, i, rate) for i, (rate, most) in enumerate(wants) if most > 0 and rate > 0]
    heapq.heapify(heap)
    n, value = base_tokens, expected
    while heap and room > 0:
        neg_gain, i, rate = heap[0]
        gain = -neg_gain
        if (value + gain) / cost(n + 1) < MIN_GAIN * value / cost(n):
            break
        heapq.heappop(heap)
        ks[i] += 1
        n += 1
        room -= 1
        value += gain
        if ks[i] < wants[i][1]:
            heapq.heappush(heap, (-gain * rate, i, rate))
    return ks
