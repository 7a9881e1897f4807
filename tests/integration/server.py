"""Starts a real `herd serve` process on a free loopback port, with the real default model, and `herd rpc-worker`
processes for it to offload layers to."""

from __future__ import annotations

import os
import signal
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


class RpcWorker:
    """A `herd rpc-worker` on a free loopback port, with one thread unless told (the CI machine has two cores)."""

    def __init__(self, threads: int = 1) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RpcWorker:
        from herd.engine import rpc

        self.proc = subprocess.Popen([sys.executable, "-m", "herd.cli", "rpc-worker", "--port", str(self.port),
                                      "--threads", str(self.threads)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(150):  # up to about 30 s for llama.cpp to load
            if self.proc.poll() is not None:
                raise RuntimeError(f"herd rpc-worker exited with {self.proc.returncode}")
            if rpc.probe(self.endpoint, 1.0).state is rpc.State.HEALTHY:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"herd rpc-worker on {self.endpoint} did not answer")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a frozen worker must wake to die
            self.proc.kill()
            self.proc.wait(timeout=10)
