"""The in-process test layer (design.md): the real ASGI app over a fake runner and a fake tokenizer.

`FakeRunner` replays a script a test sets per request: text events, a done event, a stall (an asyncio.Event to
wait on), or an exception, at any point. Its load can stall or fail too. Every cancel the server sends (the
`CancelCmd` of a real runner: a generation left before its DoneEvent) is recorded.

Requests go through `Client`, a small ASGI driver: unlike httpx's ASGITransport it can deliver `http.disconnect`
at any moment, which is how a client that leaves looks to the app. The model store is a temporary one with the
default model registered (its GGUF header is read; no native code runs, no model is loaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from herd.app import create_app
from herd.config import Settings
from herd.engine import tokenizer as tokenizer_module
from herd.engine.protocol import DoneEvent, EmbedEvent, LoadSpec, SamplingParams, TextEvent
from herd.errors import RunnerFailed

MODEL = "smollm2:135m"


@dataclass
class Stall:
    """Wait here until the test sets the event (a long prefill, a slow step)."""

    event: asyncio.Event = field(default_factory=asyncio.Event)


Step = TextEvent | DoneEvent | Stall | Exception | str  # a str is shorthand for a TextEvent


class Fakes:
    """Everything the fakes did, and the knobs a test turns."""

    def __init__(self) -> None:
        self.runners: list[FakeRunner] = []
        self.script: Callable[[int], list[Step]] = lambda req: ["Hello", " world", DoneEvent(req, "stop")]
        self.load_stall: Stall | None = None
        self.load_error: Exception | None = None
        self.cancelled: list[int] = []
        self.generating: set[int] = set()  # requests inside a runner right now
        self.started: list[int] = []

    def factory(self, spec: LoadSpec) -> FakeRunner:
        runner = FakeRunner(spec, self)
        self.runners.append(runner)
        return runner


_ids = iter(range(1, 1 << 30))


class FakeRunner:
    def __init__(self, spec: LoadSpec, fakes: Fakes) -> None:
        self.spec = spec
        self.fakes = fakes
        self.memory_bytes = 1234
        self.stopped = False
        self.pid = None
        self.loaded = False

    @property
    def alive(self) -> bool:
        return not self.stopped

    @property
    def in_flight(self) -> int:
        return len(self.fakes.generating)

    async def start(self, timeout: float) -> None:
        if self.fakes.load_stall is not None:
            await self.fakes.load_stall.event.wait()
        if self.fakes.load_error is not None:
            raise self.fakes.load_error
        self.loaded = True

    async def generate(self, tokens: tuple[int, ...], sampling: SamplingParams, logprobs: bool, top_logprobs: int,
                       grammar: str | None, images: tuple[object, ...] = ()) -> AsyncIterator[TextEvent | DoneEvent]:
        req = next(_ids)
        fakes = self.fakes
        fakes.started.append(req)
        fakes.generating.add(req)
        finished = False
        try:
            for step in fakes.script(req):
                if isinstance(step, Stall):
                    await step.event.wait()
                    continue
                if isinstance(step, Exception):
                    finished = True
                    raise step
                ev = TextEvent(req, step) if isinstance(step, str) else step
                if isinstance(ev, DoneEvent):
                    ev = DoneEvent(req, ev.reason, prompt_tokens=len(tokens), eval_count=2, error=ev.error)
                    finished = True
                yield ev
                if finished:
                    return
                await asyncio.sleep(0)  # one "decode step"
        finally:
            fakes.generating.discard(req)
            if not finished:
                fakes.cancelled.append(req)  # what ProcessRunner sends as CancelCmd

    async def embed(self, inputs: tuple[tuple[int, ...], ...]) -> EmbedEvent:
        return EmbedEvent(0, tuple((1.0, 0.0) for _ in inputs), sum(len(t) for t in inputs))

    async def stop(self) -> None:
        self.stopped = True


class FakeTokenizer:
    add_bos = False
    bos = 1
    n_vocab = 1000

    def encode(self, text: str, add_special: bool = True) -> tuple[int, ...]:
        return tuple(ord(c) % 1000 for c in text)

    def special_tokens(self, texts: tuple[str, ...]) -> frozenset[str]:
        return frozenset()

    def decode(self, tokens: tuple[int, ...] | list[int]) -> str:
        return "".join(chr(t) for t in tokens)


class FakeTokenizers:
    def get(self, model_path: str) -> FakeTokenizer:
        return FakeTokenizer()

    def close(self) -> None:
        pass


@dataclass
class Call:
    """One request in flight through the ASGI app."""

    task: asyncio.Task[None]
    sent: list[dict[str, Any]]
    disconnected: asyncio.Event
    started: asyncio.Event

    def disconnect(self) -> None:
        self.disconnected.set()

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    async def done(self, timeout: float = 5) -> None:
        await asyncio.wait_for(self.task, timeout)


class Client:
    def __init__(self, app: Any) -> None:
        self.app = app

    def start(self, method: str, path: str, body: object = None) -> Call:
        raw = json.dumps(body).encode() if body is not None else b""
        sent: list[dict[str, Any]] = []
        disconnected = asyncio.Event()
        started = asyncio.Event()
        body_given = False
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1:11434"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(raw)).encode())],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 11434),
        }

        async def receive() -> dict[str, Any]:
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if disconnected.is_set():
                return  # the client is gone: what uvicorn does with writes after a disconnect
            sent.append(message)
            if message["type"] == "http.response.start":
                started.set()

        task = asyncio.get_running_loop().create_task(self.app(scope, receive, send))
        return Call(task, sent, disconnected, started)

    async def request(self, method: str, path: str, body: object = None, timeout: float = 5) -> Call:
        call = self.start(method, path, body)
        await call.done(timeout)
        return call


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll (bounded) until predicate() holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.005)
    return predicate()


@dataclass
class Harness:
    app: Any
    client: Client
    fakes: Fakes

    @property
    def scheduler(self) -> Any:
        return self.app.state.services.scheduler

    def busy_slots(self) -> int:
        return sum(e.refcount for e in self.scheduler.loaded.values())

    def queued(self) -> int:
        return sum(len(q.waiters) for q in self.scheduler._queues.values())


@pytest.fixture()
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture()
def make_harness(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setattr(tokenizer_module, "default", FakeTokenizers())

    @contextlib.asynccontextmanager
    async def make(**settings: Any) -> AsyncIterator[Harness]:
        fakes = Fakes()
        opts: dict[str, Any] = {"models_dir": models_dir, "num_parallel": 2, "num_thread": 1,
                                "constrain_tools": False, **settings}
        app = create_app(Settings(**opts), runner_factory=fakes.factory)
        async with app.router.lifespan_context(app):
            yield Harness(app, Client(app), fakes)

    return make


def chat_body(stream: bool, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}


__all__ = ["MODEL", "Call", "Client", "Harness", "RunnerFailed", "Stall", "chat_body", "until"]
