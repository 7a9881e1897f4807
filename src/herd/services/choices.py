"""Several answers to one request (OpenAI's `n`): one turn per choice, all in flight at once, so they share the
runner's batch (continuous batching) instead of running one after another.

Each choice is its own sequence; with a seed, choice i samples with seed + i, so the choices differ from each other
and each is reproducible. The streams are merged in arrival order, tagged with their choice index.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Protocol, TypeVar

from herd.services.chat import ChatChunk, drain

MAX_CHOICES = 16  # a request asks for at most this many answers (each one is a sequence in the runner)


class _WithOptions(Protocol):
    @property
    def options(self) -> dict[str, object]: ...


R = TypeVar("R", bound=_WithOptions)


def choice_requests(request: R, n: int) -> list[R]:
    """The request of each choice: the same one, with choice i's seed offset by i (a ChatTurn or a
    GenerateRequest: both are frozen dataclasses with Ollama options)."""
    seed = request.options.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return [request] * n
    return [replace(request, options={**request.options, "seed": seed + i}) for i in range(n)]  # type: ignore[type-var]


async def merged(streams: list[AsyncIterator[ChatChunk]]) -> AsyncIterator[tuple[int, ChatChunk]]:
    """(choice index, chunk) from all streams as they come. The first failure ends the whole answer (the other
    choices are cancelled); so does the consumer leaving."""
    if len(streams) == 1:
        async for chunk in streams[0]:
            yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, ChatChunk | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[ChatChunk]) -> None:
        try:
            async for chunk in stream:
                await queue.put((i, chunk))
            await queue.put((i, None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put((i, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def drain_all(streams: list[AsyncIterator[ChatChunk]]) -> list[ChatChunk]:
    """stream:false with n choices: each stream drained, concurrently; the first failure cancels the rest."""
    tasks = [asyncio.ensure_future(drain(s)) for s in streams]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()


def start(run: Callable[[R], AsyncIterator[ChatChunk]], request: R, n: int) -> list[AsyncIterator[ChatChunk]]:
    """One stream per choice (nothing runs until each is iterated)."""
    return [run(r) for r in choice_requests(request, n)]
