"""The few ggml-backend functions herd needs that llama-cpp-python 0.3.36 does not bind: device lists, the RPC
registry's entry points, the abort callback (engine/rpc.py, engine/rpc_worker.py).

They are looked up through libllama's own handle (`llama_cpp.llama_cpp._lib`), never through `llama_cpp._ggml`: the
wheel ships libggml.so as a copy of libggml.so.0, not a link, so that module opens a second libggml with a second
device registry, and devices registered there are invisible to libllama (layers silently stay on the CPU).
"""

from __future__ import annotations

import ctypes
from typing import Any

from herd.errors import RpcWorkerFailed

P, S = ctypes.c_void_p, ctypes.c_size_t
_SIGNATURES: dict[str, tuple[object, tuple[object, ...]]] = {
    "ggml_backend_reg_by_name": (P, (ctypes.c_char_p,)),
    "ggml_backend_reg_get_proc_address": (P, (P, ctypes.c_char_p)),
    "ggml_backend_reg_dev_count": (S, (P,)),
    "ggml_backend_reg_dev_get": (P, (P, S)),
    "ggml_backend_reg_name": (ctypes.c_char_p, (P,)),
    "ggml_backend_reg_count": (S, ()),
    "ggml_backend_reg_get": (P, (S,)),
    "ggml_backend_dev_count": (S, ()),
    "ggml_backend_dev_get": (P, (S,)),
    "ggml_backend_dev_name": (ctypes.c_char_p, (P,)),
    "ggml_backend_dev_description": (ctypes.c_char_p, (P,)),
    "ggml_backend_dev_type": (ctypes.c_int, (P,)),
    "ggml_backend_dev_backend_reg": (P, (P,)),
    "ggml_backend_dev_memory": (None, (P, ctypes.POINTER(S), ctypes.POINTER(S))),
    "ggml_set_abort_callback": (P, (P,)),
}
DEV_CPU, DEV_GPU, DEV_IGPU = 0, 1, 2  # enum ggml_backend_dev_type
ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
ADD_SERVER = ctypes.CFUNCTYPE(P, ctypes.c_char_p)
START_SERVER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, S, S, ctypes.POINTER(P))
GET_MEMORY = ctypes.CFUNCTYPE(None, P, ctypes.POINTER(S), ctypes.POINTER(S))


class Ggml:
    """The few ggml-backend functions llama-cpp-python does not bind, as fresh function objects (so that no other
    module's argtypes on the same handle are changed), from libllama's handle."""

    def __init__(self) -> None:
        import llama_cpp
        from llama_cpp import llama_cpp as bindings

        self.llama = llama_cpp
        self.fn: dict[str, Any] = {
            name: ctypes.CFUNCTYPE(res, *args)((name, bindings._lib))  # type: ignore[misc,arg-type]
            for name, (res, args) in _SIGNATURES.items()
        }

    def rpc_proc(self, name: str) -> int:
        """An RPC entry point (add_server, start_server) from the RPC registry; RpcWorkerFailed on a build
        without RPC, which says how to get one."""
        reg = self.fn["ggml_backend_reg_by_name"](b"RPC") if self.llama.llama_supports_rpc() else None
        addr = self.fn["ggml_backend_reg_get_proc_address"](reg, name.encode()) if reg else None
        if not addr:
            raise RpcWorkerFailed(NO_RPC_BUILD)
        return int(addr)

    def name(self, dev: int) -> str:
        return (self.fn["ggml_backend_dev_name"](dev) or b"?").decode("utf-8", "replace")

    def description(self, dev: int) -> str:
        return (self.fn["ggml_backend_dev_description"](dev) or b"").decode("utf-8", "replace")

    def devices(self) -> list[int]:
        return [int(self.fn["ggml_backend_dev_get"](i)) for i in range(self.fn["ggml_backend_dev_count"]())]

    def dev_type(self, dev: int) -> int:
        return int(self.fn["ggml_backend_dev_type"](dev))

    def memory(self, dev: int) -> tuple[int, int]:
        free, total = S(0), S(0)
        self.fn["ggml_backend_dev_memory"](dev, ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value

    def local_gpus(self) -> list[int]:
        """This machine's GPUs, as llama.cpp's own default picks them: discrete GPUs, else integrated ones."""
        gpus = [d for d in self.devices() if self.dev_type(d) == DEV_GPU and not self._is_rpc(d)]
        return gpus or [d for d in self.devices() if self.dev_type(d) == DEV_IGPU]

    def _is_rpc(self, dev: int) -> bool:
        reg = self.fn["ggml_backend_dev_backend_reg"](dev)
        return bool(reg) and (self.fn["ggml_backend_reg_name"](reg) or b"").startswith(b"RPC")


NO_RPC_BUILD = (
    "this llama-cpp-python build has no RPC backend (llama_supports_rpc() is false): rebuild it with "
    "scripts/install.sh, which adds -DGGML_RPC=ON"
)


def gpu_offload_in_build() -> bool:
    """Whether this build has a GPU backend (CUDA, Metal, Vulkan, ...). llama_supports_gpu_offload() alone is true
    for every build with RPC, whose remote devices count as offload targets."""
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        return False
    g = Ggml()
    regs = (g.fn["ggml_backend_reg_get"](i) for i in range(g.fn["ggml_backend_reg_count"]()))
    return any((g.fn["ggml_backend_reg_name"](r) or b"").decode() not in ("CPU", "RPC") for r in regs)
