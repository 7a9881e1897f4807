"""Forced tool calls in every constrained model family: how many are emitted, how many are valid, and the decode speed
under the call grammar against the same model writing plain text, in one run.

    python bench/toolcall_bench.py [--requests 50] [--speed-requests 10] [--families qwen3,harmony] [--seed 0]

One `herd serve` (its own models dir, HERD_NUM_PARALLEL=1) gets one model per family, all on the default model's
weights (`/api/create` from smollm2:135m with the family's PARSER, and RENDERER harmony for Harmony). They keep the
default model's Go template, which lists the tools; "granite3" swaps its `<tool_call>` for Granite 3's
`<|tool_call|>`, which selects the list form of the Granite grammar ("granite" is the `<tool_call>` JSON form). What
is measured is herd's parser and call grammar, not how well a 135M model uses tools. Gemma 4 is left out: herd
parses its calls but does not constrain them, and `tool_choice` cannot force one (a 400).

Validity: each request offers one to three tools from a seeded generator (nested objects, string enums, arrays of
strings, numbers and objects, required and optional fields, integers, numbers, booleans, and "code"/"notes" strings
whose description asks for several lines) and forces a call (`tool_choice: "required"`, or a named function one
time in three) through `/v1/chat/completions`, stream false, temperature 0.7 with a seed per request, max_tokens 256.
A call is valid when it names an offered tool (the named one, when one was named), its arguments parse as JSON,
and they validate (Draft 2020-12) against the tool's parameters read as Ollama and herd read them: an object schema
that lists properties and says nothing of additionalProperties admits no other keys. The generator leaves
additionalProperties out of about half its objects, so that reading is checked too. Any non-200 is an error.

Decode speed: `/v1` responses carry no timings, and a streamed `/v1` response sends each tool call whole at the end,
so the first `--speed-requests` cases of each family are sent again streamed with `logprobs: true`: herd then
sends one chunk per generated token, even while the parser holds the call's text back. Tokens per second is
(chunks - 1) / (time of the last token chunk - time of the first), read by a client that only counts a marker in
the raw bytes: prefill, grammar building and loading are before the first chunk and are not counted. The plain
request is the same case without `tools` (the tool list goes into a system message as text, so the context is
about as long), asked for as many tokens as the constrained answer decoded, with the same sampling and seed; it
may stop earlier at end of text. Both sides pay the same log-softmax for the logprobs. Each family's rate is its
tokens over its time, summed over the pairs, after one warm-up pair that is not counted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema
from _common import HerdServer

from herd.registry.default_model import DEFAULT_MODEL, LIBRARY_TEMPLATE

MAX_TOKENS = 256
TEMPERATURE = 0.7
# Granite 3's template marker: its presence selects the `<|tool_call|>[...]` grammar (constrain/families.py).
GRANITE3_TEMPLATE = LIBRARY_TEMPLATE.replace("<tool_call>[", "<|tool_call|>[").replace("]</tool_call>", "]")
FAMILIES: dict[str, dict[str, str]] = {
    "harmony": {"parser": "harmony", "renderer": "harmony"},
    "qwen3": {"parser": "qwen3"},
    "qwen3-coder": {"parser": "qwen3-coder"},
    "qwen3.5": {"parser": "qwen3.5"},
    "glm-4.7": {"parser": "glm-4.7"},
    "deepseek3": {"parser": "deepseek3"},
    "granite": {"parser": "granite"},
    "granite3": {"parser": "granite", "template": GRANITE3_TEMPLATE},
    "gemma3": {"parser": "gemma3"},
}
UNCONSTRAINED = {"gemma4": "herd parses Gemma 4 calls but does not constrain them"}

# ---- the schema generator -----------------------------------------------------------------------------------------

TASKS = [
    ("create_ticket", "Open a support ticket", "the checkout page shows a blank screen after paying"),
    ("schedule_meeting", "Schedule a meeting", "a design review with the mobile team next Tuesday afternoon"),
    ("search_flights", "Search for flights", "from Lisbon to Oslo in early March for two adults"),
    ("run_snippet", "Run a code snippet", "a script that prints the first ten Fibonacci numbers"),
    ("send_email", "Send an email", "thank the caterers for the launch party and ask for the invoice"),
    ("update_inventory", "Update the stock of a product", "twelve more boxes of green tea arrived at the depot"),
    ("plan_trip", "Plan a trip", "a four-day walking holiday in the Scottish Highlands"),
    ("log_workout", "Log a workout", "a 5 km run this morning followed by stretching"),
    ("file_bug", "File a bug report", "the settings screen crashes when the language is changed"),
    ("book_table", "Book a restaurant table", "dinner for six on Friday at an Italian place downtown"),
    ("write_release_notes", "Write release notes", "version 2.4 adds dark mode and fixes the export bug"),
    ("record_expense", "Record an expense", "a taxi from the airport to the hotel during the Berlin trip"),
]
NAMES: dict[str, list[tuple[str, str]]] = {
    "string": [("title", "A short title"), ("city", "City name"), ("customer", "The customer's full name"),
               ("subject", "The subject line"), ("location", "Where it happens"), ("author", "Who wrote it"),
               ("query", "What to search for")],
    "multiline": [("code", "The source code, several lines long, one statement per line."),
                  ("notes", "Notes written as several lines of text, one point per line."),
                  ("body", "The full message body: a greeting line, two or three lines of text and a sign-off."),
                  ("steps", "The steps, one per line, at least three lines."),
                  ("changelog", "One line per change, several lines in all.")],
    "integer": [("count", "How many"), ("priority", "Priority, 1 is the highest"), ("quantity", "Number of units"),
                ("year", "The year"), ("minutes", "Duration in minutes"), ("attendees", "Number of people")],
    "number": [("price", "Price in euros"), ("weight", "Weight in kilograms"), ("latitude", "Latitude in degrees"),
               ("temperature", "Temperature in Celsius"), ("budget", "Budget in euros")],
    "boolean": [("urgent", "Whether it is urgent"), ("public", "Whether others can see it"),
                ("notify", "Send a notification"), ("dry_run", "Only pretend")],
    "enum": [("status", ["open", "pending", "closed"]), ("unit", ["metric", "imperial"]),
             ("language", ["python", "rust", "go", "javascript"]), ("level", ["low", "medium", "high", "critical"]),
             ("format", ["markdown", "plain", "html"]), ("weekday", ["monday", "tuesday", "wednesday", "thursday",
                                                                      "friday"])],
    "array_str": [("tags", "Labels"), ("emails", "Email addresses"), ("keywords", "Search keywords"),
                  ("participants", "Names of the people taking part"), ("ingredients", "What goes in")],
    "array_num": [("readings", "Measured values"), ("scores", "Scores, one per round"),
                  ("coordinates", "Latitude then longitude"), ("prices", "Prices in euros")],
    "object": [("address", "Postal address"), ("options", "Extra settings"), ("contact", "Who to contact"),
               ("window", "The time window"), ("limits", "Upper and lower bounds"), ("owner", "Who owns it")],
    "array_obj": [("items", "The line items"), ("legs", "Each part of the journey"), ("sets", "Each set done")],
}
KIND_WEIGHTS = {"string": 3, "multiline": 2, "integer": 2, "number": 1, "boolean": 1, "enum": 2, "array_str": 1,
                "array_num": 1, "object": 2, "array_obj": 1}
# Every case's first tool has at least one of these, in turn, so each appears in every run of 8 requests or more.
FEATURES = ["multiline", "enum", "object", "array_str", "array_num", "integer", "boolean", "array_obj"]


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    multiline: tuple[str, ...]  # top-level keys whose description asks for several lines

    def wire(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def _property(rng: random.Random, kind: str, label: str, depth: int) -> dict[str, Any]:
    if kind in ("string", "multiline"):
        return {"type": "string", "description": label}
    if kind in ("integer", "number", "boolean"):
        return {"type": kind, "description": label}
    if kind == "enum":
        return {"type": "string", "enum": list(label)}
    if kind == "array_str":
        return {"type": "array", "description": label, "items": {"type": "string"}}
    if kind == "array_num":
        return {"type": "array", "description": label, "items": {"type": rng.choice(["number", "integer"])}}
    sub, _ = _object(rng, depth + 1, rng.randint(2, 3), None)
    if kind == "object":
        return {**sub, "description": label}
    return {"type": "array", "description": label, "items": sub}


def _object(rng: random.Random, depth: int, n: int, must: str | None) -> tuple[dict[str, Any], list[str]]:
    """An object schema of n properties (depth 0: the arguments); the keys that ask for several lines."""
    kinds = [k for k in KIND_WEIGHTS if depth < 2 or k not in ("object", "array_obj")]
    if depth >= 1:
        kinds = [k for k in kinds if k != "array_obj"]
    props: dict[str, Any] = {}
    multiline: list[str] = []
    while len(props) < n:
        kind = must if must and not props else rng.choices(kinds, [KIND_WEIGHTS[k] for k in kinds])[0]
        free = [(k, v) for k, v in NAMES[kind] if k not in props]
        if not free:
            continue
        key, label = rng.choice(free)
        props[key] = _property(rng, kind, label, depth)
        if kind == "multiline":
            multiline.append(key)
    keys = list(props)
    required = [k for k in keys if rng.random() < 0.6] or [rng.choice(keys)]
    schema: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if rng.random() < 0.5:
        schema["additionalProperties"] = False
    return schema, multiline


@dataclass
class Case:
    tools: list[Tool]
    tool_choice: Any
    forced: str | None  # the named function, or None for "required"
    prompt: str
    seed: int


def make_case(seed: int, i: int) -> Case:
    """Request i: the same for every family."""
    rng = random.Random(seed * 1_000_003 + i)
    picked = rng.sample(TASKS, rng.randint(1, 3))
    tools = []
    for j, (name, description, _) in enumerate(picked):
        must = FEATURES[i % len(FEATURES)] if j == 0 else None
        params, multiline = _object(rng, 0, rng.randint(2, 6), must)
        tools.append(Tool(name, description + ".", params, tuple(multiline)))
    target = rng.randrange(len(tools))
    forced = tools[target].name if rng.random() < 1 / 3 else None
    choice: Any = {"type": "function", "function": {"name": forced}} if forced else "required"
    _, description, detail = picked[target]
    prompt = f"{description}: {detail}. Fill in every field you can."
    return Case(tools, choice, forced, prompt, seed * 1000 + i)


# ---- validity -----------------------------------------------------------------------------------------------------


def closed(node: Any) -> Any:
    """The schema as Ollama and herd read it: an object that lists properties and says nothing of
    additionalProperties admits no other keys (constrain/grammar.py's as_ollama_reads, without its number bounds)."""
    if isinstance(node, list):
        return [closed(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: ({p: closed(s) for p, s in v.items()} if k == "properties" and isinstance(v, dict) else closed(v))
           for k, v in node.items()}
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def check_call(call: dict[str, Any], case: Case) -> tuple[str | None, int, int]:
    """(why the call is invalid, or None; multi-line fields written; of them, with a line break)."""
    fn = call.get("function") or {}
    name = fn.get("name")
    tool = next((t for t in case.tools if t.name == name), None)
    if tool is None:
        return f"name {name!r} was not offered", 0, 0
    if case.forced and name != case.forced:
        return f"name {name!r}, but {case.forced!r} was named", 0, 0
    raw = fn.get("arguments")
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        return f"{name}: arguments are not JSON ({exc}): {str(raw)[:120]!r}", 0, 0
    try:
        jsonschema.Draft202012Validator(closed(tool.parameters)).validate(args)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return f"{name}: {where}: {exc.message[:160]}", 0, 0
    written = [args[k] for k in tool.multiline if isinstance(args, dict) and isinstance(args.get(k), str)]
    return None, len(written), sum("\n" in v.strip() for v in written)


# ---- requests -----------------------------------------------------------------------------------------------------


def body_for(model: str, case: Case, constrained: bool, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": case.prompt}]
    body: dict[str, Any] = {"model": model, "stream": False, "temperature": TEMPERATURE, "seed": case.seed,
                            "max_tokens": max_tokens}
    if constrained:
        body["tools"] = [t.wire() for t in case.tools]
        body["tool_choice"] = case.tool_choice
    else:
        # About as long a context as the tools give, so both sides decode after a similar number of positions.
        listing = json.dumps([t.wire() for t in case.tools])
        messages.insert(0, {"role": "system", "content": "You have access to the following tools:\n" + listing})
    body["messages"] = messages
    return body


TOKEN_MARK = b'"logprob"'  # once per generated token in a chunk's logprobs ("logprobs" and "top_logprobs" differ)


@dataclass
class Streamed:
    status: int
    chunks: int = 0  # token chunks
    span: float = 0.0  # seconds from the first token chunk to the last
    calls: list[dict[str, Any]] = field(default_factory=list)
    finish: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""


def stream_v1(url: str, body: dict[str, Any]) -> Streamed:
    """One streamed /v1 chat completion with logprobs, timed by a client that only counts a marker per read (on a
    2-core machine the client's CPU is taken from llama.cpp's threads); the SSE events are read afterwards."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps({**body, "stream": True, "logprobs": True, "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    first = last = 0.0
    n = 0
    parts: list[bytes] = []
    tail = b""
    try:
        conn.request("POST", "/v1/chat/completions", body=payload.encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            return Streamed(resp.status, error=resp.read().decode(errors="replace")[:300])
        while chunk := resp.read1(65536):
            seen = tail + chunk  # a marker split across two reads is counted once
            if count := seen.count(TOKEN_MARK):
                last = time.perf_counter()
                first = first or last
                n += count
            tail = seen[-(len(TOKEN_MARK) - 1):]
            parts.append(chunk)
    except (OSError, http.client.HTTPException) as exc:
        return Streamed(0, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    out = Streamed(200, chunks=n, span=last - first)
    for line in b"".join(parts).split(b"\n"):
        if not line.startswith(b"data: {"):
            continue
        doc = json.loads(line[6:])
        if doc.get("usage"):
            out.prompt_tokens = int(doc["usage"]["prompt_tokens"])
            out.completion_tokens = int(doc["usage"]["completion_tokens"])
        for choice in doc.get("choices") or []:
            out.calls += (choice.get("delta") or {}).get("tool_calls") or []
            out.finish = choice.get("finish_reason") or out.finish
    return out


# ---- the run ------------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    no_call: int = 0  # 200, but finish_reason is not tool_calls, or no call came
    calls: int = 0  # calls in answers that finished with tool_calls
    valid: int = 0
    cut_calls: int = 0  # complete calls before max_tokens cut an answer (finish_reason length): not emitted
    cut_valid: int = 0
    multiline: int = 0
    multiline_broken: int = 0
    reasons: list[str] = field(default_factory=list)
    # decode speed, summed over the timed pairs: (tokens - 1, seconds) each side
    c_tokens: int = 0
    c_time: float = 0.0
    p_tokens: int = 0
    p_time: float = 0.0
    pairs: int = 0
    c_prompt: int = 0
    p_prompt: int = 0

    @property
    def c_rate(self) -> float:
        return self.c_tokens / self.c_time if self.c_time else 0.0

    @property
    def p_rate(self) -> float:
        return self.p_tokens / self.p_time if self.p_time else 0.0

    def add(self, other: Tally) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, (int, float)):
                setattr(self, name, value + getattr(other, name))


def create_models(server: HerdServer, families: list[str]) -> None:
    with httpx.Client(base_url=server.url, timeout=600) as c:
        for fam in families:
            resp = c.post("/api/create", json={"model": f"fam-{fam}", "from": DEFAULT_MODEL, "stream": False,
                                               **FAMILIES[fam]})
            if resp.status_code != 200:
                raise SystemExit(f"creating fam-{fam}: {resp.status_code} {resp.text[:300]}")


def run_family(server: HerdServer, fam: str, cases: list[Case], speed_requests: int) -> Tally:
    model = f"fam-{fam}"
    t = Tally()
    with httpx.Client(base_url=server.url, timeout=600) as c:
        for case in cases:
            t.requests += 1
            try:
                resp = c.post("/v1/chat/completions", json=body_for(model, case, True))
            except httpx.HTTPError as exc:  # the server dropped the connection: an error, and the run goes on
                t.errors += 1
                t.reasons.append(f"{type(exc).__name__}: {exc}")
                continue
            if resp.status_code != 200:
                t.errors += 1
                t.reasons.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
                continue
            choice = resp.json()["choices"][0]
            message = choice.get("message") or {}
            calls = message.get("tool_calls") or []
            finish = choice.get("finish_reason")
            if finish != "tool_calls" or not calls:
                t.no_call += 1
                t.reasons.append(f"no call: finish_reason {finish!r}, {len(calls)} complete calls, content "
                                 f"{str(message.get('content'))[:100]!r}")
                for call in calls:  # what the model finished before the cut must be valid as well
                    t.cut_calls += 1
                    why, _, _ = check_call(call, case)
                    t.cut_valid += why is None
                    if why is not None:
                        t.reasons.append("in a cut answer: " + why)
                continue
            for call in calls:
                t.calls += 1
                why, written, broken = check_call(call, case)
                if why is None:
                    t.valid += 1
                    t.multiline += written
                    t.multiline_broken += broken
                else:
                    t.reasons.append(why)
    # Decode speed: a warm-up pair, then the first speed_requests cases again, streamed.
    timed = cases[:speed_requests]
    for k, case in enumerate(timed[:1] + timed):
        con = stream_v1(server.url, body_for(model, case, True))
        if con.status != 200 or con.chunks < 2:
            t.reasons.append(f"speed pair skipped: constrained HTTP {con.status} {con.error[:120]} "
                             f"({con.chunks} token chunks)")
            continue
        plain = stream_v1(server.url, body_for(model, case, False, max_tokens=con.chunks))
        if plain.status != 200 or plain.chunks < 2:
            t.reasons.append(f"speed pair skipped: plain HTTP {plain.status} {plain.error[:120]} "
                             f"({plain.chunks} token chunks)")
            continue
        if k == 0:
            continue  # warm-up
        t.pairs += 1
        t.c_tokens += con.chunks - 1
        t.c_time += con.span
        t.p_tokens += plain.chunks - 1
        t.p_time += plain.span
        t.c_prompt += con.prompt_tokens
        t.p_prompt += plain.prompt_tokens
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=50, help="forced-call requests per family")
    ap.add_argument("--speed-requests", type=int, default=10,
                    help="of those, how many are also timed against plain text (streamed, after a warm-up pair)")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated; known: " + ", ".join(FAMILIES))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    families = []
    for fam in (f.strip() for f in args.families.split(",") if f.strip()):
        if fam in UNCONSTRAINED:
            print(f"skipping {fam}: {UNCONSTRAINED[fam]}")
        elif fam not in FAMILIES:
            raise SystemExit(f"unknown family {fam!r} (known: {', '.join(FAMILIES)})")
        else:
            families.append(fam)
    if "gemma4" not in args.families:
        print(f"gemma4 is not measured: {UNCONSTRAINED['gemma4']}")
    cases = [make_case(args.seed, i) for i in range(args.requests)]
    server = HerdServer(env={"HERD_NUM_PARALLEL": "1"}).start()
    results: dict[str, Tally] = {}
    try:
        create_models(server, families)
        for fam in families:
            t0 = time.perf_counter()
            results[fam] = run_family(server, fam, cases, min(args.speed_requests, args.requests))
            r = results[fam]
            print(f"  {fam}: {r.valid}/{r.calls} valid, {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        server.stop()

    head = (f"{'family':<12} {'requests':>8} {'errors':>6} {'no call':>7} {'emitted':>7} {'valid':>6} "
            f"{'cut':>7} {'multi-line':>10} {'constrained tok/s':>17} {'plain tok/s':>11} {'ratio':>6}")
    print()
    print(head)
    print("-" * len(head))
    total = Tally()

    def row(name: str, r: Tally) -> None:
        ratio = f"{r.c_rate / r.p_rate:.2f}" if r.p_rate else "-"
        ml = f"{r.multiline_broken}/{r.multiline}"
        cut = f"{r.cut_valid}/{r.cut_calls}"
        print(f"{name:<12} {r.requests:>8} {r.errors:>6} {r.no_call:>7} {r.calls:>7} {r.valid:>6} {cut:>7} {ml:>10} "
              f"{r.c_rate:>17.1f} {r.p_rate:>11.1f} {ratio:>6}")

    for fam, r in results.items():
        row(fam, r)
        total.add(r)
    print("-" * len(head))
    row("total", total)
    print()
    print("emitted: calls in answers that finished with tool_calls; no call: the other 200 answers; cut: valid /")
    print("complete calls in answers max_tokens cut (not emitted); multi-line: valid calls' fields asked for several")
    print(f"lines, written with a line break / written. Speed over {total.pairs} pairs:")
    for fam, r in results.items():
        if r.pairs:
            print(f"  {fam}: {r.pairs} pairs, {r.c_tokens + r.pairs} constrained and {r.p_tokens + r.pairs} plain "
                  f"tokens; prompt tokens {r.c_prompt / r.pairs:.0f} (tools) vs {r.p_prompt / r.pairs:.0f} (plain)")
    ratios = {f: r.c_rate / r.p_rate for f, r in results.items() if r.p_rate}
    worst = min(ratios, key=ratios.__getitem__) if ratios else None
    print(f"target: every emitted call valid: {total.valid}/{total.calls} (and cut ones {total.cut_valid}/"
          f"{total.cut_calls})"
          + (f"; speed >= 0.9x: lowest ratio {ratios[worst]:.2f} ({worst})" if worst else ""))
    for fam, r in results.items():
        for why in r.reasons[:5]:
            print(f"  {fam}: {why}")
        if len(r.reasons) > 5:
            print(f"  {fam}: ... {len(r.reasons) - 5} more")


if __name__ == "__main__":
    main()
