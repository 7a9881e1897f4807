"""llama.cpp's RPC backend (ggml-rpc): a model's layers on `herd rpc-worker` processes on other machines.

herd adds no distribution layer of its own: the runner registers each worker with llama.cpp and hands the remote
devices to `llama_model_params.devices`, and llama.cpp runs the graph across them. What herd adds is what llama.cpp
lacks for a server (see ../shared/notes/llama-rpc.md): it has no timeouts and aborts the process on any socket
failure. So, before a load, every worker is probed with the protocol's own handshake and a timeout (down, busy or
frozen are errors naming the worker instead of an abort or a hang); an abort callback sends the server one last
frame naming the failed worker before the runner ends; and a watchdog ends a runner whose decode step waits on a
frozen worker past HERD_RPC_TIMEOUT. The server then fails every request in flight with that message, and the next
request probes and loads again.

The ggml functions come through libllama's own handle (engine/ggml.py says why). Nothing here imports llama_cpp at
module level, so the server process can parse and probe without loading it.
"""

from __future__ import annotations

import ctypes
import enum
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NoReturn

from herd.engine.ggml import ABORT_CALLBACK, ADD_SERVER, NO_RPC_BUILD, Ggml
from herd.errors import InvalidRequest, RpcWorkerFailed, RpcWorkerTimeout

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default
DEFAULT_TIMEOUT_S = 60.0  # HERD_RPC_TIMEOUT
PROBE_TIMEOUT_S = 5.0  # a healthy worker answers the handshake in well under 50 ms, even across a LAN
EXIT_RPC = 75  # the runner's exit status after its last frame (EX_TEMPFAIL: the worker may come back)

# ggml-rpc.h / ggml-rpc.cpp of the llama.cpp that llama-cpp-python 0.3.36 vendors (scripts/install.sh pins it):
# protocol 7.0.0. HELLO is command 14 in every version; a request is | cmd u8 | size u64 | payload |, a reply
# | size u64 | payload |, integers in the host's order (little-endian on every machine llama.cpp runs on).
PROTO_MAJOR, PROTO_MINOR = 7, 0
CMD_HELLO = 14
CONN_CAPS = 24  # the hello's transport-capability bytes; all zero asks for plain TCP
HELLO_REQUEST = struct.pack("<BQ", CMD_HELLO, CONN_CAPS) + bytes(CONN_CAPS)
HELLO_REPLY = struct.Struct("<Q4B")  # size, then major, minor, patch, padding (then the caps)
HELLO_REPLY_SIZE = 4 + CONN_CAPS

_SOURCE_PREFIX = re.compile(r"^\S+:\d+: ")  # ggml_abort's "file.cpp:123: " before the message
ERROR_KINDS: dict[str, type[RpcWorkerFailed]] = {"rpc_failed": RpcWorkerFailed, "rpc_timeout": RpcWorkerTimeout}


def error_kind(exc: BaseException) -> str:
    """The name an error crosses the runner's pipe as (Ready.error_kind, RunnerFatal.kind); "" for others."""
    if isinstance(exc, RpcWorkerTimeout):
        return "rpc_timeout"
    return "rpc_failed" if isinstance(exc, RpcWorkerFailed) else ""


# ---- settings --------------------------------------------------------------------------------------------------


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def parse_servers(raw: str | Sequence[str]) -> tuple[str, ...]:
    """`host:port,host:port` (or a list of them) as HERD_RPC_SERVERS and PARAMETER rpc_servers write it. "none"
    (or nothing) is no worker. llama.cpp reads an endpoint up to its first colon and connects over IPv4, so an IPv6
    literal cannot be named. Raises ValueError naming the bad entry."""
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    out: list[str] = []
    for part in parts:
        text = str(part).strip()
        if not text or text.lower() == "none":
            continue
        host, sep, port = text.rpartition(":")
        if not sep or not host or ":" in host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"RPC worker {text!r} is not host:port (an IPv4 address or a name, and a port)")
        endpoint = f"{host.lower()}:{int(port)}"
        if endpoint not in out:
            out.append(endpoint)
    return tuple(out)


def parse_tensor_split(raw: str | Sequence[object]) -> tuple[float, ...]:
    """llama.cpp's tensor_split: one non-negative share per device, `3,1` or a list. Raises ValueError."""
    parts = raw.split(",") if isinstance(raw, str) else list(raw)
    try:
        shares = tuple(float(p) for p in parts if str(p).strip())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"tensor_split {raw!r} is not a list of numbers") from None
    if any(s < 0 or s != s or s == float("inf") for s in shares) or (shares and not sum(shares)):
        raise ValueError(f"tensor_split {raw!r} needs non-negative shares, not all zero")
    if len(shares) > 16:  # llama_max_devices() of this build
        raise ValueError(f"tensor_split has {len(shares)} shares, at most 16 devices exist")
    return shares


def choose_workers(chosen: tuple[str, ...] | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A model's workers: its rpc_servers option (Modelfile or request; () for "none") or else HERD_RPC_SERVERS.
    Only workers of HERD_RPC_SERVERS may be named: the runner sends the model's weights to them, and a request or
    an uploaded Modelfile must not send them anywhere the operator did not choose (400 naming the worker)."""
    if chosen is None:
        return allowed
    stray = [w for w in chosen if w not in allowed]
    if stray:
        raise InvalidRequest(
            f"rpc_servers names {', '.join(stray)}, which HERD_RPC_SERVERS does not list (the RPC "
            f"workers this server may use: {', '.join(allowed) or 'none'})"
        )
    return chosen


# ---- the probe -------------------------------------------------------------------------------------------------


class State(enum.Enum):
    HEALTHY = "healthy"
    DOWN = "down"  # refused, unresolvable or unreachable: nothing listens there
    NO_ANSWER = "no answer"  # the TCP handshake or the hello got no answer in time: busy with a client, or frozen
    FOREIGN = "foreign"  # answered, but not with this protocol version (or not ggml-rpc at all)


@dataclass(frozen=True)
class Probe:
    endpoint: str
    state: State
    detail: str = ""
    seconds: float = 0.0


def _read_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = b""
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return data


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> Probe:
    """Connect and say hello as llama.cpp does, within `timeout` seconds all told, then hang up (the worker goes
    back to accepting clients at once). A worker serving another client never reads the hello: its accept loop
    is sequential, so the kernel completes the TCP handshake and nothing answers, just as with a frozen worker."""
    start = time.monotonic()
    deadline = start + timeout

    def done(state: State, detail: str = "") -> Probe:
        return Probe(endpoint, state, detail, time.monotonic() - start)

    host, port = split_endpoint(endpoint)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        return done(State.NO_ANSWER, "the TCP connection was not accepted")
    except socket.gaierror as exc:
        return done(State.DOWN, f"cannot resolve {host}: {exc.strerror}")
    except ConnectionRefusedError:
        return done(State.DOWN, "connection refused")
    except OSError as exc:
        return done(State.DOWN, exc.strerror or str(exc))
    with sock:
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(HELLO_REQUEST)
            reply = _read_exactly(sock, HELLO_REPLY.size, deadline)
        except TimeoutError:
            return done(State.NO_ANSWER, "no answer to the handshake")
        except OSError as exc:
            return done(State.FOREIGN, f"the connection was closed during the handshake ({exc.strerror or exc})")
        size, major, minor, patch, _ = HELLO_REPLY.unpack(reply)
        if size != HELLO_REPLY_SIZE or major != PROTO_MAJOR or minor > PROTO_MINOR:
            what = f"RPC protocol {major}.{minor}.{patch}" if size == HELLO_REPLY_SIZE else "an unknown reply"
            return done(State.FOREIGN, f"it answered with {what}; this server speaks {PROTO_MAJOR}.{PROTO_MINOR}.x")
    return done(State.HEALTHY)


def probe_error(p: Probe, timeout: float) -> RpcWorkerFailed:
    if p.state is State.NO_ANSWER:
        return RpcWorkerTimeout(
            f"RPC worker {p.endpoint} did not answer within {timeout:g} s ({p.detail}): it is busy with another "
            f"client (a worker serves one at a time) or frozen"
        )
    if p.state is State.DOWN:
        return RpcWorkerFailed(f"RPC worker {p.endpoint} is down ({p.detail}): start `herd rpc-worker` there")
    return RpcWorkerFailed(
        f"RPC worker {p.endpoint} is not a matching llama.cpp RPC server: {p.detail}; run the "
        f"same herd and llama-cpp-python on both machines"
    )


def check_workers(endpoints: Sequence[str], timeout: float = PROBE_TIMEOUT_S) -> list[Probe]:
    """Probe every worker at once (the wait is one timeout, not one per worker); raise for the first that is not
    healthy, in the order given."""
    if not endpoints:
        return []
    with ThreadPoolExecutor(max_workers=min(len(endpoints), 16)) as pool:
        probes = list(pool.map(lambda e: probe(e, timeout), endpoints))
    for p in probes:
        if p.state is not State.HEALTHY:
            raise probe_error(p, timeout)
    return probes


def refusing(endpoints: Sequence[str], timeout: float = 0.5) -> list[str]:
    """The workers that refuse a TCP connection now. Under a running model, the live workers are held by this very
    process and cannot answer a hello, but a dead one's port refuses at once: that names the one that died."""
    out = []
    for endpoint in endpoints:
        try:
            socket.create_connection(split_endpoint(endpoint), timeout=timeout).close()
        except ConnectionRefusedError:
            out.append(endpoint)
        except OSError:
            pass
    return out


def check_build() -> str:
    """Empty when the installed llama.cpp has the RPC backend, else why not. Asked in a short child process: loading
    llama.cpp's backends in the server itself would start a GPU runtime there (engine/devices.py says why not)."""
    import subprocess

    code = "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_rpc() else 3)"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot check the llama.cpp build for RPC: {exc}"
    if done.returncode == 3:
        return NO_RPC_BUILD
    return "" if done.returncode == 0 else f"cannot load llama_cpp: {done.stderr.strip()[-300:]}"


# ---- the runner's side -----------------------------------------------------------------------------------------


# How long the abort callback looks for the worker that went away before it names them all: its connection to the
# runner can break before the kernel has closed its listening port.
ABORT_PROBES, ABORT_PROBE_GAP_S = 6, 0.2


def last_words(fd: int, message: str, kind: str) -> NoReturn:
    """Send the server one RunnerFatal frame, log the message, and end the process: nothing after an RPC failure
    can be trusted (llama.cpp would abort anyway), and every request the runner held gets this message."""
    from herd.engine.protocol import RunnerFatal, frame

    try:
        print(f"herd runner {os.getpid()}: {message}", file=sys.stderr, flush=True)
        view = memoryview(frame([RunnerFatal(message, kind)]))
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os._exit(EXIT_RPC)


def split_array(llama: Any, shares: Sequence[float]) -> ctypes.Array[ctypes.c_float]:
    """llama_model_params.tensor_split: one float per device slot, llama_max_devices() of them."""
    return (ctypes.c_float * int(llama.llama_max_devices()))(*shares)


class Offload:
    """One runner's layers on RPC workers: probed, registered with llama.cpp, and set into the model params. Holds
    the C arrays and callbacks that llama.cpp keeps pointers to for the life of the process."""

    def __init__(self, endpoints: Sequence[str], fd: int, probe_timeout: float = PROBE_TIMEOUT_S) -> None:
        self.endpoints = tuple(endpoints)
        self.fd = fd
        self.ggml = Ggml()
        add_server = ADD_SERVER(self.ggml.rpc_proc("ggml_backend_rpc_add_server"))
        # Before the first connection: llama.cpp aborts on a worker it cannot reach, and from here on it is the
        # abort callback, not a core dump, that tells the server why.
        self._on_abort = ABORT_CALLBACK(self._aborted)
        self.ggml.fn["ggml_set_abort_callback"](ctypes.cast(self._on_abort, ctypes.c_void_p))
        # Probe first: add_server aborts the process on a down worker and hangs on a busy one.
        check_workers(self.endpoints, probe_timeout)
        self.where: dict[str, str] = {}  # device name (RPC0, ...) -> endpoint
        devices: list[int] = []
        for endpoint in self.endpoints:
            reg = add_server(endpoint.encode())
            n = self.ggml.fn["ggml_backend_reg_dev_count"](reg) if reg else 0
            if not n:
                raise RpcWorkerFailed(f"RPC worker {endpoint} has no device to serve")
            for i in range(n):
                dev = int(self.ggml.fn["ggml_backend_reg_dev_get"](reg, i))
                self.where[self.ggml.name(dev)] = endpoint
                devices.append(dev)
        # Workers first, then this machine's GPUs: llama.cpp's own order, which keeps network transfers few.
        devices += self.ggml.local_gpus()
        self.n_devices = len(devices)
        self._devices = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
        self._split: ctypes.Array[ctypes.c_float] | None = None

    def apply(self, mp: Any, tensor_split: Sequence[float]) -> None:
        """Set the devices (NULL-terminated) and the layer split into llama_model_params. Split mode "tensor" over
        RPC ran about 12x slower and gave other text (the notes): layers, unless main_gpu chose one device."""
        L = self.ggml.llama
        mp.devices = ctypes.addressof(self._devices)
        if mp.split_mode != L.LLAMA_SPLIT_MODE_NONE:
            mp.split_mode = L.LLAMA_SPLIT_MODE_LAYER
        if tensor_split:
            if len(tensor_split) > self.n_devices:
                raise RpcWorkerFailed(
                    f"tensor_split has {len(tensor_split)} shares for {self.n_devices} devices "
                    f"(the RPC workers {', '.join(self.endpoints)}, then local GPUs)"
                )
            self._split = split_array(L, tensor_split)
            mp.tensor_split = self._split

    def placement(self, layers: dict[str, int]) -> tuple[tuple[str, str, int], ...]:
        """(device, where, layers) per device: where is the worker's host:port, or "local"."""
        return tuple((dev, self.where.get(dev, "local"), n) for dev, n in layers.items())

    def _aborted(self, message: bytes | None) -> None:
        # Runs on llama.cpp's RPC thread, just before abort(): name the worker that went away, and end here.
        text = _SOURCE_PREFIX.sub("", (message or b"").decode("utf-8", "replace").strip())
        dead: list[str] = []
        for _ in range(ABORT_PROBES):  # a killed worker's port closes as its process is torn down, maybe just after
            dead = refusing(self.endpoints)
            if dead:
                break
            time.sleep(ABORT_PROBE_GAP_S)
        if dead:
            last_words(
                self.fd, f"RPC worker {', '.join(dead)} is gone (connection refused); llama.cpp: {text}", "rpc_failed"
            )
        if "RPC" in text or "connect" in text:  # ggml-rpc's own aborts ("Remote RPC server crashed", ...)
            last_words(self.fd, f"an RPC worker of {', '.join(self.endpoints)} failed; llama.cpp: {text}", "rpc_failed")
        # Any other assertion of llama.cpp's: not the workers' doing, said as it is.
        last_words(self.fd, f"llama.cpp aborted: {text}", "")

    def watch(self, worker: Any, timeout: float) -> threading.Thread:
        """Start the per-step watchdog: a decode step that waits on a frozen worker never returns (llama.cpp's
        sockets have no timeout), so past `timeout` seconds this thread ends the runner with a clear error."""

        def run() -> None:
            tick = min(1.0, timeout / 10)
            while True:
                time.sleep(tick)
                started = worker.step_started
                if started and time.monotonic() - started > timeout:
                    names = ", ".join(self.endpoints)
                    last_words(
                        self.fd,
                        f"RPC worker{'s' if len(self.endpoints) > 1 else ''} {names}: a decode "
                        f"step waited more than {timeout:g} s (HERD_RPC_TIMEOUT): a worker is frozen, "
                        f"overloaded or unreachable",
                        "rpc_timeout",
                    )

        thread = threading.Thread(target=run, name="herd-rpc-watchdog", daemon=True)
        thread.start()
        return thread
