"""Harmony parser: splits gpt-oss output into thinking, content and tool calls (spec 2.8, 2.9, 7.5).

gpt-oss writes a sequence of messages, `<|start|>{header}<|message|>{body}<|end|>`. The prompt ends with
`<|start|>assistant`, so the output starts inside the first header, usually `<|channel|>analysis<|message|>`.
The header names a channel and, for a tool call, a recipient (`to=functions.NAME`, before or after the channel):

- `analysis` without a recipient is reasoning: `thinking` (dropped when thinking is off; never content);
- `final`, and `commentary` without a recipient (a "preamble" the user may see), are `content`;
- any message with a recipient is a tool call; its body (JSON arguments) is collected until `<|call|>`.

Behaviour follows Ollama's `harmony/harmonyparser.go` where it is defined, with these differences, each for a
reason given where it is implemented: output with no Harmony markup is content (Ollama drops it); a call that does
not parse or names a tool that was not offered is content with a warning (Ollama fails the request); a message may
also end at `<|call|>`, `<|return|>`, or at a new `<|start|>` or `<|channel|>` (a model that forgot `<|end|>`).

The engine stops on `<|call|>` and `<|return|>` (end-of-generation tokens) and may not pass them on, so what is
pending at `finish` counts as if the message had ended there: a complete call body is a call, a body cut off
mid-JSON (num_predict ran out) does not parse and becomes content.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Callable, Sequence
from enum import Enum, auto

from herd.parsing.base import Delta
from herd.parsing.machine import CallEmitter, Output, StepParser
from herd.parsing.markers import earliest, split_at_marker
from herd.parsing.toolcalls import new_call_id
from herd.types import Think, ToolDef

log = logging.getLogger(__name__)

START = "<|start|>"
END = "<|end|>"
MESSAGE = "<|message|>"
CHANNEL = "<|channel|>"
CONSTRAIN = "<|constrain|>"
CALL = "<|call|>"
RETURN = "<|return|>"

# A message body ends at one of these. `<|start|>` and `<|channel|>` also begin the next header, for models that
# leave out `<|end|>` (and, for `<|channel|>`, the `<|start|>assistant` after it).
_BODY_ENDS = (END, CALL, RETURN, START, CHANNEL)
# Between messages a header begins at these; stray end markers there are dropped.
_GAP_MARKERS = (START, CHANNEL, END, CALL, RETURN)
# A header is a role, a channel, a recipient and a content type: a few dozen characters. One that runs longer, or
# meets a marker that cannot be inside a header, is not a header, and its text is given back as content.
MAX_HEADER = 256
_NOT_IN_HEADER = (START, END, CALL, RETURN)
# Recipients that address nobody in particular: such a message is not a call.
_NO_RECIPIENT = ("", "all", "assistant", "user")

# gpt-oss's built-in tools (harmony docs, "Built-in tools"). Their recipients are used as they are, not under
# `functions.`, and their names are not rewritten into identifiers.
BUILTIN_TOOL_NAMES = ("browser.search", "browser.open", "browser.find", "python")


def harmony_reasoning_effort(think: Think | None) -> str | None:
    """The `Reasoning:` level of gpt-oss's system message for herd's `think`, as Ollama's gpt-oss template sets it.

    Not given, `true` or an empty level: "medium" (the model's documented default). "low", "medium", "high" as
    given; "max" becomes "high" (Harmony knows only three levels; Ollama's routes.go maps it the same way).
    `false`: None, meaning no `Reasoning:` line at all. gpt-oss cannot stop reasoning; Ollama's template leaves the
    line out for `think:false` rather than refusing or picking "low", and herd does the same.
    """
    if think is None:
        return "medium"
    if not think.enabled:
        return None
    if think.level == "max":
        return "high"
    if think.level in ("low", "medium", "high"):
        return think.level
    return "medium"


def _identifier(name: str) -> str:
    """A tool name as a TypeScript identifier: space, "-" and "." become "_", other characters that are not
    letters, digits, "_" or "$" go; an empty result is "unnamed"; a leading digit gets a "_" in front."""
    out = []
    for ch in name:
        if ch in " -.":
            out.append("_")
        elif ch in "_$" or ch.isalpha() or unicodedata.category(ch) == "Nd":
            out.append(ch)
    ident = "".join(out) or "unnamed"
    return "_" + ident if ident[0].isdigit() else ident


def harmony_function_names(names: Sequence[str]) -> dict[str, str]:
    """Offered tool name -> the name gpt-oss sees in `namespace functions`, as Ollama's FunctionNameMap makes them.

    A name that is not a valid identifier ("get-weather") would break the TypeScript declaration, so it is
    rewritten; a clash gets "_2", "_3", ... in order of the tools. Built-in tool names stay as they are. The
    renderer and the parser both call this with the same tools, so the parser can map a call back.
    """
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        if name in out:
            continue
        if name in BUILTIN_TOOL_NAMES:
            out[name] = name
            taken.add(name)
            continue
        base = _identifier(name)
        candidate, n = base, 2
        while candidate in taken:
            candidate = f"{base}_{n}"
            n += 1
        out[name] = candidate
        taken.add(candidate)
    return out


def parse_header(raw: str) -> tuple[str, str, str]:
    """(role, channel, recipient) of a header's text, e.g. `<|channel|>commentary to=functions.f <|constrain|>json`.

    The role is "" when the header is the prompt's `<|start|>assistant` continued (it starts at the channel or the
    recipient). The recipient may come before or after the channel; `<|constrain|>` may have no space before it.
    """
    text = raw.replace(CONSTRAIN, " " + CONSTRAIN + " ")
    channel = ""
    i = text.find(CHANNEL)
    if i >= 0:
        after = text[i + len(CHANNEL) :]
        name = after.split(None, 1)[0] if after.strip() else ""
        if after[:1].isspace():
            name = ""  # `<|channel|> final`: not a channel name written the way Harmony writes one
        channel = name
        text = text[:i] + " " + after[len(name) :]
    role = ""
    recipient = ""
    for n, token in enumerate(text.split()):
        if token.startswith("to="):
            if not recipient:
                recipient = token[3:]
        elif n == 0 and token != CONSTRAIN:
            role = token
        # anything else is the content type ("json", "<|constrain|>", "code"): it changes nothing here
    return role, channel, recipient


class HarmonyState(Enum):
    # Inside a header, up to `<|message|>`. At the start of the output this is the header of the prompt's
    # `<|start|>assistant`; until its first visible text shows it is a header, it may yet be plain text.
    HEADER = auto()
    # Inside a message body; the header decided where its text goes. Text streams out except a possible partial
    # marker at the chunk end; a call's body is kept until the message ends.
    BODY = auto()
    # After `<|end|>` or `<|call|>`, waiting for the next `<|start|>`. Whitespace here is dropped; other text (a
    # model that stopped using the format) is content.
    BETWEEN = auto()


class _Route(Enum):
    THINKING = auto()
    CONTENT = auto()
    DROP = auto()  # analysis while thinking is off
    CALL = auto()


class HarmonyParser(StepParser, CallEmitter):
    """Incremental parser for one gpt-oss assistant turn; the result does not depend on how output is chunked.

    `thinking=False` (the request said `think:false`) drops analysis text instead of returning it as thinking; it
    never becomes content. Ollama returns it as thinking whatever `think` says (gpt-oss reasons anyway), so a
    caller that wants exactly Ollama's output passes True.

    `prefilled=True` when the prompt does not end with `<|start|>assistant` but inside an open message, as when a
    conversation that ends with an assistant message is continued: the output is then that message's body, in
    `prefill_channel` ("analysis" for a pre-opened reasoning message, "final" for a continued answer).
    """

    def __init__(
        self,
        tools: Sequence[ToolDef],
        thinking: bool = True,
        prefilled: bool = False,
        *,
        prefill_channel: str = "analysis",
        new_id: Callable[[], str] = new_call_id,
    ) -> None:
        super().__init__(tools, new_id)
        self.thinking = thinking
        # The identifier the model was shown -> the offered name (see harmony_function_names).
        self._from_harmony = {h: n for n, h in harmony_function_names([t.name for t in tools if t.name]).items()}
        self._buf = ""
        self._route = _Route.CONTENT
        self._recipient = ""
        self._call: list[str] = []  # the body of the call being read
        self._gap_ws = ""  # BETWEEN: whitespace held until it is known whether other text follows
        self._stray = False  # BETWEEN: text that is not whitespace was seen since the last message
        # HEADER: the prompt's own header, whose first visible text has not yet shown it to be one.
        self._undecided = not prefilled
        if prefilled:
            self.state = HarmonyState.BODY
            self._open("", prefill_channel, "")
        else:
            self.state = HarmonyState.HEADER

    @property
    def calls_parsed(self) -> int:
        return self._n

    def finish(self) -> Delta:
        out = Output()
        buf, self._buf = self._buf, ""
        if self.state is HarmonyState.HEADER:
            if self._undecided:
                out.content.append(buf)  # whitespace, "to", "<": plain text that never became a header
            elif buf:
                log.warning("harmony: output ended inside a message header: %r", buf[:MAX_HEADER])
        elif self.state is HarmonyState.BODY:
            self._route_text(buf, out)
            self._close(out)
        elif self._stray or buf.strip():
            out.content.append(self._gap_ws + buf)
        self._gap_ws = ""
        self.state = HarmonyState.BETWEEN
        return out.delta()

    # ---- states ------------------------------------------------------------------------------------------

    def _step(self, out: Output) -> bool:
        """Consume what the buffer allows in the current state. True when another step may consume more."""
        if self.state is HarmonyState.HEADER:
            return self._header(out)
        if self.state is HarmonyState.BODY:
            return self._body(out)
        return self._between(out)

    def _header(self, out: Output) -> bool:
        buf = self._buf
        if self._undecided:
            visible = buf.lstrip()
            if not visible:
                return False
            if visible.startswith(("<|", "to=")):
                self._undecided = False
            elif "<|".startswith(visible) or "to=".startswith(visible):
                return False  # "<" or "to": wait for the next character
            else:
                # No Harmony header: a model that ignores the format. Its output is the answer, as it is.
                self._undecided = False
                self.state = HarmonyState.BODY
                self._open("", "final", "")
                return True
        stripped = buf.lstrip()
        if stripped.startswith(START):
            # `<|start|>assistant` written again at the top of a header: the header starts over after it.
            self._buf = stripped[len(START) :]
            return True
        end = buf.find(MESSAGE)
        header = buf if end < 0 else buf[:end]
        bad = earliest(header, _NOT_IN_HEADER)
        if bad is not None or (end < 0 and len(header) > MAX_HEADER) or end > MAX_HEADER:
            # Not a header after all. Its text is shown as the answer; a marker that stopped it is read as the
            # end of that (implicit) message.
            cut = bad[0] if bad is not None else len(header)
            log.warning("harmony: not a message header: %r", header[: min(cut, MAX_HEADER)])
            out.content.append(header[:cut])
            self._buf = buf[cut:]
            self.state = HarmonyState.BODY
            self._open("", "final", "")
            return True
        if end < 0:
            return False
        _, channel, recipient = parse_header(header)
        self._buf = buf[end + len(MESSAGE) :]
        self.state = HarmonyState.BODY
        self._open(header, channel, recipient)
        return True

    def _body(self, out: Output) -> bool:
        before, marker, rest = split_at_marker(self._buf, _BODY_ENDS)
        self._route_text(before, out)
        if not marker:
            self._buf = rest  # a possible partial marker
            return False
        self._close(out)
        if marker == START:
            self._buf = rest
            self.state = HarmonyState.HEADER
        elif marker == CHANNEL:
            self._buf = marker + rest  # the header begins at the channel; the role is implied
            self.state = HarmonyState.HEADER
        else:
            self._buf = rest
            self.state = HarmonyState.BETWEEN
        return True

    def _between(self, out: Output) -> bool:
        before, marker, rest = split_at_marker(self._buf, _GAP_MARKERS)
        self._gap(before, out)
        if not marker:
            self._buf = rest  # a possible partial marker
            return False
        self._gap_ws = ""  # whitespace just before a marker is the space between messages: dropped
        if marker == START:
            self._buf = rest
        elif marker == CHANNEL:
            self._buf = marker + rest
        else:
            self._buf = rest  # a stray end marker: nothing to end
            return True
        self._stray = False
        self.state = HarmonyState.HEADER
        return True

    def _gap(self, text: str, out: Output) -> None:
        if not text:
            return
        if self._stray:
            out.content.append(text)
        elif text.strip():
            self._stray = True
            out.content.append(self._gap_ws + text)
            self._gap_ws = ""
        else:
            self._gap_ws += text

    # ---- messages ----------------------------------------------------------------------------------------

    def _open(self, header: str, channel: str, recipient: str) -> None:
        if recipient not in _NO_RECIPIENT:
            # A recipient makes a call whatever the channel: function calls go to commentary, built-in tools to
            # analysis. Ollama needs one of those two channels; the recipient alone is unambiguous.
            self._route = _Route.CALL
            self._recipient = recipient
            self._call = []
        elif channel == "analysis":
            self._route = _Route.THINKING if self.thinking else _Route.DROP
        else:
            # final, commentary (a preamble meant for the user, as in Ollama), or a channel Harmony does not
            # define, which Ollama also shows as content.
            self._route = _Route.CONTENT
            if channel not in ("final", "commentary"):
                log.warning("harmony: unknown channel in header %r; text is content", header)

    def _route_text(self, text: str, out: Output) -> None:
        if not text:
            return
        route = self._route
        if route is _Route.CALL:
            self._call.append(text)
        elif route is _Route.THINKING:
            out.thinking.append(text)
        elif route is _Route.CONTENT:
            out.content.append(text)

    def _close(self, out: Output) -> None:
        """The current message ended: a call is parsed now."""
        if self._route is not _Route.CALL:
            self._route = _Route.CONTENT
            return
        body = "".join(self._call)
        self._call = []
        self._route = _Route.CONTENT
        name = self._tool_name(self._recipient)
        if name is None:
            log.warning("harmony: call to a tool that was not offered (%r); its body is content", self._recipient)
            out.content.append(body)
            return
        try:
            args = json.loads(body) if body.strip() else {}  # a call with an empty body takes no arguments
        except (ValueError, RecursionError):
            args = None
        if not isinstance(args, dict):
            log.warning("harmony: arguments of a call to %r are not a JSON object; its body is content", name)
            out.content.append(body)
            return
        self._add_calls([(name, args)], out)

    def _tool_name(self, recipient: str) -> str | None:
        """The offered tool a recipient names, or None. `functions.NAME` is a function tool; a recipient without
        the namespace (a built-in such as `browser.search`, or a model that left `functions.` out) is taken as
        it is. Names the renderer rewrote into identifiers are mapped back."""
        candidates = [recipient]
        if recipient.startswith("functions."):
            candidates.insert(0, recipient[len("functions.") :])
        # The names the model was shown come first: with tools "get-weather" and "get_weather" it saw
        # "get_weather" and "get_weather_2". An offered name is accepted too, for a model that writes it as given.
        for name in candidates:
            if name in self._from_harmony:
                return self._from_harmony[name]
        for name in candidates:
            if name in self._names:
                return name
        return None
