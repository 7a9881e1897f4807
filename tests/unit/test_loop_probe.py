"""The opt-in event-loop probe (HERD_LOOP_PROBE): it sees a blocking call, and each read opens a new window."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi import FastAPI

from herd.api import loop_probe
from herd.api.loop_probe import LoopProbe


def test_a_blocking_call_shows_as_lag_and_a_read_resets_the_window() -> None:
    async def scenario() -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
        probe = LoopProbe()
        probe.start()
        await asyncio.sleep(0.05)
        probe.read()
        time.sleep(0.15)  # the loop is blocked: the probe wakes about 140 ms late
        await asyncio.sleep(0.05)
        blocked = probe.read()
        await asyncio.sleep(0.1)
        quiet = probe.read()
        await probe.stop()
        return blocked, quiet, probe.read()

    blocked, quiet, stopped = asyncio.run(scenario())
    assert blocked["running"] is True and blocked["samples"] >= 1  # type: ignore[operator]
    assert blocked["worst_lag_ms"] >= 100  # type: ignore[operator]
    assert quiet["worst_lag_ms"] < blocked["worst_lag_ms"]  # type: ignore[operator]
    assert stopped["running"] is False


def test_install_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loop_probe.ENV, raising=False)
    app = FastAPI()
    loop_probe.install(app)
    assert not any(getattr(r, "path", None) == loop_probe.PATH for r in app.routes)


def test_the_endpoint_reports_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loop_probe.ENV, "1")
    app = FastAPI()
    loop_probe.install(app)

    async def scenario() -> list[dict[str, object]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            first = (await c.get(loop_probe.PATH)).json()
            await asyncio.sleep(0.1)
            second = (await c.get(loop_probe.PATH)).json()
        await app.state.loop_probe.stop()
        return [first, second]

    first, second = asyncio.run(scenario())
    assert first["running"] is True and second["samples"] >= 3  # type: ignore[operator]
    assert set(second) == {"running", "interval_ms", "window_s", "samples", "worst_lag_ms", "mean_lag_ms"}
    assert 0.05 < second["window_s"] < 5  # type: ignore[operator]
