"""Pull throughput from a registry on loopback (the test suite's fake registry, serving the default model's GGUF),
against `curl` downloading the same blob from the same registry in the same run.

    python bench/pull_bench.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time

import httpx
from _common import HerdServer, default_model_file

from tests.integration.fake_registry import FakeRegistry


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    gguf = default_model_file()
    assert gguf is not None
    reg = FakeRegistry()
    config = reg.add_blob(json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
    blob = reg.add_blob(gguf)
    reg.add_model("library/smol", "latest", config, [("model", blob)])
    size = int(blob["size"])  # type: ignore[call-overload]
    herd_rates, curl_rates = [], []
    try:
        for _ in range(args.runs):
            server = HerdServer(env={"HERD_NO_DEFAULT_MODEL": "1"}).start()
            try:
                t0 = time.perf_counter()
                with httpx.Client(base_url=server.url, timeout=600) as c:
                    resp = c.post("/api/pull", json={"model": f"{reg.host}/library/smol", "insecure": True,
                                                     "stream": False})
                    assert resp.status_code == 200, resp.text
                herd_rates.append(size / (time.perf_counter() - t0) / 1e6)
            finally:
                server.stop()
            out = tempfile.mktemp()
            t0 = time.perf_counter()
            subprocess.run(["curl", "-sfL", "-o", out, f"http://{reg.host}/v2/library/smol/blobs/{blob['digest']}"],
                           check=True)
            curl_rates.append(size / (time.perf_counter() - t0) / 1e6)
    finally:
        reg.stop()
    print(f"blob: {size / 1e6:.1f} MB")
    print(f"herd pull (incl. manifest, sha256 check, atomic rename): {statistics.median(herd_rates):.0f} MB/s")
    print(f"curl download of the same blob:                        {statistics.median(curl_rates):.0f} MB/s")


if __name__ == "__main__":
    main()
