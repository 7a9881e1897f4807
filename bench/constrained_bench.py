"""Decode speed with a JSON-schema constraint against the same request without it, in one run.

    python bench/constrained_bench.py [--runs 3]

The unconstrained request is asked for the same length as the constrained answer (num_predict = its eval_count), so
both decode the same number of tokens from the same prompt.
"""

from __future__ import annotations

import argparse
import statistics

import httpx
from _common import HerdServer

MODEL = "smollm2:135m"
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "minItems": 3, "maxItems": 6},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                     "street": {"type": "string", "maxLength": 40}},
                    "required": ["city", "street"], "additionalProperties": False},
        "bio": {"type": "string", "minLength": 80, "maxLength": 300},
    },
    "required": ["name", "age", "hobbies", "address", "bio"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Describe a fictional person in detail as JSON."}]


def rate(doc: dict[str, object]) -> float:
    return float(doc["eval_count"]) / float(doc["eval_duration"]) * 1e9  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    server = HerdServer().start()
    with_c, without_c, counts = [], [], []
    try:
        with httpx.Client(base_url=server.url, timeout=600) as c:
            c.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": -1})
            for seed in range(args.runs + 1):
                opts = {"temperature": 0.8, "seed": seed, "num_predict": 512}
                constrained = c.post("/api/chat", json={"model": MODEL, "messages": MESSAGES, "stream": False,
                                                        "format": SCHEMA, "options": opts}).json()
                n = int(constrained["eval_count"])
                plain = c.post("/api/chat", json={"model": MODEL, "messages": MESSAGES, "stream": False,
                                                  "options": {**opts, "num_predict": n}}).json()
                if seed == 0:
                    continue  # warm-up: first grammar build, tokenizer bridge
                with_c.append(rate(constrained))
                without_c.append(rate(plain))
                counts.append((n, int(plain["eval_count"])))
    finally:
        server.stop()
    a, b = statistics.median(with_c), statistics.median(without_c)
    print(f"tokens per run (constrained, plain): {counts}")
    print(f"decode tok/s with JSON-schema constraint: {a:.1f}")
    print(f"decode tok/s without constraint:          {b:.1f}")
    print(f"cost of the constraint: {(1 - a / b) * 100:.1f}% (target <= 10%)")


if __name__ == "__main__":
    main()
