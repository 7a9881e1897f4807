"""Shared machinery for the parser tests: golden cases and the chunk-boundary checks every case goes through."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from herd.parsing.base import Delta, IncrementalParser
from herd.parsing.pipeline import parse_all

CALL_ID_RE = re.compile(r"call_[a-z0-9]{8}")

# (name, arguments as JSON text, index): JSON text so that key order is part of the comparison.
CallSummary = tuple[str, str, int]
Summary = tuple[str, str, tuple[CallSummary, ...]]


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], IncrementalParser]
    text: str
    content: str = ""
    thinking: str = ""
    calls: tuple[tuple[str, dict[str, object]], ...] = ()  # (name, arguments); index is the position

    def expected(self) -> Summary:
        return (
            self.content,
            self.thinking,
            tuple((name, dump(args), i) for i, (name, args) in enumerate(self.calls)),
        )


def dump(args: object) -> str:
    return json.dumps(args, ensure_ascii=False)


def summary(delta: Delta) -> Summary:
    """Everything but the random ids, which `check_ids` looks at instead."""
    calls = tuple((c.name, dump(c.arguments), c.index) for c in delta.tool_calls)
    return delta.content, delta.thinking, calls


def check_ids(delta: Delta) -> None:
    ids = [c.id for c in delta.tool_calls]
    for call_id in ids:
        assert CALL_ID_RE.fullmatch(call_id), call_id
    assert len(set(ids)) == len(ids)


def run(case: Case, pieces: Iterable[str]) -> Delta:
    delta = parse_all(case.make(), pieces)
    check_ids(delta)
    return delta


def split_at(text: str, cuts: Sequence[int]) -> list[str]:
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


def check_case_all_chunkings(case: Case) -> None:
    """The one-piece result is the golden one, and every 2-piece split and char-by-char feeding agree with it."""
    whole = summary(run(case, [case.text]))
    assert whole == case.expected()
    for i in range(len(case.text) + 1):
        pieces = [case.text[:i], case.text[i:]]
        assert summary(run(case, pieces)) == whole, f"split at {i}: {pieces!r}"
    assert summary(run(case, list(case.text))) == whole, "char by char"


def feed_deltas(parser: IncrementalParser, pieces: Iterable[str]) -> list[Delta]:
    deltas = [parser.feed(p) for p in pieces]
    deltas.append(parser.finish())
    return deltas
