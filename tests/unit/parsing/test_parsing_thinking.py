"""ThinkingParser: golden cases (spec 2.8), each also checked at every chunk boundary."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parsing_support import (
    Case,
    check_case_all_chunkings,
    check_chunking_invariant,
    check_random_chunking,
    feed_deltas,
    fragment_texts,
)

from herd.parsing.base import Delta
from herd.parsing.thinking import ThinkingParser, ThinkingState


def think(prefilled: bool = False) -> ThinkingParser:
    return ThinkingParser(prefilled=prefilled)


THINKING_CASES = [
    Case("basic", think, "<think>Let me think.</think>The answer is 4.", "The answer is 4.", "Let me think."),
    Case(
        "whitespace-dropped",
        think,
        "  \n<think>\n\n  step one\nstep two  </think>\n\n  Answer\n",
        content="Answer\n",
        thinking="step one\nstep two  ",
    ),
    Case(
        "no-tag", think, "Hello <think>not thinking</think> world", "Hello <think>not thinking</think> world"
    ),
    Case("no-tag-leading-whitespace-kept", think, "\n  Hello", "\n  Hello"),
    Case("only-whitespace", think, " \n\t ", " \n\t "),
    Case("empty", think, ""),
    Case("almost-open-tag", think, "<thinking>hi</thinking>", "<thinking>hi</thinking>"),
    Case("partial-open-tag-at-end", think, "  <thi", "  <thi"),
    Case("empty-thinking", think, "<think></think>Hi", "Hi"),
    Case("open-tag-only", think, "<think>\n\n"),
    Case("unterminated-thinking", think, "<think>abc </thi", thinking="abc </thi"),
    Case("close-tag-only-whitespace-after", think, "<think>abc</think>\n\n \n", thinking="abc"),
    Case("second-close-tag-is-content", think, "<think>a</think>b</think>c", "b</think>c", "a"),
    Case(
        "nested-open-is-thinking", think, "<think>I wrote <think> once</think>x", "x", "I wrote <think> once"
    ),
    Case(
        "close-tag-prefixes-inside-thinking",
        think,
        "<think>a < b </ c </think</think>end",
        content="end",
        thinking="a < b </ c </think",
    ),
    Case("prefilled", lambda: think(True), "reasoning here</think>\nDone.", "Done.", "reasoning here"),
    Case("prefilled-leading-whitespace", lambda: think(True), "\n\n reason</think>  ok", "ok", "reason"),
    Case("prefilled-never-closed", lambda: think(True), "still thinking", thinking="still thinking"),
    # Ollama starts a pre-opened prompt inside thinking, so a repeated open tag is reasoning text.
    Case("prefilled-repeated-open-tag", lambda: think(True), "<think>x</think>y", "y", "<think>x"),
    Case(
        "unicode",
        think,
        "<think>考える… 🤔 naïve</think>\n答えは 42 です 🎉",
        content="答えは 42 です 🎉",
        thinking="考える… 🤔 naïve",
    ),
    Case(
        "custom-unicode-tags",
        lambda: ThinkingParser("◁think▷", "◁/think▷"),
        "◁think▷思考中…◁/think▷答案是 42",
        content="答案是 42",
        thinking="思考中…",
    ),
    Case(
        "custom-tags",
        lambda: ThinkingParser("<|begin_of_thought|>", "<|end_of_thought|>"),
        "<|begin_of_thought|> plan <|end_of_thought|> result <|end_of_thought|>",
        content="result <|end_of_thought|>",
        thinking="plan ",
    ),
]


@pytest.mark.parametrize("case", THINKING_CASES, ids=lambda c: c.id)
def test_golden_at_every_chunk_boundary(case: Case) -> None:
    check_case_all_chunkings(case)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_chunkings_agree(data: st.DataObject) -> None:
    check_random_chunking(data, THINKING_CASES)


# Text built from the pieces that matter to the state machine, to find orderings no golden case thought of.
_FRAGMENTS = ["<think>", "</think>", "<th", "</th", "ink>", "<", "/", " ", "\n", "a", "é", "🤔", "think"]


@settings(max_examples=300, deadline=None)
@given(
    text=fragment_texts(_FRAGMENTS),
    cuts=st.lists(st.integers(0, 200)),
    prefilled=st.booleans(),
)
def test_random_text_is_chunking_invariant(text: str, cuts: list[int], prefilled: bool) -> None:
    content, thinking, _ = check_chunking_invariant(Case("random", lambda: think(prefilled), text), cuts)
    # Nothing is lost except tags and the whitespace the spec drops.
    assert len(content) + len(thinking) <= len(text)


def state(p: ThinkingParser) -> ThinkingState:
    return p.state  # read through a call so mypy does not narrow the attribute between feeds


def test_partial_open_tag_is_held_until_resolved() -> None:
    p = ThinkingParser()
    assert p.feed("  <th") == Delta()
    assert state(p) is ThinkingState.LOOKING_FOR_OPENING
    assert p.feed("ink>\n") == Delta()
    assert state(p) is ThinkingState.THINKING_STARTED_EATING_WHITESPACE
    assert p.feed("hmm </thi") == Delta(thinking="hmm ")
    assert p.feed("nk>") == Delta()
    assert state(p) is ThinkingState.THINKING_DONE_EATING_WHITESPACE
    assert p.feed(" \n") == Delta()
    assert p.feed(" Hi") == Delta(content="Hi")
    assert state(p) is ThinkingState.THINKING_DONE
    assert p.finish() == Delta()


def test_non_tag_is_released_as_soon_as_it_cannot_be_the_tag() -> None:
    p = ThinkingParser()
    assert p.feed("<th") == Delta()
    assert p.feed("e") == Delta(content="<the")
    assert p.feed(" end") == Delta(content=" end")


def test_thinking_streams_before_the_close_tag() -> None:
    p = ThinkingParser()
    deltas = feed_deltas(p, ["<think>", "one ", "two", "</think>", "three"])
    assert [d.thinking for d in deltas] == ["", "one ", "two", "", "", ""]
    assert [d.content for d in deltas] == ["", "", "", "", "three", ""]


def test_thinking_never_reaches_content() -> None:
    text = "<think>secret plan</think>public answer"
    for pieces in (list(text), [text[:9], text[9:20], text[20:]]):
        for delta in feed_deltas(ThinkingParser(), pieces):
            assert "secret" not in delta.content and "plan" not in delta.content


def test_empty_tags_are_rejected() -> None:
    with pytest.raises(ValueError):
        ThinkingParser(open_tag="")
