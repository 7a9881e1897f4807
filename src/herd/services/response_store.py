"""Recent /v1/responses objects, kept in memory for `previous_response_id` and `GET /v1/responses/{id}`.

OpenAI keeps responses on its side (30 days) so a follow-up can name the previous one instead of resending the
conversation. herd keeps only a bounded window of them: at most `Settings.responses_max` entries
(HERD_RESPONSES_MAX), each for `Settings.responses_ttl_s` seconds (HERD_RESPONSES_TTL), the oldest evicted first.
A response past either bound is gone: a follow-up naming it is a 404, and the client sends the conversation inline
(as Codex does, with `store: false`).

Each entry holds the conversation as domain `Message`s (the earlier turns, this request's input items and the
assistant's output), so a follow-up is rendered as the whole conversation with one look-up, and the response
object as it was sent. Entries are immutable and each method runs without awaiting, so on one event loop no two
requests can interleave inside it; the lock makes it safe from other threads too.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from herd.errors import ResponseNotFound
from herd.types import Message


@dataclass(frozen=True)
class StoredResponse:
    conversation: tuple[Message, ...]  # without the request's instructions: OpenAI does not carry them over
    document: dict[str, object]  # the response object as it was sent (read only)


class ResponseStore:
    """At most `max_entries` responses, each kept `ttl_s` seconds from when it was stored; oldest out first.
    `clock` is injectable (monotonic seconds) so the age bound can be tested without waiting."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max(0, max_entries)
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, StoredResponse]] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._entries)

    def put(self, response_id: str, entry: StoredResponse) -> None:
        with self._lock:
            now = self._clock()
            self._expire(now)
            if self.max_entries == 0 or self.ttl_s <= 0:
                return  # keeping nothing is a valid configuration: every follow-up is then a miss
            self._entries.pop(response_id, None)
            self._entries[response_id] = (now, entry)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse:
        with self._lock:
            self._expire(self._clock())
            found = self._entries.get(response_id)
        if found is None:
            raise ResponseNotFound(response_id)
        return found[1]

    def _expire(self, now: float) -> None:
        # Insertion order is age order (a re-stored id moves to the end), so the expired ones are a prefix.
        while self._entries:
            stored_at, _ = next(iter(self._entries.values()))
            if now - stored_at < self.ttl_s:
                break
            self._entries.popitem(last=False)
