"""Finding markers in streamed text: the earliest of several, and the longest held-back partial one at the end.

A parser that sees output a chunk at a time must not release text that may be the start of a marker whose rest is
still to come. These are the searches every family's parser makes for that: `earliest` and `partial_len`, the
split that combines them (`split_at_marker`), and `find_from` for an end marker after a body that keeps growing.
"""

from __future__ import annotations

from collections.abc import Sequence


def earliest(buf: str, markers: Sequence[str]) -> tuple[int, str] | None:
    """The first occurrence of any marker in `buf` (the longest one where two start at the same place)."""
    best: tuple[int, str] | None = None
    for marker in markers:
        i = buf.find(marker)
        if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(marker) > len(best[1]))):
            best = (i, marker)
    return best


def partial_len(buf: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of one of the markers (0 if none)."""
    longest = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(buf)), longest, -1):
            if buf.endswith(marker[:n]):
                longest = n
                break
    return longest


def split_at_marker(buf: str, markers: Sequence[str]) -> tuple[str, str, str]:
    """`buf` cut at its earliest marker: (text before it, the marker, text after it).

    With no marker in `buf`, the marker is "" and the cut is where a possible partial marker begins: (the text that
    can be released now, "", the tail to hold back until more text arrives).
    """
    found = earliest(buf, markers)
    if found is None:
        cut = len(buf) - partial_len(buf, markers)
        return buf[:cut], "", buf[cut:]
    i, marker = found
    return buf[:i], marker, buf[i + len(marker) :]


def find_from(buf: str, marker: str, start: int) -> tuple[int, int]:
    """`marker` in a growing `buf`, searched from `start`: (its index or -1, where the next search may start).

    While it is not there, the next search starts where a marker could still begin, so a long body accumulating
    before its end marker is not scanned again from its start on every chunk.
    """
    i = buf.find(marker, start)
    if i < 0:
        return -1, max(0, len(buf) - len(marker) + 1)
    return i, start
