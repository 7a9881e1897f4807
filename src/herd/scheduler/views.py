"""herd's own runner view (`GET /api/herd/runners`, not an Ollama endpoint).

It answers from the scheduler's own records (every runner it holds, loading ones included, the slots it handed out,
requests queued and in flight), so it is immediate and never leaves out a busy runner. The runner's own counters
(cached tokens per slot, prompt tokens evaluated or reused) are asked for, but waited for only briefly: a runner
answers between two decode steps, which a long prefill can make slow. Whatever answer is newest is shown with its
age in seconds (`counters_age_s`), or none at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from herd.scheduler.scheduler import Scheduler

FRESH_WAIT_S = 0.25


async def runner_view(scheduler: Scheduler, wait_s: float = FRESH_WAIT_S) -> list[dict[str, object]]:
    rows = scheduler.runner_rows()
    asks = []
    for row in rows:
        request = getattr(row.runner, "request_status", None)
        if row.state == "ready" and request is not None:
            with contextlib.suppress(Exception):
                asks.append(request())
    if asks:
        await asyncio.wait(asks, timeout=wait_s)
        for fut in asks:
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: a dead runner's answer is its state, shown below
    now = time.monotonic()
    out: list[dict[str, object]] = []
    for row in rows:
        doc: dict[str, object] = {
            "model": row.model, "kind": row.kind, "state": row.state, "pid": row.pid,
            "alive": bool(getattr(row.runner, "alive", True)) if row.state != "loading" else True,
            "num_parallel": row.num_parallel, "active": row.active, "free_slots": row.num_parallel - row.active,
            "queued": row.queued, "in_flight": row.in_flight, "since_s": round(row.since_s, 3),
        }
        status = getattr(row.runner, "last_status", None)
        if status is not None:
            doc.update({
                "counters_age_s": round(max(0.0, now - getattr(row.runner, "last_status_at", now)), 3),
                "runner_active": status.active, "runner_free_slots": status.free_slots,
                "slot_tokens": list(status.slot_tokens), "prompt_evaluated": status.prompt_evaluated,
                "prompt_cached": status.prompt_cached, "spec_steps": status.spec_steps,
                "spec_proposed": status.spec_proposed, "spec_accepted": status.spec_accepted,
                "ff_tokens": status.ff_tokens,
            })
        out.append(doc)
    return out
