"""Shared machinery for the parser tests: golden cases, the chunk-boundary checks every case goes through, and the
tools, strategies and checks the family parsers' tests have in common."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import strategies as st

from herd.parsing.base import Delta, IncrementalParser
from herd.parsing.pipeline import parse_all
from herd.types import ToolDef

CALL_ID_RE = re.compile(r"call_[a-z0-9]{8}")
FIXED_ID = "call_fixed000"  # what a parser made with `new_id=lambda: FIXED_ID` gives every call

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
    return parse(case.make, *pieces)


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


# --- tools ------------------------------------------------------------------------------------------------------

WEATHER_TOOL = ToolDef("get_weather", "Weather for a city", {"type": "object", "properties": {"city": {"type": "string"}}})
TIME_TOOL = ToolDef("get_time", "Time in a zone", {"type": "object", "properties": {"tz": {"type": "string"}}})
PARIS = {"city": "Paris"}  # arguments for WEATHER_TOOL
CET = {"tz": "CET"}  # arguments for TIME_TOOL


def tool(name: str, properties: dict[str, object], required: tuple[str, ...] = ()) -> ToolDef:
    params: dict[str, object] = {"type": "object", "properties": properties, "required": list(required)}
    return ToolDef(name=name, description="", parameters=params)


# --- parsing and checks -------------------------------------------------------------------------------------------


def parse(make: Callable[[], IncrementalParser], *pieces: str) -> Delta:
    """The whole turn from a fresh parser fed `pieces`, its call ids checked."""
    delta = parse_all(make(), pieces)
    check_ids(delta)
    return delta


def parse_logged(
    caplog: pytest.LogCaptureFixture, logger: str, make: Callable[[], IncrementalParser], *pieces: str
) -> Delta:
    """`parse`, with the warnings of `logger` (the parser's module) captured in `caplog`."""
    with caplog.at_level(logging.WARNING, logger=logger):
        return parse(make, *pieces)


def fragment_texts(fragments: Sequence[str], max_size: int = 14) -> st.SearchStrategy[str]:
    """Text made of the pieces that matter to a parser's state machine, to find orderings no golden case thought of."""
    return st.lists(st.sampled_from(fragments), max_size=max_size).map("".join)


def check_random_chunking(data: st.DataObject, cases: Sequence[Case]) -> None:
    """A golden case drawn from `cases`, cut at random places, still gives its expected result."""
    case = data.draw(st.sampled_from(cases), label="case")
    cuts = data.draw(st.lists(st.integers(0, len(case.text))), label="cuts")
    assert summary(run(case, split_at(case.text, cuts))) == case.expected()


def check_chunking_invariant(case: Case, cuts: Sequence[int]) -> Summary:
    """The result of any text (no golden one) is the same whole, cut at `cuts` (those inside the text) and char by
    char, and its calls are numbered 0, 1, ... Returns the result."""
    text = case.text
    whole = summary(run(case, [text]))
    assert summary(run(case, split_at(text, [c for c in cuts if c <= len(text)]))) == whole
    assert summary(run(case, list(text))) == whole
    assert [c[2] for c in whole[2]] == list(range(len(whole[2])))
    return whole


def check_calls_stream(case: Case) -> None:
    """Fed one character at a time, the case's calls arrive before `finish` (each complete at its end marker), in
    deltas that carry no content."""
    deltas = feed_deltas(case.make(), list(case.text))
    assert any(d.tool_calls for d in deltas)
    assert not deltas[-1].tool_calls
    assert all(d.content == "" for d in deltas if d.tool_calls)


def check_injected_id(make: Callable[..., IncrementalParser], text: str) -> None:
    """A parser made by `make(new_id=...)` gives the one call in `text` the id that `new_id` returns."""
    parser = make(new_id=lambda: FIXED_ID)
    assert [c.id for c in parser.feed(text).tool_calls] == [FIXED_ID]
