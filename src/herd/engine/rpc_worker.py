"""`herd rpc-worker`: this machine's GPUs (or CPU) served to herd servers over llama.cpp's RPC protocol, with the RPC
server function of herd's own llama.cpp libraries, so the protocol version always matches the clients'. A worker
serves one client at a time; the protocol has no authentication (see the README's section on RPC workers)."""

from __future__ import annotations

import ctypes
import socket
import sys
import threading
from typing import Any

from herd.engine.ggml import DEV_CPU, GET_MEMORY, START_SERVER, Ggml, P, S
from herd.errors import RpcWorkerFailed


def advertise_memory(ggml: Ggml, dev: int, mem: int) -> object:
    """Make `dev` report `mem` bytes free and total, which is what llama.cpp's clients split layers by when no
    tensor_split is given. This llama.cpp's start_server takes no memory figure and answers with the device's own
    get_memory, so the device's interface slot for it (the third function pointer of struct ggml_backend_device,
    ggml-backend-impl.h) is pointed at ours, in this process only. The slot is checked to behave like get_memory
    first. Returns the callback, which must be kept alive."""
    slot = ctypes.c_void_p.from_address(dev + 2 * ctypes.sizeof(ctypes.c_void_p))
    original = slot.value
    if not original:
        raise RuntimeError("--mem: this llama.cpp's device layout is not the one herd knows")
    free, total = S(0), S(0)
    GET_MEMORY(original)(dev, ctypes.byref(free), ctypes.byref(total))
    if (free.value, total.value) != ggml.memory(dev):
        raise RuntimeError("--mem: this llama.cpp's device layout is not the one herd knows")

    def get_memory(_dev: int, free_p: Any, total_p: Any) -> None:
        free_p[0] = total_p[0] = mem

    callback = GET_MEMORY(get_memory)
    slot.value = ctypes.cast(callback, P).value
    if ggml.memory(dev) != (mem, mem):
        slot.value = original
        raise RuntimeError("--mem: the device did not take the memory figure")
    return callback


def serve(host: str, port: int, threads: int, mem: int | None = None) -> int:
    """Serve this machine's GPUs (or, without one, its CPU) to herd servers, with start_server from herd's own
    llama.cpp libraries, so the protocol always matches the clients'. Blocks until interrupted; returns the exit
    status (1 when the port cannot be served)."""
    import ipaddress
    import signal

    # A client that vanishes mid-reply must not kill the worker with SIGPIPE (it did in 3 of 19 kills).
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        addr = socket.gethostbyname(host)  # llama.cpp binds an IPv4 literal only
    except OSError as exc:
        print(f"herd rpc-worker: cannot resolve {host}: {exc}", file=sys.stderr)
        return 1
    if not ipaddress.ip_address(addr).is_loopback:
        print(
            f"herd rpc-worker: WARNING: listening on {addr}:{port}, beyond this machine. llama.cpp's RPC protocol "
            "has no authentication and no encryption: anyone who can reach this port can use this machine's "
            "memory and compute and send it data. Run it on a trusted network only.",
            file=sys.stderr,
        )
    ggml = Ggml()
    try:
        start = START_SERVER(ggml.rpc_proc("ggml_backend_rpc_start_server"))
    except RpcWorkerFailed as exc:
        print(f"herd rpc-worker: {exc.message}", file=sys.stderr)
        return 1
    ggml.llama.llama_backend_init()
    devices = ggml.local_gpus() or [d for d in ggml.devices() if ggml.dev_type(d) == DEV_CPU][:1]
    kept = [advertise_memory(ggml, d, mem) for d in devices] if mem else []
    with socket.socket() as s:  # a clear error for a taken port; llama.cpp would only say "Failed to create"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError as exc:
            print(f"herd rpc-worker: cannot listen on {addr}:{port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    names = ", ".join(f"{ggml.name(d)} ({ggml.description(d)}, {ggml.memory(d)[1] / 2**30:.1f} GiB)" for d in devices)
    print(f"herd rpc-worker: serving {names} on {addr}:{port} with {threads} threads", file=sys.stderr, flush=True)
    array = (P * len(devices))(*devices)
    # On a thread: ctypes releases the GIL while start_server blocks, and the main thread stays free for Ctrl-C.
    server = threading.Thread(
        target=start,
        args=(f"{addr}:{port}".encode(), None, threads, len(devices), array),
        name="herd-rpc-server",
        daemon=True,
    )
    server.start()
    try:
        while server.is_alive():
            server.join(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        del kept
    return 1  # start_server returned: it could not listen
