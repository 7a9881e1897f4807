"""`herd serve`: uvicorn with a graceful drain on SIGTERM/SIGINT.

uvicorn on its own closes the listening socket at the first signal (new clients get "connection refused", not an
answer) and cancels whatever still runs after `timeout_graceful_shutdown`, cutting a stream without a final line.
Here the first signal starts a drain instead: the listener stays open and answers new requests 503
`{"error":"server is shutting down"}` (api/guard.py), running requests and streams go on for up to
`Settings.shutdown_grace_s`; past that, the runners are stopped, so each remaining stream ends with one
`{"error":"server is shutting down"}` line. Then uvicorn's own shutdown runs; the lifespan's `scheduler.shutdown()`
ends every runner process. A second SIGINT still forces the exit, as in uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI

from herd.api.guard import Drain
from herd.config import Settings
from herd.scheduler.machine import MACHINE, Gpu, Machine, context_for_vram

log = logging.getLogger("herd")

# What the last streams get, once their runners are stopped, to write their error line and close.
_AFTER_GRACE_S = 5.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_s: float) -> None:
        super().__init__(config)
        self.herd_app = app
        self.grace_s = grace_s
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain: Drain | None = getattr(self.herd_app.state, "drain", None)
        if drain is None or drain.draining or self.should_exit:
            super().handle_exit(sig, frame)  # a second signal: uvicorn's own handling (SIGINT twice forces)
            return
        self._captured_signals.append(sig)
        drain.start()  # from now on new requests get 503
        loop = asyncio.get_event_loop()
        # A signal handler runs between bytecodes of the loop's thread: schedule the drain, never await here.
        loop.call_soon_threadsafe(self._start_drain, drain)

    def _start_drain(self, drain: Drain) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(drain))

    async def _drain(self, drain: Drain) -> None:
        try:
            await asyncio.wait_for(drain.idle(), self.grace_s)
        except TimeoutError:
            log.warning("shutdown grace of %.0fs is over: stopping %d running request(s)", self.grace_s,
                        drain.active)
            with contextlib.suppress(Exception):
                await self.herd_app.state.services.scheduler.shutdown()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drain.idle(), _AFTER_GRACE_S)
        self.should_exit = True


def report_devices(settings: Settings, log_level: str = "warning", machine: Machine = MACHINE) -> None:
    """Learn this machine's GPUs (scheduler/machine.py: the default context length and the GPU memory a load may
    use depend on them) and log the devices llama.cpp sees (engine/devices.py: device_report) and the cache
    settings runners load with, as `herd: ...` lines on stderr, like Ollama's startup lines about its GPUs. They
    show at the default log level (warning, where uvicorn's own INFO lines are hidden) and not at error or critical.
    The report comes from a short child process, so the server itself never initialises a GPU runtime (a CUDA
    context would hold device memory as long as the server runs); it runs on a thread, so startup does not wait for
    it, and requests that need the GPUs wait for it (bounded)."""
    machine.expect_report()
    quiet = log_level.lower() in ("error", "critical")

    def report() -> None:
        gpus: list[Gpu] = []
        try:
            done = subprocess.run([sys.executable, "-m", "herd.engine.devices", "--devices"], capture_output=True,
                                  text=True, timeout=120, check=False)
            try:
                found = json.loads(done.stdout.strip().splitlines()[-1])
                lines = [str(line) for line in found["lines"]]
                gpus = [Gpu(str(n), int(f), int(t)) for n, f, t in found["gpus"]]
            except (ValueError, KeyError, TypeError, IndexError):
                lines = [f"llama.cpp devices: not listed ({(done.stderr or done.stdout).strip()[-300:]})"]
        except (OSError, subprocess.SubprocessError) as exc:
            lines = [f"llama.cpp devices: not listed ({exc})"]
        finally:
            machine.set_gpus(tuple(gpus))
        tier = context_for_vram(machine.total_vram())
        lines.append(f"KV cache {settings.kv_cache_type}, flash attention {settings.flash_attention} "
                     "(OLLAMA_KV_CACHE_TYPE, OLLAMA_FLASH_ATTENTION); default context "
                     + (f"{settings.context_length} (OLLAMA_CONTEXT_LENGTH)" if settings.context_length > 0 else
                        f"{tier} by {machine.total_vram() / 2**30:.1f} GiB of VRAM"))
        if settings.rpc_servers:
            lines.append(f"RPC workers {', '.join(settings.rpc_servers)} (HERD_RPC_SERVERS), a decode step through "
                         f"them may take {settings.rpc_timeout_s:g} s (HERD_RPC_TIMEOUT)")
        if not quiet:
            sys.stderr.write("".join(f"herd: {line}\n" for line in lines))
            sys.stderr.flush()

    threading.Thread(target=report, name="herd-devices", daemon=True).start()


def serve(settings: Settings, log_level: str) -> None:
    from herd.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                            timeout_graceful_shutdown=int(_AFTER_GRACE_S))
    server = DrainingServer(config, app, settings.shutdown_grace_s)
    report_devices(settings, log_level)
    server.run()


__all__ = ["DrainingServer", "report_devices", "serve"]
