"""What depends on this machine's GPUs before a load (issue 16, points 5 and 6): Ollama's default context by VRAM,
the slots a model gets on a GPU, and the memory check that counts GPU memory first.

No GPU is lent to these machines, so the GPUs here are `Gpu` records put into a `Machine` by the test, as the
startup device report would put them: this proves the arithmetic and the waiting, not that a CUDA build reports its
memory so (bench/gpu_check.sh is for that). The one real report read here is this CPU machine's, which has none."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from herd.config import Settings
from herd.engine.protocol import LoadSpec
from herd.scheduler import memory
from herd.scheduler.machine import GiB, Gpu, Machine, context_for_vram
from herd.scheduler.memory import InsufficientMemory, check_fits, memory_for, required_bytes, slots_that_fit
from tests.unit.scheduler.test_memory_kv import default_model


def test_ollamas_context_tiers_by_total_vram() -> None:
    assert context_for_vram(0) == 4096  # no GPU: the CPU's default, as before
    assert context_for_vram(24 * GiB - 1) == 4096
    assert context_for_vram(24 * GiB) == 32768
    assert context_for_vram(48 * GiB - 1) == 32768
    assert context_for_vram(48 * GiB) == 262144


class Model:
    model_path = default_model()
    vision_projector = None
    draft_path = None

    class gguf:
        context_length = 131072


def service(tmp_path: Path, machine: Machine, **settings: object):  # type: ignore[no-untyped-def]
    from herd.registry.models import ModelCatalog
    from herd.registry.store import Store
    from herd.scheduler.scheduler import Scheduler
    from herd.services.chat import ChatService

    return ChatService(ModelCatalog(Store(tmp_path)), Scheduler(lambda s: None), Settings(**{"num_parallel": 1, **settings}),
                       machine)  # type: ignore[arg-type]


def test_default_context_follows_the_machines_vram(tmp_path: Path) -> None:
    """The default num_ctx by the GPUs' total memory (two 16 GiB GPUs are the 24-48 tier), capped by the server's
    num_ctx limit and by the model's trained length; OLLAMA_CONTEXT_LENGTH and a request's num_ctx win."""
    m = Machine()
    m.set_gpus((Gpu("CUDA0", 15 * GiB, 16 * GiB), Gpu("CUDA1", 15 * GiB, 16 * GiB)))
    svc = service(tmp_path, m)
    assert svc.load_spec(Model(), {}).num_ctx == 32768  # type: ignore[arg-type]
    assert svc.load_spec(Model(), {"num_ctx": 2048}).num_ctx == 2048  # type: ignore[arg-type]
    short = type("Short", (Model,), {"gguf": type("g", (), {"context_length": 8192})})
    assert svc.load_spec(short(), {}).num_ctx == 8192  # type: ignore[arg-type]
    assert service(tmp_path, m, context_length=6000).load_spec(Model(), {}).num_ctx == 6000  # type: ignore[arg-type]
    big = Machine()
    big.set_gpus((Gpu("CUDA0", 70 * GiB, 80 * GiB),))
    assert service(tmp_path, big).load_spec(Model(), {}).num_ctx == 131072  # type: ignore[arg-type]  # max_num_ctx
    assert service(tmp_path, big, max_num_ctx=300000).load_spec(Model(), {}).num_ctx == 131072  # type: ignore[arg-type]
    assert service(tmp_path, Machine()).load_spec(Model(), {}).num_ctx == 4096  # type: ignore[arg-type]


def test_a_request_waits_for_the_device_report_and_not_without_one(tmp_path: Path) -> None:
    """Until the startup report is in, the default context is unknown: a request's load spec waits for it, so the
    first request does not get the CPU's 4096 and a reload once the GPUs are known. Without a report on its way
    (create_app alone) nothing waits."""
    m = Machine()
    m.expect_report()
    svc = service(tmp_path, m)
    threading.Timer(0.3, m.set_gpus, ((Gpu("CUDA0", 30 * GiB, 32 * GiB),),)).start()
    assert asyncio.run(svc.aload_spec(Model(), {})).num_ctx == 32768  # type: ignore[arg-type]
    assert asyncio.run(service(tmp_path, Machine()).aload_spec(Model(), {})).num_ctx == 4096  # type: ignore[arg-type]


def spec(**kw: object) -> LoadSpec:
    base = LoadSpec(model_path=str(default_model()), num_ctx=8192, num_batch=512, num_parallel=8, num_thread=2,
                    use_mmap=True)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_slots_on_a_gpu_count_its_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model offloaded to a GPU gets the slots that fit in the GPU's free memory beside its weights, not the
    host's; kept on the CPU (num_gpu 0) or sent to RPC workers, the host's; main_gpu counts that GPU only."""
    weights = required_bytes(spec(num_parallel=0))
    per_slot = required_bytes(spec(num_parallel=1)) - weights
    monkeypatch.setattr(memory, "available_bytes", lambda: 100 * GiB)
    m = Machine()
    m.set_gpus((Gpu("CUDA0", weights + int(2.5 * per_slot), 8 * GiB), Gpu("CUDA1", weights + 4 * per_slot, 8 * GiB)))
    assert slots_that_fit(spec(main_gpu=0), memory_for(spec(main_gpu=0), m)) == 2
    assert slots_that_fit(spec(main_gpu=1), memory_for(spec(main_gpu=1), m)) == 4
    # Split over both GPUs, the weights are counted once against their free memory together.
    both = m.free_vram()
    assert memory_for(spec(), m) == both
    assert slots_that_fit(spec(), both) == min(8, (both - weights) // per_slot) > 4
    assert memory_for(spec(n_gpu_layers=0), m) == 100 * GiB
    assert memory_for(spec(rpc_servers=("127.0.0.1:50052",)), m) == 100 * GiB
    small = Machine()
    small.set_gpus((Gpu("CUDA0", weights // 2, 8 * GiB),))  # the weights do not fit: layers spill to the host
    assert memory_for(spec(), small) == weights // 2 + 100 * GiB


def test_a_load_counts_gpu_memory_first_and_is_refused_only_past_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the GPU holds does not need system memory: a load larger than the host's free memory fits with a GPU
    that takes the rest, and one past both is refused with Ollama's text, counting the part left to the host."""
    need = required_bytes(spec())
    monkeypatch.setattr(memory, "available_bytes", lambda: need // 2)
    with pytest.raises(InsufficientMemory, match=r"model requires more system memory \(.*\) than is available"):
        check_fits(spec(), Machine())
    m = Machine()
    m.set_gpus((Gpu("CUDA0", need // 2 + 1, 8 * GiB),))
    check_fits(spec(), m)  # half on the GPU, half in the host
    with pytest.raises(InsufficientMemory):
        check_fits(spec(n_gpu_layers=0), m)  # kept on the CPU: the GPU does not help
    m.set_gpus((Gpu("CUDA0", need // 4, 8 * GiB),))
    with pytest.raises(InsufficientMemory) as err:
        check_fits(spec(), m)
    assert memory.human_bytes(need - need // 4) in str(err.value)


def test_this_machines_device_report_is_read() -> None:
    """The real child process the server starts (engine/devices.py) on this machine: its JSON carries the log lines
    and the GPUs, none on a CPU machine; the server's reader puts them into the Machine and logs the context."""
    from herd.serving import report_devices

    done = subprocess.run([sys.executable, "-m", "herd.engine.devices", "--devices"], capture_output=True, text=True,
                          timeout=120, check=True)
    assert '"lines"' in done.stdout and '"gpus"' in done.stdout
    m = Machine()
    report_devices(Settings(), "error", m)
    gpus = asyncio.run(m.known_gpus(120))
    import json

    assert [g.name for g in gpus] == [g[0] for g in json.loads(done.stdout)["gpus"]]


def test_num_gpu_unset_offloads_the_layers_that_fit(tmp_path: Path) -> None:
    """Ollama's default offload: with the default model's real tensors (30 layers), a GPU that holds the margin and
    exactly ten layers' weights and KV gets num_gpu 10; one that holds everything keeps -1 (all, output layer
    too); one with less than the margin gets 0. The service applies it to a request's load spec."""
    from herd.registry.gguf_info import read_gguf_full
    from herd.scheduler.memory import GPU_MARGIN, kv_bytes, layers_that_fit, tensor_bytes

    s = spec(num_parallel=2)
    info = read_gguf_full(default_model())
    n_layer = int(info.metadata["llama.block_count"])  # type: ignore[call-overload]
    layer = [sum(tensor_bytes(t.type, t.shape) for t in info.tensors if t.name.startswith(f"blk.{i}."))
             for i in range(n_layer)]
    kv_layer = kv_bytes(info.metadata, "llama", s.num_ctx, 2) // n_layer
    ten = GPU_MARGIN + sum(layer[-10:]) + 10 * kv_layer
    assert layers_that_fit(s, ten) == 10
    assert layers_that_fit(s, ten - 1) == 9
    assert layers_that_fit(s, required_bytes(s) + GPU_MARGIN) == -1
    assert layers_that_fit(s, GPU_MARGIN // 2) == 0
    m = Machine()
    m.set_gpus((Gpu("CUDA0", ten, 8 * GiB),))
    svc = service(tmp_path, m, num_parallel=2)
    short = type("Short", (Model,), {"gguf": type("g", (), {"context_length": 8192})})
    assert asyncio.run(svc.aload_spec(short(), {"num_ctx": 8192})).n_gpu_layers == 10  # type: ignore[arg-type]
    assert asyncio.run(svc.aload_spec(short(), {"num_gpu": 3})).n_gpu_layers == 3  # type: ignore[arg-type]
    assert asyncio.run(service(tmp_path, Machine()).aload_spec(short(), {})).n_gpu_layers == -1  # type: ignore[arg-type]
