"""Stop sequences: the matched text never reaches the output, even when it spans tokens.

Text that could be the start of a stop string is held back until it either completes a stop string (then it is
dropped and generation ends) or cannot any more (then it is released).
"""

from __future__ import annotations

from herd.parsing.markers import earliest, partial_len


class StopMatcher:
    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False
        self.matched = ""  # the stop string that ended the text (Anthropic's stop_sequence names it)

    def feed(self, text: str) -> str:
        """Returns the text that is safe to emit. After a match, `stopped` is True and later text is ignored."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        found = earliest(buf, self.stops)
        if found is not None:
            self.stopped = True
            self.matched = found[1]
            self._held = ""
            return buf[: found[0]]
        keep = partial_len(buf, self.stops)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def finish(self) -> str:
        """At the end of generation, held text that never became a stop string is real output."""
        held, self._held = self._held, ""
        return "" if self.stopped else held
