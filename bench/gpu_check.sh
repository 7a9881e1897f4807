#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: install herd twice, with a CUDA build of llama-cpp-python and with a CPU build
# (each in its own virtual environment, through scripts/install.sh and scripts/llama_backend.py), serve the default
# model (num_gpu -1: every layer offloaded on the CUDA build), and print for each build the 1-stream and 8-stream
# decode tokens/s, /api/ps size_vram, and the runner's own placement line (layers per device, buffers, bytes in
# device memory). Prints numbers, never pass/fail on speed.
#
#   bash bench/gpu_check.sh            # builds both (CUDA takes long), then measures
#   GPU_CHECK_DIR=/tmp/x bash bench/gpu_check.sh   # where the virtual environments go (kept for a rerun)
#
# Needs nvidia-smi, nvcc (the CUDA toolkit) and what scripts/install.sh needs (pip, a compiler, cmake).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
DIR="${GPU_CHECK_DIR:-${TMPDIR:-/tmp}/herd-gpu-check}"
PY="${PYTHON:-python3}"
N_OUT="${GPU_CHECK_TOKENS:-128}"
mkdir -p "$DIR"

if ! nvidia-smi -L; then
  echo "gpu_check: nvidia-smi lists no GPU: nothing to check here" >&2
  exit 1
fi

measure() {  # $1 = backend (cuda|cpu): install into its own venv, serve, measure
  local backend="$1" venv="$DIR/venv-$1"
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  echo "== $backend: install (HERD_LLAMA_BACKEND=$backend)"
  HERD_LLAMA_BACKEND="$backend" PYTHON="$venv/bin/python" bash scripts/install.sh > "$DIR/install-$backend.log" 2>&1 \
    || { tail -30 "$DIR/install-$backend.log" >&2; exit 1; }
  grep '^llama.cpp \|^herd installed' "$DIR/install-$backend.log"
  local chosen
  chosen="$(HERD_LLAMA_BACKEND="$backend" "$venv/bin/python" scripts/llama_backend.py --backend)"
  if [ "$chosen" != "$backend" ]; then
    echo "gpu_check: asked for $backend, scripts/llama_backend.py chose $chosen (see --explain)" >&2
    exit 1
  fi
  echo "== $backend: serve and measure ($N_OUT tokens per stream, temperature 0)"
  (cd "$ROOT/bench" && GPU_CHECK_TOKENS="$N_OUT" GPU_CHECK_BACKEND="$backend" "$venv/bin/python" - <<'PYEOF'
import os
import re
import time

import httpx
from _common import HerdServer, stream_chats

MODEL = "smollm2:135m"
N_OUT = int(os.environ["GPU_CHECK_TOKENS"])
TOPICS = ["a dragon", "a knight", "a robot", "the sea", "a wizard", "a city", "a forest", "a ship"]


def body(i: int) -> dict[str, object]:
    return {"model": MODEL, "options": {"temperature": 0, "num_predict": N_OUT},
            "messages": [{"role": "user", "content": f"Write a long story about {TOPICS[i % 8]}."}]}


server = HerdServer().start()
try:
    with httpx.Client(base_url=server.url, timeout=600) as http:
        http.post("/api/chat", json={"model": MODEL, "messages": []}).raise_for_status()  # load, num_gpu -1
        stream_chats(server.url, [body(0)])  # warm-up (CUDA kernels, graphs)
        for n in (1, 8):
            t0 = time.perf_counter()
            results = stream_chats(server.url, [body(i) for i in range(n)])
            wall = time.perf_counter() - t0
            tokens = sum(int(r[2].get("eval_count", 0)) for r in results)
            per_stream = sorted(r[3] for r in results)
            print(f"{os.environ['GPU_CHECK_BACKEND']}: {n} stream(s): {tokens} tokens in {wall:.2f}s = "
                  f"{tokens / wall:.1f} tok/s in all (prompts included); decode per stream "
                  f"{per_stream[0]:.1f}-{per_stream[-1]:.1f} tok/s")
        for m in http.get("/api/ps").json()["models"]:
            print(f"/api/ps: {m['name']} size {m['size']} size_vram {m['size_vram']}")
    log = server.log.read_text(errors="replace")
    for line in re.findall(r"^herd(?: runner \d+)?: .*$", log, re.M):
        print(line)
finally:
    server.stop()
PYEOF
  )
}

measure cuda
measure cpu
