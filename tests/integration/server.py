"""Starts a real `herd serve` process on a free loopback port, with the real default model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HerdServer:
    def __init__(self, models_dir: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.models_dir = models_dir or Path(tempfile.mkdtemp(prefix="herd-models-"))
        self.env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{self.port}", "HERD_MODELS": str(self.models_dir),
                    **(env or {})}
        self.env.pop("OLLAMA_MODELS", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="herd-serve-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> HerdServer:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "herd.cli", "serve"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"herd serve exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"herd serve did not start: {self.log.read_text()[-3000:]}")

    def runner_pids(self) -> list[int]:
        """Runner processes are the server's children started through multiprocessing's spawn."""
        assert self.proc is not None
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            ppid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), -1)
            if ppid == self.proc.pid and "spawn_main" in cmdline and "resource_tracker" not in cmdline:
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
