"""The event loop's worst stall while herd does heavy things, measured inside the server, before and after.

    python bench/loop_lag.py                          # this tree, and the last commit's tree if /tmp/herd-before has it
    python bench/loop_lag.py --before /tmp/herd-before --big-mb 1024 --vocab 256000
    python bench/loop_lag.py --only after --big-mb 64 # a quick look at this tree alone

The figure is the probe of `herd/api/loop_probe.py`: a task on the server's event loop that sleeps 10 ms at a time
and records how late it wakes. A late wake-up is time the loop spent without yielding, which every running stream
waits too. Each server is started by this script (a small launcher around `create_app`) with the probe installed,
taken from this tree's file, so an older tree that lacks the module is measured the same way. Make the old tree with
`mkdir -p /tmp/herd-before && git -C /work/main archive HEAD | tar -x -C /tmp/herd-before`.

The cases, in turn, each on a freshly started server with the same store:
  vocab-show   /api/show of a model whose GGUF has a 256k-token vocabulary and 256k merges, never read before
  vocab-chat   the first /api/chat of another such model (its weights are a stub, so the answer is an error; what
               counts is the loop while the header is read and the runner tries to load it)
  big-model    a 1 GB GGUF uploaded through /api/blobs, /api/create from it, /api/copy, then /api/delete of both.
               herd's /api/copy writes one manifest (as Ollama's does), so the bytes move in the upload and the
               create; both are measured here, with the copy and the delete that unlinks the blob
  tags-20      /api/tags listing 20 models (cold: the first listing reads every header; then 10 warm ones)
  streams-8    8 streamed chats of the default model at once
Target: worst stall <= 50 ms in each case. Figures from a busy machine are noisy; never a pass/fail.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench._common import stream_chats  # noqa: E402
from tests.integration.server import free_port  # noqa: E402

MODEL = "smollm2:135m"
PROBE = "/api/herd/loop"
TARGET_MS = 50.0

# The launcher: the tree's own create_app and DrainingServer, plus this tree's probe if the app has none. Run with
# -c, so multiprocessing's spawned runners do not re-import a script.
_CHILD = r"""
import importlib.util, sys
import uvicorn
from herd.app import create_app
from herd.config import Settings
from herd.serving import DrainingServer
settings = Settings.from_env()
app = create_app(settings)
if not any(getattr(r, "path", None) == "/api/herd/loop" for r in app.routes):
    spec = importlib.util.spec_from_file_location("herd_bench_loop_probe", sys.argv[1])
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    probe.install(app, force=True)
config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=5)
DrainingServer(config, app, settings.shutdown_grace_s).run()
"""


# ---- model files ---------------------------------------------------------------------------------------------


def write_vocab_gguf(path: Path, n_vocab: int, salt: str) -> None:
    """A llama GGUF whose metadata has an n_vocab-token vocabulary and as many merges; one 4x4 tensor of weights."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"vocab-{salt}")
    w.add_context_length(2048)
    w.add_embedding_length(4)
    w.add_block_count(1)
    w.add_head_count(1)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([f"{salt}{i}" for i in range(n_vocab)])
    w.add_token_types([1] * n_vocab)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_merges([f"{salt}{i} x{i}" for i in range(n_vocab)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{% for m in messages %}{{ m.content }}\n{% endfor %}")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def write_big_gguf(path: Path, size_mb: int) -> None:
    """A GGUF with one F32 tensor of size_mb MiB, written as a sparse file (instant, no disk used until uploaded)."""
    n = size_mb * (1 << 20) // 4
    kv = [("general.architecture", 8, _gguf_string("llama")), ("llama.context_length", 4, struct.pack("<I", 2048)),
          ("llama.embedding_length", 4, struct.pack("<I", 4)), ("llama.block_count", 4, struct.pack("<I", 1))]
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kv))
    for key, kind, value in kv:
        head += _gguf_string(key) + struct.pack("<I", kind) + value
    head += _gguf_string("token_embd.weight") + struct.pack("<I", 1) + struct.pack("<Q", n) + struct.pack("<IQ", 0, 0)
    head += b"\0" * (-len(head) % 32)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + n * 4)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def build_store(models_dir: Path, work: Path, n_vocab: int) -> dict[str, str]:
    """The store every server starts from: the default model, 16 copies of it, and three 256k-vocabulary models
    (distinct blobs, so each is a first read). 20 models in all."""
    from herd.registry.default_model import register_default_model
    from herd.registry.names import ModelName
    from herd.registry.store import CONFIG_MEDIA_TYPE, LAYER_PREFIX, Layer, Manifest, Store

    store = Store(models_dir)
    register_default_model(store)
    base = store.find(MODEL).manifest
    for i in range(16):
        store.write_manifest(ModelName.parse(f"copy{i:02d}"), base)
    names = {}
    for label in ("show", "chat", "tags"):
        path = work / f"vocab-{label}.gguf"
        write_vocab_gguf(path, n_vocab, label)
        digest, size = store.add_blob_file(path)
        config = store.write_blob(json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
        manifest = Manifest(config=Layer(CONFIG_MEDIA_TYPE, config.digest, config.size),
                            layers=(Layer(LAYER_PREFIX + "model", digest, size),))
        names[label] = f"vocab-{label}"
        store.write_manifest(ModelName.parse(names[label]), manifest)
        path.unlink()
    return names


# ---- the server ----------------------------------------------------------------------------------------------


class Server:
    def __init__(self, src: Path, models_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(src), "OLLAMA_HOST": f"127.0.0.1:{self.port}",
                    "HERD_MODELS": str(models_dir), "HERD_LOOP_PROBE": "1"}
        self.env.pop("OLLAMA_MODELS", None)
        self.log = Path(tempfile.mkstemp(prefix="herd-looplag-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> Server:
        probe = ROOT / "src" / "herd" / "api" / "loop_probe.py"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(probe)], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + PROBE, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def probe(self) -> dict[str, object]:
        return httpx.get(self.url + PROBE, timeout=30).json()  # type: ignore[no-any-return]


def measure(server: Server, action: Callable[[httpx.Client], str]) -> tuple[float, float, str]:
    """(worst lag ms, wall s, note) for one action, the probe window opened just before it."""
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(300, connect=10)) as c:
        time.sleep(0.3)
        server.probe()  # opens the window
        t0 = time.monotonic()
        note = action(c)
        wall = time.monotonic() - t0
        time.sleep(0.05)  # a stall at the very end still shows up in this window
        doc = server.probe()
    return float(doc["worst_lag_ms"]), wall, note  # type: ignore[arg-type]


# ---- the cases -----------------------------------------------------------------------------------------------


def case_idle(c: httpx.Client) -> str:
    time.sleep(1.0)
    return "1 s with nothing to do: the probe's own noise"


def case_vocab_show(names: dict[str, str]) -> Callable[[httpx.Client], str]:
    def run(c: httpx.Client) -> str:
        r = c.post("/api/show", json={"model": names["show"]})
        return f"show {r.status_code}"
    return run


def case_vocab_chat(names: dict[str, str]) -> Callable[[httpx.Client], str]:
    def run(c: httpx.Client) -> str:
        r = c.post("/api/chat", json={"model": names["chat"], "messages": [{"role": "user", "content": "hi"}],
                                      "stream": False, "options": {"num_predict": 1}}, timeout=180)
        return f"chat {r.status_code}"
    return run


def case_big(path: Path, digest: str) -> Callable[[httpx.Client], str]:
    def run(c: httpx.Client) -> str:
        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while chunk := f.read(4 << 20):
                    yield chunk
        size = path.stat().st_size
        t0 = time.monotonic()
        up = c.post(f"/api/blobs/{digest}", content=chunks(), headers={"Content-Length": str(size)}, timeout=600)
        t_up = time.monotonic() - t0
        cr = c.post("/api/create", json={"model": "big", "files": {"big.gguf": digest}, "stream": False},
                    timeout=600)
        cp = c.post("/api/copy", json={"source": "big", "destination": "big-copy"})
        d1 = c.request("DELETE", "/api/delete", json={"model": "big-copy"})
        d2 = c.request("DELETE", "/api/delete", json={"model": "big"})
        return (f"upload {up.status_code} ({size >> 20} MiB in {t_up:.1f} s), create {cr.status_code}, "
                f"copy {cp.status_code}, delete {d1.status_code}/{d2.status_code}")
    return run


def case_tags(c: httpx.Client) -> str:
    r = c.get("/api/tags")
    n = len(r.json().get("models", []))
    for _ in range(10):
        c.get("/api/tags")
    return f"{n} models listed, cold then 10 warm"


def case_streams(server: Server) -> Callable[[httpx.Client], str]:
    def run(c: httpx.Client) -> str:
        # Load first (outside nothing: the load is part of what a stream lives through here, but keep it short).
        c.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": -1})
        server.probe()  # the load is not this case: reopen the window
        bodies = [{"model": MODEL, "messages": [{"role": "user", "content": f"Count to ten, stream {i}."}],
                   "options": {"num_predict": 48, "temperature": 0, "seed": i}} for i in range(8)]
        socket.setdefaulttimeout(300)  # stream_chats' sockets: no read may wait for ever
        out = stream_chats(server.url, bodies)
        tokens = sum(n for _, n, _, _ in out)
        return f"8 streams, {tokens} tokens"
    return run


def run_tree(label: str, src: Path, args: argparse.Namespace, big: Path, big_digest: str) -> dict[str, tuple]:
    work = Path(tempfile.mkdtemp(prefix=f"herd-looplag-{label}-"))
    models = work / "models"
    names = build_store(models, work, args.vocab)
    server = Server(src, models).start()
    results: dict[str, tuple] = {}
    try:
        cases: list[tuple[str, Callable[[httpx.Client], str]]] = [
            ("idle", case_idle),
            ("vocab-show", case_vocab_show(names)),
            ("vocab-chat", case_vocab_chat(names)),
            ("big-model", case_big(big, big_digest)),
            ("tags-20", case_tags),
            ("streams-8", case_streams(server)),
        ]
        for name, action in cases:
            if args.cases and name not in args.cases:
                continue
            try:
                results[name] = measure(server, action)
            except Exception as exc:  # one broken case must not hide the others
                results[name] = (float("nan"), 0.0, f"failed: {type(exc).__name__}: {exc}")
            worst, wall, note = results[name]
            print(f"  [{label}] {name:11} worst {worst:9.1f} ms  ({wall:5.1f} s)  {note}", flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, default=Path("/tmp/herd-before"),
                    help="a tree of the code before the change (its src/ is put on PYTHONPATH)")
    ap.add_argument("--only", choices=("before", "after"), help="measure one tree only")
    ap.add_argument("--vocab", type=int, default=256_000, help="tokens (and merges) in the big-vocabulary models")
    ap.add_argument("--big-mb", type=int, default=1024, help="size of the big model in MiB")
    ap.add_argument("--cases", nargs="*", help="only these cases (idle vocab-show vocab-chat big-model tags-20 "
                    "streams-8)")
    args = ap.parse_args()

    trees: list[tuple[str, Path]] = []
    if args.only != "after":
        if (args.before / "src" / "herd").is_dir():
            trees.append(("before", args.before / "src"))
        elif args.only == "before":
            print(f"no tree at {args.before}", file=sys.stderr)
            return 2
    if args.only != "before":
        trees.append(("after", ROOT / "src"))

    scratch = Path(tempfile.mkdtemp(prefix="herd-looplag-big-"))
    try:
        big = scratch / "big.gguf"
        write_big_gguf(big, args.big_mb)
        digest = sha256_of(big)
        results = {label: run_tree(label, src, args, big, digest) for label, src in trees}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    labels = [label for label, _ in trees]
    print()
    print(f"worst event-loop stall in ms (probe every 10 ms; target <= {TARGET_MS:.0f} ms; noisy on a busy machine)")
    print(f"{'case':12}" + "".join(f"{label:>12}" for label in labels))
    names = list(dict.fromkeys(n for r in results.values() for n in r))
    for name in names:
        row = f"{name:12}"
        for label in labels:
            worst = results[label].get(name, (float("nan"),))[0]
            row += f"{worst:12.1f}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
