"""Think-tag parser: splits `<think>…</think>` reasoning out of the visible content (spec 2.8).

A port of the behaviour of Ollama's `thinking/parser.go`: reasoning counts only when it is the first thing the model
writes, so a model that mentions `<think>` in the middle of an answer is not misread.
"""

from __future__ import annotations

from enum import Enum, auto

from herd.parsing.base import Delta
from herd.parsing.markers import partial_len

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class ThinkingState(Enum):
    """One member per state of Ollama's `thinkingState` (thinking/parser.go), in the same order."""

    # thinkingState_LookingForOpening: only whitespace or a prefix of the open tag seen so far, so we cannot tell
    # yet whether the output is reasoning; nothing is released until we can.
    LOOKING_FOR_OPENING = auto()
    # thinkingState_ThinkingStartedEatingWhitespace: the open tag was seen (or pre-opened by the template);
    # whitespace that follows it is dropped, as Ollama does, so thinking does not start with "\n".
    THINKING_STARTED_EATING_WHITESPACE = auto()
    # thinkingState_Thinking: everything is reasoning until the close tag; a possible partial close tag at the
    # end of a chunk is held back so it never leaks into the thinking text.
    THINKING = auto()
    # thinkingState_ThinkingDoneEatingWhitespace: the close tag was seen; the whitespace models put between
    # reasoning and answer is dropped.
    THINKING_DONE_EATING_WHITESPACE = auto()
    # thinkingState_ThinkingDone: everything else is content, passed through unchanged.
    THINKING_DONE = auto()


class ThinkingParser:
    """Incremental `<think>` splitter. `prefilled=True` when the rendered prompt already ends with the open tag.

    Thinking text never appears in `content`. The concatenated result does not depend on how the output is chunked.
    """

    def __init__(
        self, open_tag: str = THINK_OPEN, close_tag: str = THINK_CLOSE, prefilled: bool = False
    ) -> None:
        if not open_tag or not close_tag:
            raise ValueError("thinking tags must be non-empty")
        self.open_tag = open_tag
        self.close_tag = close_tag
        # Ollama starts a pre-opened prompt in the whitespace-eating state, so the output is reasoning from the
        # first token and a model that repeats the open tag has it kept as thinking text.
        self.state = (
            ThinkingState.THINKING_STARTED_EATING_WHITESPACE
            if prefilled
            else ThinkingState.LOOKING_FOR_OPENING
        )
        self._buf = ""

    def feed(self, text: str) -> Delta:
        if not text:
            return Delta()
        self._buf += text
        thinking: list[str] = []
        content: list[str] = []
        again = True
        while again:
            again = self._step(thinking, content)
        return Delta(content="".join(content), thinking="".join(thinking))

    def finish(self) -> Delta:
        buf, self._buf = self._buf, ""
        if self.state is ThinkingState.LOOKING_FOR_OPENING:
            # Whitespace or a partial open tag that never completed: it was ordinary output after all.
            self.state = ThinkingState.THINKING_DONE
            return Delta(content=buf)
        if self.state is ThinkingState.THINKING:
            # The model stopped mid-thought; a held-back partial close tag is reasoning text.
            return Delta(thinking=buf)
        if self.state is ThinkingState.THINKING_DONE:
            return Delta(content=buf)
        return Delta()  # the whitespace-eating states only ever hold whitespace that is dropped anyway

    def _step(self, thinking: list[str], content: list[str]) -> bool:
        """Consume what the buffer allows in the current state. Returns True when a transition needs another step."""
        state = self.state
        if state is ThinkingState.LOOKING_FOR_OPENING:
            trimmed = self._buf.lstrip()
            if trimmed.startswith(self.open_tag):
                after = trimmed[len(self.open_tag) :].lstrip()
                self._buf = after
                self.state = (
                    ThinkingState.THINKING if after else ThinkingState.THINKING_STARTED_EATING_WHITESPACE
                )
                return bool(after)
            if self.open_tag.startswith(trimmed):
                return False  # all whitespace, or a prefix of the tag: wait for more
            # Not reasoning: the untrimmed text (leading whitespace included) is content, as in Ollama.
            content.append(self._buf)
            self._buf = ""
            self.state = ThinkingState.THINKING_DONE
            return False

        if state is ThinkingState.THINKING_STARTED_EATING_WHITESPACE:
            trimmed = self._buf.lstrip()
            self._buf = trimmed
            if trimmed:
                self.state = ThinkingState.THINKING
                return True
            return False

        if state is ThinkingState.THINKING:
            idx = self._buf.find(self.close_tag)
            if idx >= 0:
                thinking.append(self._buf[:idx])
                rest = self._buf[idx + len(self.close_tag) :].lstrip()
                self._buf = ""
                if rest:
                    content.append(rest)
                    self.state = ThinkingState.THINKING_DONE
                else:
                    self.state = ThinkingState.THINKING_DONE_EATING_WHITESPACE
                return False
            keep = partial_len(self._buf, (self.close_tag,))
            thinking.append(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep :]
            return False

        if state is ThinkingState.THINKING_DONE_EATING_WHITESPACE:
            trimmed = self._buf.lstrip()
            self._buf = ""
            if trimmed:
                content.append(trimmed)
                self.state = ThinkingState.THINKING_DONE
            return False

        content.append(self._buf)
        self._buf = ""
        return False
