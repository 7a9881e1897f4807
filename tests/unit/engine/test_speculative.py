"""Speculation's decisions (engine/speculative.py), apart from llama.cpp.

The acceptance test is exact: a fake model's next-token probabilities are multiples of 1/8, the sampler turns one
draw in 0..7 into a token by its cumulative counts, and every sequence of draws is enumerated. Generating with
proposals must then give, draw sequence by draw sequence, the same tokens as generating one token per step, so the
output distribution is the target's exactly (and equal to the product of the fake model's probabilities). It
proves the rule the runner uses; it cannot prove the runner feeds it the right logits (the integration tests in
tests/integration/test_speculative.py compare real texts with speculation on and off).
"""

from __future__ import annotations

import itertools
from collections import Counter
from fractions import Fraction

import pytest

from herd.engine.speculative import Acceptance, CostCurve, PromptLookup, plan, verify

VOCAB = 4
EIGHTHS = 8


def fake_probs(prefix: tuple[int, ...]) -> list[int]:
    """Counts out of 8 per token, a fixed function of the text so far (a small 'model')."""
    h = (sum((i + 1) * t for i, t in enumerate(prefix)) * 7 + len(prefix) * 3) % 5
    table = [[5, 1, 1, 1], [1, 4, 2, 1], [2, 2, 2, 2], [0, 1, 1, 6], [3, 0, 5, 0]]
    return table[h]


def pick(counts: list[int], draw: int) -> int:
    acc = 0
    for tok, c in enumerate(counts):
        acc += c
        if draw < acc:
            return tok
    raise AssertionError("draw out of range")


def draft_for(prefix: tuple[int, ...], k: int) -> list[int]:
    """A deterministic proposer that is often right and sometimes wrong: the fake model's argmax, except at
    every third length, where it proposes the least likely token."""
    out: list[int] = []
    text = prefix
    for _ in range(k):
        counts = fake_probs(text)
        tok = counts.index(max(counts)) if len(text) % 3 else counts.index(min(counts))
        out.append(tok)
        text = text + (tok,)
    return out


def generate_plain(draws: tuple[int, ...]) -> tuple[int, ...]:
    text: tuple[int, ...] = ()
    for d in draws:
        text = text + (pick(fake_probs(text), d),)
    return text


def generate_speculative(draws: tuple[int, ...], k: int) -> tuple[tuple[int, ...], int, int]:
    """As the runner does: propose k, verify with one draw per emitted token, until len(draws) tokens."""
    text: tuple[int, ...] = ()
    it = iter(draws)
    proposed = accepted_total = 0
    while len(text) < len(draws):
        room = len(draws) - len(text)
        draft = draft_for(text, min(k, room - 1))
        base = text

        def sample(i: int, base: tuple[int, ...] = base, draft: list[int] = draft) -> int | None:
            nonlocal text
            tok = pick(fake_probs(base + tuple(draft[:i])), next(it))
            text = text + (tok,)
            return None if len(text) >= len(draws) else tok

        accepted, _last = verify(draft, sample)
        proposed += len(draft)
        accepted_total += accepted
    return text, proposed, accepted_total


@pytest.mark.parametrize("k", [1, 2, 4])
def test_acceptance_rule_gives_the_targets_distribution_exactly(k: int) -> None:
    length = 5
    plain: Counter[tuple[int, ...]] = Counter()
    spec: Counter[tuple[int, ...]] = Counter()
    proposed = accepted = 0
    for draws in itertools.product(range(EIGHTHS), repeat=length):
        a = generate_plain(draws)
        b, p, acc = generate_speculative(draws, k)
        assert a == b, (draws, a, b)  # the same draws give the same text: no extra randomness
        plain[a] += 1
        spec[b] += 1
        proposed += p
        accepted += acc
    assert plain == spec
    total = EIGHTHS**length
    for text, n in spec.items():
        expected = Fraction(1)
        for i, tok in enumerate(text):
            expected *= Fraction(fake_probs(text[:i])[tok], EIGHTHS)
        assert Fraction(n, total) == expected
    # The proposer is right often enough that the accept and the reject paths both ran many times.
    assert 0 < accepted < proposed


def test_verify_stops_at_the_first_disagreement_and_returns_the_sampled_token() -> None:
    seen: list[int] = []

    def sample(i: int) -> int | None:
        seen.append(i)
        return [7, 8, 5, 9][i]

    assert verify([7, 8, 9], sample) == (2, 5)
    assert seen == [0, 1, 2]


def test_verify_all_accepted_samples_one_more() -> None:
    assert verify([1, 2], lambda i: [1, 2, 3][i]) == (2, 3)
    assert verify([], lambda i: 4) == (0, 4)


def test_verify_an_ending_token_ends_without_a_next_token() -> None:
    assert verify([1, 2, 3], lambda i: None if i == 1 else 1 + i) == (1, None)


def test_prompt_lookup_proposes_what_followed_the_longest_recent_match() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 7, 8])
    lookup.extend([1, 2, 3])
    # "1 2 3" occurred at the start (followed by 4 5); "2 3" more recently (followed by 7 8): the longer wins
    assert lookup.propose(3) == [4, 5, 9]
    lookup.extend([6])
    assert lookup.propose(3) == []  # "3 6" never occurred and single tokens are not matched


def test_prompt_lookup_never_matches_the_texts_own_end() -> None:
    lookup = PromptLookup([5, 6])
    assert lookup.propose(4) == []
    lookup.extend([5, 6])
    assert lookup.propose(4) == [5, 6]  # the earlier "5 6" was followed by "5 6"
    assert lookup.propose(0) == []


def test_prompt_lookup_prefers_the_most_recent_occurrence() -> None:
    lookup = PromptLookup([1, 2, 10, 1, 2, 20, 1, 2])
    assert lookup.propose(1) == [20]


def test_acceptance_follows_evidence_and_returns_to_the_prior() -> None:
    a = Acceptance()
    prior = a.rate
    for _ in range(5):
        a.update(4, 4)
    assert a.rate > 0.9
    for _ in range(10):
        a.update(4, 0)
    assert a.rate < 0.2
    for _ in range(200):
        a.update(0, 0)
    assert a.rate == pytest.approx(prior, abs=0.01)


def flat(slope: float) -> CostCurve:
    return CostCurve([1.0 + slope * i for i in range(32)])


def test_plan_proposes_more_the_more_is_accepted() -> None:
    cost = flat(0.1)
    (low,) = plan([(0.3, 8)], 1, 1.0, cost, 100)
    (mid,) = plan([(0.7, 8)], 1, 1.0, cost, 100)
    (high,) = plan([(0.95, 8)], 1, 1.0, cost, 100)
    assert low <= mid <= high
    assert high == 8 and low < 8


def test_plan_proposes_nothing_when_a_token_costs_a_full_step() -> None:
    assert plan([(0.6, 8)], 1, 1.0, flat(1.0), 100) == [0]
    assert plan([(0.9, 0)], 1, 1.0, flat(0.0), 100) == [0]  # nothing to propose


def test_plan_shrinks_proposals_when_many_sequences_share_the_step() -> None:
    # Memory-bound up to 8 tokens, then each token costs as much as a step of one: 8 streams fill it already.
    cost = CostCurve([1.0] * 8 + [1.0 + 0.9 * i for i in range(1, 25)])
    alone = plan([(0.8, 8)], 1, 1.0, cost, 100)
    crowded = plan([(0.8, 8)] * 8, 8, 8.0, cost, 100)
    assert sum(alone) >= 6
    assert sum(crowded) < sum(alone) and all(k <= 1 for k in crowded)


def test_plan_respects_the_batch_room() -> None:
    assert sum(plan([(0.99, 8)] * 4, 4, 4.0, flat(0.0), 5)) == 5


def test_cost_curve_measure_interpolates_and_never_decreases() -> None:
    times = {1: 1.0, 2: 1.2, 4: 1.1, 8: 3.0}
    curve = CostCurve.measure(lambda n: times[n] / 1000, (1, 2, 4, 8), budget_s=10)
    assert curve(1) == 1.0
    assert curve(2) == pytest.approx(1.2)
    assert curve(3) == pytest.approx(1.2)  # the noisy dip at 4 is flattened, not believed
    assert curve(8) == pytest.approx(3.0)
    assert curve(10) > curve(8)  # extrapolated past the last size


def test_cost_curve_measure_stops_at_its_budget() -> None:
    calls: list[int] = []

    def timer(n: int) -> float:
        calls.append(n)
        return 0.1 * n

    curve = CostCurve.measure(timer, (1, 2, 4, 8, 16), budget_s=2.0)
    assert 16 not in calls
    assert curve(16) > curve(4)


def test_plan_apart_charges_a_pass_per_sequence() -> None:
    """With several sequences each one's proposals are a ubatch of their own: on a curve where a pass of one
    sequence's 4 tokens costs 1.6 steps, 8 streams (one pass of 8 tokens at 1.8) gain nothing from a sequence's 4
    proposals at 0.8 acceptance (2.4 tokens for 1.6 more), while one stream alone does (1 + 2.4 tokens for 1.6)."""
    cost = CostCurve([1.0, 1.3, 1.45, 1.6, 1.7, 1.75, 1.78, 1.8])
    (alone,) = plan([(0.8, 4)], 1, 1.0, cost, 100, apart=False)
    crowded = plan([(0.8, 4)] * 8, 8, 8.0, cost, 100, apart=True)
    assert alone == 4 and crowded == [0] * 8
    # Two streams, one copying (nearly certain proposals): its pass of 8 is worth taking, the other's nothing
    assert plan([(0.99, 8), (0.0, 0)], 2, 2.0, flat(0.05), 100, apart=True) == [8, 0]
    # and the room still bounds the total
    assert sum(plan([(0.99, 8)] * 4, 4, 4.0, flat(0.0), 5, apart=True)) <= 5
