"""scripts/llama_backend.py: the llama.cpp backend and CMAKE_ARGS chosen for each platform, from faked facts, and the
check of an installed build against the choice (issue 16, point 1)."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "llama_backend.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("herd_llama_backend", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


lb = _load()
AMX = frozenset({"sse4_2", "avx2", "avx512f", "amx_tile", "amx_int8", "amx_bf16"})
AVX2 = frozenset({"sse4_2", "avx2", "fma"})
ARM = frozenset({"fp", "asimd", "sve"})


def choice(**facts: object) -> tuple[str, str]:
    """(backend, CMAKE_ARGS) without the RPC flag, which every choice but a custom one ends with (issue 17)."""
    c = lb.choose(lb.Facts(**facts))
    assert c.reason  # every choice says why
    if c.backend == "custom":
        return c.backend, c.cmake_args
    assert c.cmake_args.endswith(lb.RPC), c.cmake_args
    return c.backend, c.cmake_args.removesuffix(lb.RPC).strip()


def test_every_build_but_a_custom_one_has_the_rpc_backend() -> None:
    assert lb.choose(lb.Facts(system="Linux", machine="x86_64", cpu_flags=AVX2)).cmake_args == "-DGGML_RPC=ON"
    assert "-DGGML_RPC=ON" in shlex.split(lb.choose(lb.Facts(system="Darwin", machine="arm64")).cmake_args)
    assert lb.choose(lb.Facts(system="Linux", machine="x86_64", override="-DGGML_BLAS=ON")).cmake_args == (
        "-DGGML_BLAS=ON"
    )


def test_linux_x86_without_amx_is_a_plain_native_cpu_build() -> None:
    assert choice(system="Linux", machine="x86_64", cpu_flags=AVX2) == ("cpu", "")


def test_linux_x86_with_amx_turns_the_amx_instructions_off() -> None:
    backend, args = choice(system="Linux", machine="x86_64", cpu_flags=AMX)
    assert backend == "cpu"
    words = shlex.split(args)
    assert "-DGGML_NATIVE=ON" in words
    assert "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in words
    assert "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in words
    assert args == lb.AMX_WORKAROUND  # the exact flags verified on these VMs (README)


def test_arm_linux_gets_no_x86_flags_even_if_a_flag_looks_like_amx() -> None:
    assert choice(system="Linux", machine="aarch64", cpu_flags=ARM) == ("cpu", "")
    assert choice(system="Linux", machine="aarch64", cpu_flags=ARM | {"amx_tile"}) == ("cpu", "")


def test_macos_is_metal_with_no_flags_at_all() -> None:
    assert choice(system="Darwin", machine="arm64") == ("metal", "")
    # an Intel Mac: still llama.cpp's defaults, never the x86 AMX flags (no /proc/cpuinfo there)
    assert choice(system="Darwin", machine="x86_64", cpu_flags=AMX) == ("metal", "")
    # asking for CUDA on a Mac does not make it one
    assert choice(system="Darwin", machine="arm64", requested="cuda") == ("metal", "")
    assert choice(system="Darwin", machine="arm64", requested="cpu") == ("cpu", "-DGGML_METAL=OFF")


def test_cuda_needs_both_the_gpu_and_nvcc() -> None:
    base = {"system": "Linux", "machine": "x86_64", "cpu_flags": AVX2}
    assert choice(**base, nvidia_gpu=True, nvcc="/usr/bin/nvcc") == ("cuda", "-DGGML_CUDA=ON")
    assert choice(**base, nvidia_gpu=True) == ("cpu", "")  # a driver without the toolkit
    assert choice(**base, nvcc="/usr/bin/nvcc") == ("cpu", "")  # a toolkit without a GPU (this machine)


def test_cuda_on_request_needs_only_nvcc_and_names_an_nvcc_off_path() -> None:
    base = {"system": "Linux", "machine": "x86_64", "cpu_flags": AVX2, "requested": "cuda"}
    assert choice(**base, nvcc="/usr/bin/nvcc") == ("cuda", "-DGGML_CUDA=ON")
    backend, args = choice(**base, nvcc="/usr/local/cuda/bin/nvcc", nvcc_on_path=False)
    assert (backend, args) == ("cuda", "-DGGML_CUDA=ON -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc")
    c = lb.choose(lb.Facts(**{**base, "nvcc": ""}))
    assert (c.backend, c.cmake_args) == ("cpu", lb.RPC) and "nvcc" in c.reason


def test_cuda_on_an_amx_host_keeps_the_cpu_backend_safe() -> None:
    backend, args = choice(system="Linux", machine="x86_64", cpu_flags=AMX, nvidia_gpu=True, nvcc="/usr/bin/nvcc")
    assert backend == "cuda"
    assert args == "-DGGML_CUDA=ON " + lb.AMX_WORKAROUND


def test_an_arm_linux_box_with_cuda() -> None:  # Jetson / Grace: CUDA, no x86 flags
    assert choice(system="Linux", machine="aarch64", cpu_flags=ARM, nvidia_gpu=True, nvcc="/usr/bin/nvcc") == (
        "cuda",
        "-DGGML_CUDA=ON",
    )


def test_vulkan_and_rocm_only_when_asked_for_and_found() -> None:
    base = {"system": "Linux", "machine": "x86_64", "cpu_flags": AVX2}
    assert choice(**base, vulkan_sdk=True) == ("cpu", "")  # found but not asked for
    assert choice(**base, requested="vulkan", vulkan_sdk=True) == ("vulkan", "-DGGML_VULKAN=ON")
    assert choice(**base, requested="vulkan") == ("cpu", "")  # asked for, no SDK
    assert choice(**base, rocm_root="/opt/rocm") == ("cpu", "")
    backend, args = choice(**base, requested="rocm", rocm_root="/opt/rocm")
    assert backend == "rocm" and shlex.split(args) == ["-DGGML_HIP=ON", "-DCMAKE_HIP_COMPILER=/opt/rocm/llvm/bin/clang"]
    assert choice(**base, requested="hip", rocm_root="/opt/rocm")[0] == "rocm"
    assert choice(**base, requested="rocm") == ("cpu", "")
    # asked-for Vulkan does not take CUDA instead, even with a GPU and nvcc
    assert choice(**base, requested="vulkan", nvidia_gpu=True, nvcc="/usr/bin/nvcc") == ("cpu", "")


def test_cpu_on_request_ignores_the_gpu() -> None:
    assert choice(
        system="Linux", machine="x86_64", cpu_flags=AVX2, requested="cpu", nvidia_gpu=True, nvcc="/usr/bin/nvcc"
    ) == ("cpu", "")


def test_windows_x86_gets_no_proc_cpuinfo_flags() -> None:
    assert choice(system="Windows", machine="AMD64") == ("cpu", "")
    assert choice(system="Windows", machine="AMD64", nvidia_gpu=True, nvcc="C:/CUDA/bin/nvcc.exe") == (
        "cuda",
        "-DGGML_CUDA=ON",
    )


def test_the_override_wins_over_everything() -> None:
    facts = {"system": "Linux", "machine": "x86_64", "cpu_flags": AMX, "nvidia_gpu": True, "nvcc": "/usr/bin/nvcc"}
    assert choice(**facts, override="-DGGML_BLAS=ON") == ("custom", "-DGGML_BLAS=ON")
    assert choice(**facts, override="") == ("custom", "")  # set but empty: llama.cpp's own defaults
    assert choice(system="Darwin", machine="arm64", override="-DGGML_METAL=OFF") == ("custom", "-DGGML_METAL=OFF")


def test_an_unknown_backend_is_an_error() -> None:
    with pytest.raises(ValueError, match="HERD_LLAMA_BACKEND"):
        lb.choose(lb.Facts(system="Linux", machine="x86_64", requested="opencl"))


def test_a_build_is_judged_by_what_it_reports() -> None:
    cpu = lb.Choice("cpu", "")
    cuda = lb.Choice("cuda", "-DGGML_CUDA=ON")
    vulkan = lb.Choice("vulkan", "-DGGML_VULKAN=ON")
    plain = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | "
    assert lb.build_features_match(cpu, plain, False) == ""
    assert "AMX" in lb.build_features_match(cpu, plain + "AMX_INT8 = 1 | ", False)
    assert lb.build_features_match(cpu, "CUDA : ARCHS = 900 | " + plain, True)  # a GPU build, CPU wanted
    assert lb.build_features_match(cuda, plain, False)  # a CPU build, CUDA wanted
    assert lb.build_features_match(cuda, "CUDA : ARCHS = 900 | " + plain, True) == ""
    assert lb.build_features_match(cuda, "Vulkan : " + plain, True)  # another GPU backend
    assert lb.build_features_match(vulkan, plain, True) == ""
    assert lb.build_features_match(lb.Choice("custom", "-DX=1"), plain + "AMX_INT8 = 1 | ", True) == ""


def test_detect_reads_this_machine_without_failing() -> None:
    facts = lb.detect({"HERD_LLAMA_BACKEND": "auto"})
    assert facts.system and facts.machine and facts.override is None
    assert lb.choose(facts).backend in lb.BACKENDS
    assert lb.detect({"HERD_LLAMA_CMAKE_ARGS": "-DX=1"}).override == "-DX=1"
