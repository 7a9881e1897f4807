"""StopMatcher: a stop string never reaches the output, at any split of the text into pieces, and the matcher
names the one that ended the text (Anthropic's `stop_sequence`); held text that never became a stop is released."""

from __future__ import annotations

import pytest

from herd.parsing.stop import StopMatcher

TEXT = "The sky is blue. END of story"


def feed_split(stops: tuple[str, ...], text: str, cuts: tuple[int, ...]) -> tuple[str, StopMatcher]:
    m = StopMatcher(stops)
    out, last = [], 0
    for c in (*cuts, len(text)):
        out.append(m.feed(text[last:c]))
        last = c
    out.append(m.finish())
    return "".join(out), m


@pytest.mark.parametrize("cut", range(len(TEXT) + 1))
def test_every_split_gives_the_same_cut_and_names_the_stop(cut: int) -> None:
    out, m = feed_split(("END", "story"), TEXT, (cut,))
    assert out == "The sky is blue. " and m.stopped and m.matched == "END"


@pytest.mark.parametrize("cut", range(len(TEXT) + 1))
def test_a_partial_stop_that_never_completes_is_released(cut: int) -> None:
    out, m = feed_split(("END!",), TEXT, (cut,))
    assert out == TEXT and not m.stopped and m.matched == ""


def test_the_earliest_stop_wins_and_the_longest_at_one_place() -> None:
    _, m = feed_split(("story", "blue", "blue."), TEXT, ())
    assert m.matched == "blue."
