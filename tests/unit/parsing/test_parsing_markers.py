"""The marker searches every family parser shares (herd.parsing.markers), against their plain definitions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from herd.parsing.markers import earliest, find_from, partial_len, split_at_marker

# A small alphabet, so that markers overlap, nest and cut off at the end of the text often.
_TEXT = st.text(alphabet="<|>ab", max_size=14)
_MARKERS = st.lists(st.text(alphabet="<|>ab", min_size=1, max_size=4), min_size=1, max_size=4)


def _earliest_by_definition(buf: str, markers: list[str]) -> tuple[int, str] | None:
    found = [(i, m) for m in markers if (i := buf.find(m)) >= 0]
    return min(found, key=lambda f: (f[0], -len(f[1])), default=None)


def _partial_by_definition(buf: str, markers: list[str]) -> int:
    return max((n for m in markers for n in range(1, len(m)) if buf.endswith(m[:n])), default=0)


@settings(max_examples=500, deadline=None)
@given(buf=_TEXT, markers=_MARKERS)
def test_earliest_and_partial_len_match_their_definitions(buf: str, markers: list[str]) -> None:
    found = earliest(buf, markers)
    expected = _earliest_by_definition(buf, markers)
    assert (found is None) == (expected is None)
    if found is not None and expected is not None:
        assert found[0] == expected[0] and len(found[1]) == len(expected[1])  # same place, the longest marker
    assert partial_len(buf, markers) == _partial_by_definition(buf, markers)


@settings(max_examples=500, deadline=None)
@given(buf=_TEXT, markers=_MARKERS)
def test_split_at_marker_loses_nothing(buf: str, markers: list[str]) -> None:
    before, marker, after = split_at_marker(buf, markers)
    assert before + marker + after == buf
    if marker:
        assert (len(before), marker) == earliest(buf, markers)
    else:
        assert earliest(buf, markers) is None
        assert len(after) == partial_len(buf, markers)  # only a possible partial marker is held back


@settings(max_examples=500, deadline=None)
@given(pieces=st.lists(_TEXT, max_size=6), marker=st.text(alphabet="<|>ab", min_size=1, max_size=4))
def test_find_from_over_a_growing_buffer_finds_what_find_does(pieces: list[str], marker: str) -> None:
    buf, start = "", 0
    for piece in pieces:
        buf += piece
        i, start = find_from(buf, marker, start)
        assert i == buf.find(marker)
        if i >= 0:
            break
