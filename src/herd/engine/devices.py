"""What llama.cpp sees and where it put a model: the device report `herd serve` logs at startup (run in a short
child process: `python -m herd.engine.devices --devices`, so the server never initialises a GPU runtime itself),
and the reading of llama.cpp's load log that a runner turns into its placement line and its load errors."""

from __future__ import annotations

import ctypes
import json
import re
import sys
from collections import Counter

from herd.engine.ggml import DEV_CPU, DEV_GPU, DEV_IGPU, Ggml, gpu_offload_in_build

GGML_LOG_LEVEL_ERROR = 4
_LOG_LINES_KEPT = 4096  # bound on what the load log keeps (a model has one placement line per layer)
_PLACEMENT = re.compile(r"assigned to device ([^\s,]+)|(\S+) model buffer size\s*=\s*([\d.]+) MiB|"
                        r"(\S+) KV buffer size\s*=\s*([\d.]+) MiB|Flash Attention (enabled|disabled)|"
                        r"flash_attn\s*=\s*(\w+)")


class LoadLog:
    """llama.cpp's log while a runner loads, as the log callback sees it. It keeps the lines that say where the
    model went (layer per device, weight and KV buffers, the flash attention llama.cpp resolved) and the errors, so
    the runner writes one placement line and a failed load says why instead of "unable to load". Once the model
    runs, `active` is off and the log is dropped, as before (llama.cpp logs per decode)."""

    def __init__(self) -> None:
        self.active = True
        self.lines: list[str] = []
        self.errors: list[str] = []

    def __call__(self, level: int, text: bytes | None, _data: object) -> None:
        if not self.active or not text:
            return
        line = text.decode("utf-8", "replace").strip()
        if level == GGML_LOG_LEVEL_ERROR and line and len(self.errors) < 64:
            self.errors.append(line)
        if _PLACEMENT.search(line) and len(self.lines) < _LOG_LINES_KEPT:
            self.lines.append(line)

    def why(self) -> str:
        return f": {'; '.join(self.errors[-3:])}" if self.errors else ""

    def placement(self) -> tuple[Counter[str], dict[str, float], dict[str, float], str]:
        """Layers per device, weight MiB per buffer, KV MiB per buffer, and flash attention as llama.cpp resolved
        it ("enabled", "disabled", or "" when the log did not say)."""
        layers: Counter[str] = Counter()
        weights: dict[str, float] = {}
        kv: dict[str, float] = {}
        resolved = configured = ""
        for line in self.lines:
            m = _PLACEMENT.search(line)
            if m is None:
                continue
            if m.group(1):
                layers[m.group(1)] += 1
            elif m.group(2):
                weights[m.group(2)] = weights.get(m.group(2), 0.0) + float(m.group(3))
            elif m.group(4):
                kv[m.group(4)] = kv.get(m.group(4), 0.0) + float(m.group(5))
            elif m.group(6):
                resolved = m.group(6)
            elif m.group(7):
                configured = m.group(7)
        return layers, weights, kv, resolved or (configured if configured != "auto" else "")


def is_host_buffer(name: str) -> bool:
    """A buffer in host memory: CPU, CPU_Mapped, CPU_REPACK, CUDA_Host (pinned host memory) and the like."""
    return name.upper().startswith("CPU") or name.endswith("_Host")


def vram_mib(*buffers: dict[str, float]) -> float:
    """MiB of these buffers (LoadLog.placement's weights and KV) in this machine's accelerator memory, what Ollama's
    `size_vram` counts: neither host buffers nor those on RPC workers (RPC0[host:port]), whose memory is theirs."""
    return sum(v for named in buffers for k, v in named.items()
               if not is_host_buffer(k) and not k.upper().startswith("RPC"))


def device_report() -> tuple[list[str], list[tuple[str, int, int]]]:
    """What llama.cpp sees on this machine, for `herd serve`'s startup log: its system info line, whether this build
    offloads to GPUs, and each ggml backend device with its memory; and this machine's GPUs as (name, free bytes,
    total bytes), for the defaults that depend on VRAM (scheduler/machine.py). Run in a short child process
    (serving.py), so the server process never initialises a GPU runtime itself."""
    import llama_cpp as L

    log_cb = L.llama_log_callback(lambda level, text, data: None)
    L.llama_log_set(log_cb, ctypes.c_void_p(0))
    L.llama_backend_init()
    out = [
        "llama.cpp system info: " + L.llama_print_system_info().decode("utf-8", "replace").strip(" |"),
        "llama.cpp GPU offload: " + ("supported" if gpu_offload_in_build() else "not in this build"),
        "llama.cpp RPC backend: " + ("supported" if L.llama_supports_rpc() else "not in this build"),
    ]
    gpus: list[tuple[str, int, int]] = []
    try:
        g = Ggml()
        kinds = {DEV_CPU: "CPU", DEV_GPU: "GPU", DEV_IGPU: "integrated GPU", 3: "accelerator"}
        for i, dev in enumerate(g.devices()):
            free, total = g.memory(dev)
            out.append(f"llama.cpp device {i}: {g.name(dev)} ({kinds.get(g.dev_type(dev), 'other')}: "
                       f"{g.description(dev)}), {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
        gpus = [(g.name(d), *g.memory(d)) for d in g.local_gpus()]
    except Exception as exc:  # an older or newer build without these symbols: the system info line still says
        out.append(f"llama.cpp devices: not listed ({exc})")
    return out, gpus


if __name__ == "__main__":  # python -m herd.engine.devices --devices: the device report as one JSON object
    if sys.argv[1:] == ["--devices"]:
        lines, gpus = device_report()
        print(json.dumps({"lines": lines, "gpus": gpus}), flush=True)
