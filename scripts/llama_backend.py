#!/usr/bin/env python3
"""Which llama.cpp backend to build llama-cpp-python with on this machine, and the CMAKE_ARGS for it.

Standard library only: scripts/install.sh runs it before herd (or anything else) is installed.

    python3 scripts/llama_backend.py             the CMAKE_ARGS, one line ("" = llama.cpp's defaults)
    python3 scripts/llama_backend.py --backend   the backend: cpu, cuda, metal, vulkan, rocm or custom
    python3 scripts/llama_backend.py --explain   backend, why, and the CMAKE_ARGS
    python3 scripts/llama_backend.py --check     exit 0 when the installed llama-cpp-python is the wanted build
    python3 scripts/llama_backend.py --stamp     after a build: check what it reports, then record the choice

The choice (`choose`) is a pure function of a few facts about the machine (`Facts`), so tests fake every platform;
`detect` is the thin layer that reads them from this one. The rules:

- HERD_LLAMA_CMAKE_ARGS, when set (even empty), is used as it is: backend "custom".
- macOS: Metal, llama.cpp's default there, with no flags at all (HERD_LLAMA_BACKEND=cpu turns Metal off).
- CUDA (-DGGML_CUDA=ON) when `nvidia-smi` lists a GPU and `nvcc` runs; HERD_LLAMA_BACKEND=cuda needs only nvcc
  (a build box without the GPU).
- Vulkan (-DGGML_VULKAN=ON) and ROCm/HIP (-DGGML_HIP=ON) only when asked for with HERD_LLAMA_BACKEND=vulkan|rocm,
  and only when their SDK is found (glslc and the Vulkan headers; hipconfig or /opt/rocm).
- Else the CPU, with llama.cpp's defaults (a native build).
- On x86 Linux CPUs whose /proc/cpuinfo flags report AMX, whatever the backend (a GPU build compiles the CPU
  backend too): a native build with the AMX instructions switched off. Native AMX kernels crash at the first
  decode on VMs that report AMX but do not let programs use it (README, "Building llama-cpp-python").

A backend asked for whose SDK is missing falls back to the CPU, and --explain says why; install.sh prints it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LLAMA_CPP_PYTHON = "0.3.36"  # the version install.sh pins
STAMP = "herd_build.json"  # written into the installed llama_cpp package after a build by install.sh
BACKENDS = ("cpu", "cuda", "metal", "vulkan", "rocm")
_AMX_OFF = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
RPC = "-DGGML_RPC=ON"
AMX_WORKAROUND = f"-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='{_AMX_OFF}' -DCMAKE_CXX_FLAGS='{_AMX_OFF}'"
_X86 = frozenset({"x86_64", "amd64", "x86", "i386", "i686"})


@dataclass(frozen=True)
class Facts:
    """What the choice depends on. Paths are "" when the tool was not found."""

    system: str  # platform.system(): "Linux", "Darwin", "Windows"
    machine: str  # platform.machine(): "x86_64", "AMD64", "arm64", "aarch64"
    cpu_flags: frozenset[str] = frozenset()  # /proc/cpuinfo "flags" (x86) or "Features" (ARM)
    nvidia_gpu: bool = False  # `nvidia-smi -L` ran and listed a GPU
    nvcc: str = ""  # a working nvcc
    nvcc_on_path: bool = True  # found on PATH (else CMake is told where it is)
    vulkan_sdk: bool = False  # glslc plus the Vulkan headers or loader
    rocm_root: str = ""  # the ROCm installation (hipconfig -R, or /opt/rocm)
    requested: str = ""  # HERD_LLAMA_BACKEND ("" or "auto" = choose)
    override: str | None = None  # HERD_LLAMA_CMAKE_ARGS, when set


@dataclass(frozen=True)
class Choice:
    backend: str  # one of BACKENDS, or "custom"
    cmake_args: str
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def has_amx(facts: Facts) -> bool:
    return (
        facts.system == "Linux"
        and facts.machine.lower() in _X86
        and any(flag.startswith("amx") for flag in facts.cpu_flags)
    )


def choose(facts: Facts) -> Choice:
    """The backend and CMAKE_ARGS for these facts. Raises ValueError for a HERD_LLAMA_BACKEND it does not know.

    Every build but a custom one also gets llama.cpp's RPC backend, so that `herd rpc-worker` and HERD_RPC_SERVERS
    work on any install (it adds about 4% to the build)."""
    if facts.override is not None:
        return Choice("custom", facts.override.strip(), ("HERD_LLAMA_CMAKE_ARGS overrides the choice",))
    backend = _choose_backend(facts)
    return Choice(backend.backend, f"{backend.cmake_args} {RPC}".strip(), backend.reasons)


def _choose_backend(facts: Facts) -> Choice:
    requested = facts.requested.strip().lower()
    requested = {"": "auto", "hip": "rocm"}.get(requested, requested)
    if requested != "auto" and requested not in BACKENDS:
        raise ValueError(f"HERD_LLAMA_BACKEND={facts.requested!r}: expected auto, " + ", ".join(BACKENDS))
    reasons: list[str] = []
    if facts.system == "Darwin":
        if requested == "cpu":
            return Choice("cpu", "-DGGML_METAL=OFF", ("HERD_LLAMA_BACKEND=cpu on macOS: Metal off",))
        if requested not in ("auto", "metal"):
            reasons.append(f"HERD_LLAMA_BACKEND={requested} is not available on macOS")
        return Choice("metal", "", (*reasons, "macOS: Metal, llama.cpp's default there"))

    backend, args = "cpu", ""
    if requested in ("auto", "cuda"):
        if facts.nvcc and (facts.nvidia_gpu or requested == "cuda"):
            backend, args = "cuda", "-DGGML_CUDA=ON"
            if not facts.nvcc_on_path:
                args += f" -DCMAKE_CUDA_COMPILER={shlex.quote(facts.nvcc)}"
            reasons.append(
                "HERD_LLAMA_BACKEND=cuda and nvcc found"
                if requested == "cuda"
                else "an NVIDIA GPU (nvidia-smi) and the CUDA toolkit (nvcc)"
            )
        elif facts.nvidia_gpu or requested == "cuda":
            what = "HERD_LLAMA_BACKEND=cuda" if requested == "cuda" else "an NVIDIA GPU (nvidia-smi)"
            reasons.append(f"{what} but no working nvcc (CUDA toolkit): building for the CPU")
    elif requested == "vulkan":
        if facts.vulkan_sdk:
            backend, args = "vulkan", "-DGGML_VULKAN=ON"
            reasons.append("HERD_LLAMA_BACKEND=vulkan and the Vulkan SDK (glslc, headers) found")
        else:
            reasons.append("HERD_LLAMA_BACKEND=vulkan but no Vulkan SDK (glslc and headers): building for the CPU")
    elif requested == "rocm":
        if facts.rocm_root:
            backend, args = "rocm", "-DGGML_HIP=ON"
            clang = Path(facts.rocm_root) / "llvm" / "bin" / "clang"
            args += f" -DCMAKE_HIP_COMPILER={shlex.quote(str(clang))}"
            reasons.append(f"HERD_LLAMA_BACKEND=rocm and ROCm found at {facts.rocm_root}")
        else:
            reasons.append("HERD_LLAMA_BACKEND=rocm but no ROCm (hipconfig, /opt/rocm): building for the CPU")
    elif requested == "metal":
        reasons.append("HERD_LLAMA_BACKEND=metal needs macOS: building for the CPU")
    if backend == "cpu":
        reasons.append("the CPU, llama.cpp's defaults (a native build)")
    if has_amx(facts):
        args = f"{args} {AMX_WORKAROUND}".strip()
        reasons.append("the CPU reports AMX: native build with the AMX instructions off")
    return Choice(backend, args, tuple(reasons))


# ---- detection: the thin layer over this machine ------------------------------------------------------------


def _runs(cmd: list[str], expect: str = "") -> str | None:
    """The command's output when it exits 0 (and prints `expect`), else None."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0 or expect not in done.stdout:
        return None
    return done.stdout


def _cpu_flags(system: str) -> frozenset[str]:
    if system != "Linux":
        return frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _nvcc(env: Mapping[str, str]) -> tuple[str, bool]:
    on_path = shutil.which("nvcc")
    candidates = [(on_path, True)] if on_path else []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var):
            candidates.append((str(Path(env[var]) / "bin" / "nvcc"), False))
    candidates.append(("/usr/local/cuda/bin/nvcc", False))
    for path, found_on_path in candidates:
        if path and Path(path).exists() and _runs([path, "--version"]) is not None:
            return path, found_on_path
    return "", True


def _vulkan_sdk(env: Mapping[str, str]) -> bool:
    if not shutil.which("glslc"):
        return False
    if env.get("VULKAN_SDK") and Path(env["VULKAN_SDK"]).exists():
        return True
    if shutil.which("pkg-config") and _runs(["pkg-config", "--exists", "vulkan"]) is not None:
        return True
    return Path("/usr/include/vulkan/vulkan.h").exists()


def _rocm_root() -> str:
    if shutil.which("hipconfig"):
        out = _runs(["hipconfig", "-R"])
        if out and out.strip():
            return out.strip()
    return "/opt/rocm" if Path("/opt/rocm/bin/hipcc").exists() else ""


def detect(env: Mapping[str, str] | None = None) -> Facts:
    env = os.environ if env is None else env
    system = platform.system()
    requested = env.get("HERD_LLAMA_BACKEND", "").strip().lower()
    nvcc, nvcc_on_path = ("", True)
    nvidia_gpu = False
    if system != "Darwin" and requested in ("", "auto", "cuda"):
        nvidia_gpu = shutil.which("nvidia-smi") is not None and _runs(["nvidia-smi", "-L"], "GPU") is not None
        if nvidia_gpu or requested == "cuda":
            nvcc, nvcc_on_path = _nvcc(env)
    return Facts(
        system=system,
        machine=platform.machine(),
        cpu_flags=_cpu_flags(system),
        nvidia_gpu=nvidia_gpu,
        nvcc=nvcc,
        nvcc_on_path=nvcc_on_path,
        vulkan_sdk=requested == "vulkan" and _vulkan_sdk(env),
        rocm_root=_rocm_root() if requested in ("rocm", "hip") else "",
        requested=requested,
        override=env.get("HERD_LLAMA_CMAKE_ARGS"),
    )


# ---- the installed build --------------------------------------------------------------------------------------


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _library(pkg: Path) -> Path | None:
    for name in ("libllama.so", "libllama.dylib", "llama.dll", "libllama.dll"):
        if (pkg / "lib" / name).exists():
            return pkg / "lib" / name
    return None


def _library_id(pkg: Path) -> dict[str, object] | None:
    """Which built library a stamp speaks of: a rebuild replaces the file, so a stale stamp does not match."""
    lib = _library(pkg)
    if lib is None:
        return None
    st = lib.stat()
    return {"name": lib.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def build_features_match(choice: Choice, system_info: str, gpu_offload: bool) -> str:
    """ "" when what a build reports fits the choice, else why not. A custom build is taken at its stamp's word."""
    info = system_info.upper()
    if choice.backend == "custom":
        return ""
    if "AMX" in info:
        return "the build has AMX kernels (they crash on CPUs that report AMX without allowing it)"
    if choice.backend == "cpu":
        return "the build offloads to a GPU, the CPU build is wanted" if gpu_offload else ""
    if not gpu_offload:
        return f"the build has no GPU offload, {choice.backend} is wanted"
    if choice.backend == "cuda" and "CUDA" not in info:
        return "the build's GPU backend is not CUDA"
    return ""


def _gpu_offload(llama_cpp: Any, pkg: Path) -> bool:
    """Whether the build offloads to a GPU. llama_supports_gpu_offload() is true for an RPC build too (remote
    devices are offload targets), so with RPC in the build it takes a GPU backend's library beside libllama."""
    if not llama_cpp.llama_supports_gpu_offload():
        return False
    if not llama_cpp.llama_supports_rpc():
        return True
    return any(re.match(r"libggml-(cuda|vulkan|hip|metal|sycl|musa|opencl|cann)\b", f.name)
               for f in (pkg / "lib").glob("libggml-*"))


def check_installed(choice: Choice) -> str:
    """ "" when the installed llama-cpp-python is the build this choice wants, else why not. With a stamp (a build
    by install.sh) the recorded backend and CMAKE_ARGS must match; without one (an older install), what the build
    reports must fit the choice; a custom build needs its stamp."""
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "llama-cpp-python is not installed"
    if version != LLAMA_CPP_PYTHON:
        return f"llama-cpp-python {version} is installed, {LLAMA_CPP_PYTHON} is wanted"
    pkg = _package_dir()
    if pkg is None:
        return "the llama_cpp package is not found"
    stamp_path = pkg / STAMP
    if stamp_path.exists():
        try:
            stamp = json.loads(stamp_path.read_text())
        except (OSError, ValueError):
            return f"unreadable {stamp_path}"
        if stamp.get("library") != _library_id(pkg):
            return "the library was rebuilt after the stamp was written"
        if (stamp.get("backend"), stamp.get("cmake_args")) != (choice.backend, choice.cmake_args):
            return f"built for {stamp.get('backend')} with CMAKE_ARGS {stamp.get('cmake_args')!r}"
    elif choice.backend == "custom":
        return "HERD_LLAMA_CMAKE_ARGS is set and the installed build has no record of its CMAKE_ARGS"
    try:
        import llama_cpp
    except Exception as exc:  # a broken build: rebuild
        return f"llama_cpp does not import: {exc}"
    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    return build_features_match(choice, info, _gpu_offload(llama_cpp, pkg))


def write_stamp(choice: Choice) -> str:
    """After a build: "" and the stamp written when the build reports what the choice wants, else why not."""
    pkg = _package_dir()
    lib = _library_id(pkg) if pkg is not None else None
    if pkg is None or lib is None:
        return "the llama_cpp package or its library is not found"
    try:
        import llama_cpp
    except Exception as exc:
        return f"llama_cpp does not import: {exc}"
    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    why = build_features_match(choice, info, _gpu_offload(llama_cpp, pkg))
    if why:
        return why
    record = {
        "backend": choice.backend,
        "cmake_args": choice.cmake_args,
        "library": lib,
        "llama_cpp_python": LLAMA_CPP_PYTHON,
    }
    (pkg / STAMP).write_text(json.dumps(record, indent=1) + "\n")
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    for flag in ("--backend", "--explain", "--check", "--stamp"):
        mode.add_argument(flag, action="store_true")
    args = ap.parse_args(argv)
    try:
        choice = choose(detect())
    except ValueError as exc:
        print(f"llama_backend: {exc}", file=sys.stderr)
        return 2
    if args.backend:
        print(choice.backend)
    elif args.explain:
        print(f"backend: {choice.backend}\nwhy: {choice.reason}\nCMAKE_ARGS: {choice.cmake_args}")
    elif args.check or args.stamp:
        why = check_installed(choice) if args.check else write_stamp(choice)
        if why:
            print(f"llama-cpp-python: {why}", file=sys.stderr)
            return 1
    else:
        print(choice.cmake_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
