"""This machine's GPUs, as the device report found them at startup, and what depends on them before a load: the
default context length by VRAM (Ollama's tiers) and the GPU memory a load may use.

The server learns its GPUs from a short child process (engine/devices.py, started by serving.py) so that it never
initialises a GPU runtime itself; until the report is in, a request that needs it waits for it, bounded. A server
started without the report (the in-process tests, `create_app` alone) has no GPUs to wait for.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

GiB = 1 << 30
REPORT_WAIT_S = 30.0  # the longest a request waits for the startup report before taking the CPU's defaults

# Ollama's default context length by total VRAM (docs/context-length.mdx): < 24 GiB 4k, 24-48 GiB 32k, >= 48 GiB 256k;
# a machine without a GPU is in the first tier.
CONTEXT_TIERS: tuple[tuple[int, int], ...] = ((48 * GiB, 262144), (24 * GiB, 32768), (0, 4096))


@dataclass(frozen=True)
class Gpu:
    name: str
    free: int  # bytes, when the report ran
    total: int


def context_for_vram(total_vram: int) -> int:
    return next(ctx for least, ctx in CONTEXT_TIERS if total_vram >= least)


class Machine:
    def __init__(self) -> None:
        self._known = threading.Event()
        self._gpus: tuple[Gpu, ...] = ()
        self._expected = False

    def expect_report(self) -> None:
        """A device report is on its way (serving.py): requests that need the GPUs wait for it."""
        self._expected = True

    def set_gpus(self, gpus: tuple[Gpu, ...]) -> None:
        self._gpus = tuple(gpus)
        self._known.set()

    @property
    def gpus(self) -> tuple[Gpu, ...]:
        """The GPUs known now (none while the report is still running)."""
        return self._gpus

    async def known_gpus(self, timeout: float = REPORT_WAIT_S) -> tuple[Gpu, ...]:
        if self._expected and not self._known.is_set():
            await asyncio.to_thread(self._known.wait, timeout)
        return self._gpus

    def total_vram(self) -> int:
        return sum(g.total for g in self._gpus)

    def free_vram(self) -> int:
        return sum(g.free for g in self._gpus)


# One per process, like /proc/meminfo: what this machine has is a fact about the process, not about a request.
MACHINE = Machine()
