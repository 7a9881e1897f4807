"""Speculative decoding against one token per step (issue 18), in one run.

For each model file (the default model, Q4_1, and the same weights requantized to F16 by llama.cpp's quantize;
see spec_cost.py), for each workload and for 1 and 8 concurrent streams, the decode rate of:

- raw: the one-token llama.cpp loop through llama-cpp-python's low-level API (bench/_common.py RawLlama) on the
  same prompt tokens as herd's (herd's own rendering, `_debug_render_only`), greedy; with 8 streams, the 8
  sequences batched, one token each per step. It decodes as many tokens as herd's answers have on average;
- off: `herd serve` with HERD_SPECULATIVE=0;
- on: `herd serve` with HERD_SPECULATIVE=1 (the default);
- noff: on, but HERD_SPEC_FASTFORWARD=0 (grammar fast-forward off), for the JSON-schema workload only.

Workloads: (a) code: reproduce a ~300-token Python file with one change; (b) quotes: answer with quotes from a
~1,000-token document; (c) chat: free chat; (d) json: a JSON-schema answer with long fixed keys (`format`).
With 8 streams each stream has its own variant (another change, question, topic, email). Every request is
temperature 0, a fixed seed and num_predict --out. All servers share one temporary model store; the F16 file is
uploaded (/api/blobs) and created (/api/create `files`) with the default model's template, system and parameters,
so both models see the same prompt text.

Every measurement starts from a fresh runner (the model is unloaded first), so that the servers differ only in
their settings. Each measured set of requests is then first sent with num_predict 1, again until the runner's
prompt_evaluated counter says every prompt was found in a slot (one pass does not always place concurrent arrivals
in their own slots), so the measured decode is not shared with other streams' prefill.

Figures (per workload, streams and model):

- decode rate: 1 stream: eval_count / eval_duration of the answer. 8 streams: the sum of eval_count over the 8
  answers / the longest eval_duration (they start together, so this is the aggregate rate over the decode).
- From herd's runner counters (GET /api/herd/runners, diffed around the measured requests of the `on` server):
  S = spec_steps (sequence-steps that verified at least one proposed token), P = spec_proposed, A = spec_accepted,
  F = ff_tokens (appended by grammar fast-forward); N = sum of eval_count. Shown: k = P / S proposals verified per
  verify step, tok/vstep = (S + A) / S tokens a verify step yields (its accepted proposals plus the token sampled
  after them), acc = A / P.
- predicted: the speed-up over a one-token-per-step decoder that the cost curve c(n) (spec_cost.py: the time of a
  step of n tokens of one sequence, over a one-token step) predicts from those counters. Every sequence-step
  samples one token, so there are N - A - F sequence-steps; S of them verify, with 1 + k positions each; the others
  are plain, and the F fast-forwarded tokens ride along in those (f = F / (N - A - F - S) extra positions each;
  if there are no plain steps, in the verify steps). With 1 stream:
      predicted = N / (S * c(1 + k) + (N - A - F - S) * c(1 + f))
  The verify steps alone would give (1 + A/S) / c(1 + k), shown as pred/vstep.
  With 8 streams llama.cpp splits the batch (one KV stream per sequence) into ubatches of equally many tokens
  per sequence: (N - A - F) / 8 one-token-each passes of time t8, and each of the S verify sequence-steps adds a
  pass of its k proposals, c1(k) one-sequence steps of time t1 (forced tokens are counted as riding along):
      predicted = (N / 8) * t8 / ((N - A - F) / 8 * t8 + S * c1(k) * t1)
  The one-stream curve of (b) is measured at its document's depth. Curves are measured in this run, before the
  servers start (--cost-repeats, 0: skip, no predictions).
- on/off (measured speed-up), meas/pred = (on/off) / predicted, on/raw, on/noff; same = answers of `on` whose text
  equals `off`'s (at temperature 0 speculation must not change the text); with --repeats >= 2 also off/off, the
  answers of `off` that were the same in every repeat: a difference there is batched-kernel drift (which
  sequences share a step changes the arithmetic), not speculation.

Targets are printed next to the figures they apply to: meas/pred >= 0.9 everywhere; on F16, (a) on/raw >= 1.8 and
(d) on/noff >= 1.5; on Q4_1 and at 8 streams, on/off >= 0.97. Counters a herd without them lacks print "n/a".

    python bench/speculative_bench.py [--quick] [--models q4_1,f16] [--workloads a,b,c,d] [--streams 1,8]
                                      [--out 256] [--doc-tokens 1000] [--repeats 1] [--cost-repeats 15]

The full run is sized for < 15 minutes on a quiet 2-core machine (the cost curves take ~3 of them; give
--cost-repeats 0 and read spec_cost.py's tables to skip them); --quick is a ~2-minute smoke run: the default model
only, 1 and 4 streams, num_predict 32, a 300-token document, short cost curves of 3 repeats. Anything else running
on the machine makes every figure meaningless: check the load average first. Prints numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _common import HerdServer, RawLlama, stream_chats
from spec_cost import Curve, measure, model_files

from herd.engine.tokenizer import get_tokenizer

DEFAULT_MODEL = "smollm2:135m"
F16_MODEL = "spec-bench-f16:latest"
COUNTERS = ("spec_steps", "spec_proposed", "spec_accepted", "ff_tokens")
SEED = 42

CODE = '''"""A small inventory of items in a shop, with reorder rules."""

from dataclasses import dataclass, field


@dataclass
class Item:
    name: str
    price: float
    quantity: int = 0
    reorder_level: int = 5
    tags: list[str] = field(default_factory=list)

    def needs_reorder(self) -> bool:
        return self.quantity <= self.reorder_level


class Inventory:
    def __init__(self) -> None:
        self.items: dict[str, Item] = {}

    def add(self, item: Item) -> None:
        if item.name in self.items:
            raise ValueError(f"duplicate item: {item.name}")
        self.items[item.name] = item

    def remove(self, name: str) -> Item:
        return self.items.pop(name)

    def total_value(self) -> float:
        return sum(item.price * item.quantity for item in self.items.values())

    def to_reorder(self) -> list[str]:
        return sorted(name for name, item in self.items.items() if item.needs_reorder())

    def tagged(self, tag: str) -> list[Item]:
        return [item for item in self.items.values() if tag in item.tags]
'''
CODE_CHANGES = [
    "rename the method `total_value` to `stock_value`",
    "change the default `reorder_level` from 5 to 10",
    "rename the class `Item` to `Product` everywhere",
    "make `remove` return None instead of the item",
    "rename the method `tagged` to `with_tag`",
    "change the error message to say `item already exists`",
    "rename the attribute `items` of Inventory to `stock`",
    "change the docstring to say `A shop's inventory`",
]

# Made up, so that the model cannot answer from memory; distinct paragraphs, so that prompt lookup finds copies
# only where the answer quotes.
DOCUMENT = [
    "Annual report of the Millbrook Water Cooperative, year 2023. The cooperative supplies drinking water to "
    "4,870 households in Millbrook and the three villages of the upper valley. It is owned by its members, who "
    "elect a board of seven at the general meeting each March. This report covers the water sources, the "
    "network, the finances, the staff and the plans for the next five years.",
    "The main source remains the Harlow spring, which gave an average of 2.9 million litres a day, slightly "
    "less than the 3.1 million of the year before. The dry summer lowered the spring's flow to 2.2 million "
    "litres a day in August, the lowest since records began in 1987. For eleven days the cooperative drew "
    "extra water from the old borehole at Fenwick Farm, which had been kept in reserve since 2015.",
    "Water quality met every limit of the national standard in all 1,316 samples taken during the year. Two "
    "samples from the Ashby reservoir showed manganese close to the limit in October, after heavy rain stirred "
    "the sediment. The reservoir was flushed and the next samples were normal. Nitrate levels stayed well below "
    "the limit, at an average of 11 milligrams per litre.",
    "The network has 212 kilometres of pipe. Leaks lost about 14 percent of the water pumped, down from 19 "
    "percent in 2021, thanks to the acoustic loggers installed on the oldest mains. The crew repaired 96 leaks, "
    "most of them on cast-iron pipes laid before 1960. Replacing the 8 kilometres of cast iron under the "
    "Millbrook high street is the largest project of the plan.",
    "Income from water charges was 3.42 million euros, and connection fees brought in another 180,000 euros. "
    "Spending on energy rose by 31 percent, because the price of electricity for the pumps nearly doubled in "
    "the first half of the year. The board decided not to raise the water charge in 2023, and to cover the "
    "difference from the reserve fund, which fell from 1.9 to 1.6 million euros.",
    "The cooperative employs 23 people: eleven in the network crew, five at the treatment works, four in the "
    "office and three meter readers. Two meter readers will retire next year and will not be replaced, as the "
    "smart meters now being fitted send their readings by radio. By December, 2,140 households had a smart "
    "meter, and the rest will have one by the end of 2025.",
    "Members raised three questions at the general meeting. The first was whether the Fenwick borehole could "
    "be used every summer; the board answered that its water is harder and needs softening, which costs about "
    "twice as much per litre. The second asked for a discount for large families, which the board will study. "
    "The third asked why the high street works will take two years; the answer was that the road can only be "
    "closed in short sections, to keep the shops open.",
    "The plan for 2024 to 2028 has four parts: replace the cast-iron mains, finish the smart meters, build a "
    "second reservoir of 5,000 cubic metres at Ashby, and fit solar panels at the pumping station to cut the "
    "energy bill. The total cost is estimated at 9.8 million euros, of which 4 million would come from a "
    "regional grant that the cooperative applied for in November. The rest would be a loan over twenty years.",
    "The treatment works at Ashby filter the spring water through sand and then treat it with ultraviolet light "
    "before a small dose of chlorine is added for the network. The sand filters were cleaned four times during "
    "the year instead of the usual six, because the spring water carried less silt in the dry months. One of "
    "the two ultraviolet units failed in June and was repaired within a day; the second unit carried the whole "
    "flow in the meantime, as it is designed to do.",
    "Customers made 412 complaints during the year, most of them about low pressure in the upper valley during "
    "August and about the taste of chlorine after the October flushing. The office answered 95 percent of the "
    "complaints within five working days. A new telephone line for reporting leaks was opened in April and "
    "received 230 calls, which led to 61 of the 96 repairs made by the network crew.",
    "The board thanks the staff for their work during the dry summer, and the members of the upper valley "
    "villages for accepting the request to save water in August, when use fell by 18 percent in two weeks. The "
    "next general meeting will be held on the 14th of March 2024 in the Millbrook town hall, at seven in the "
    "evening.",
]
QUESTIONS = [
    "What happened to the Harlow spring during the dry summer?",
    "What did the report say about water quality and the Ashby reservoir?",
    "How much water did leaks lose, and what was done about it?",
    "Why did spending on energy rise, and how was the difference covered?",
    "What will happen to the meter readers, and why?",
    "What questions did members raise at the general meeting?",
    "What are the four parts of the plan for 2024 to 2028 and what do they cost?",
    "When and where is the next general meeting?",
]

CHATS = [
    "Write a long story about a dragon who is afraid of the dark.",
    "What should I pack for a week of hiking in the mountains in autumn?",
    "Explain how a refrigerator keeps food cold.",
    "Write a letter to a friend about your new job at a bakery.",
    "Give me ideas for a birthday party for a ten-year-old.",
    "Describe a day in the life of a lighthouse keeper.",
    "Why do cats purr? Tell me everything you know.",
    "Write a story about a robot that learns to paint.",
]

# Long keys, all required and in order, no extra properties: most of the answer's tokens are fixed by the schema,
# which is what grammar fast-forward appends without a forward pass each.
SCHEMA = {
    "type": "object",
    "properties": {
        "customer_full_legal_name": {"type": "string", "maxLength": 60},
        "customer_primary_email_address": {"type": "string", "maxLength": 60},
        "shipping_address_street_and_house_number": {"type": "string", "maxLength": 60},
        "shipping_address_city_or_town_name": {"type": "string", "maxLength": 40},
        "shipping_address_postal_code": {"type": "string", "maxLength": 12},
        "order_contains_fragile_items_requiring_care": {"type": "boolean"},
        "line_items_in_this_order": {
            "type": "array",
            "minItems": 1,
            "maxItems": 4,
            "items": {
                "type": "object",
                "properties": {
                    "product_description_text": {"type": "string", "maxLength": 50},
                    "quantity_ordered_in_units": {"type": "integer", "minimum": 1, "maximum": 999},
                    "unit_price_in_euros_including_tax": {"type": "number"},
                },
                "required": [
                    "product_description_text",
                    "quantity_ordered_in_units",
                    "unit_price_in_euros_including_tax",
                ],
                "additionalProperties": False,
            },
        },
        "special_handling_instructions_for_the_courier": {"type": "string", "maxLength": 80},
    },
    "required": [
        "customer_full_legal_name",
        "customer_primary_email_address",
        "shipping_address_street_and_house_number",
        "shipping_address_city_or_town_name",
        "shipping_address_postal_code",
        "order_contains_fragile_items_requiring_care",
        "line_items_in_this_order",
        "special_handling_instructions_for_the_courier",
    ],
    "additionalProperties": False,
}
EMAILS = [
    (
        "Anna Berg",
        "anna.berg@example.com",
        "Lindenweg 12",
        "Uppsala",
        "75310",
        "two glass vases at 24.50 each and one linen tablecloth at 39.00",
        "please ring twice",
    ),
    (
        "Tomas Novak",
        "t.novak@example.org",
        "Vinohradska 88",
        "Prague",
        "12000",
        "one espresso machine at 249.00",
        "leave it with the neighbour at number 86",
    ),
    (
        "Maria Lopez",
        "maria.lopez@example.net",
        "Calle Mayor 5",
        "Madrid",
        "28013",
        "three ceramic bowls at 12.00 each and two wooden spoons at 4.50 each",
        "fragile, handle with care",
    ),
    (
        "John Okafor",
        "j.okafor@example.com",
        "14 Kings Road",
        "Leeds",
        "LS1 4AB",
        "one desk lamp at 45.99 and four light bulbs at 3.25 each",
        "deliver after 5 pm",
    ),
    (
        "Lena Fischer",
        "lena.f@example.de",
        "Hauptstrasse 101",
        "Freiburg",
        "79098",
        "a set of six wine glasses at 59.90",
        "the box must stay upright",
    ),
    (
        "Pierre Martin",
        "pierre.martin@example.fr",
        "8 rue des Lilas",
        "Lyon",
        "69003",
        "two cast-iron pans at 79.00 each",
        "call before delivery",
    ),
    (
        "Sofia Rossi",
        "sofia.rossi@example.it",
        "Via Roma 23",
        "Turin",
        "10121",
        "one mirror at 120.00 and one picture frame at 18.00",
        "fragile glass, do not stack",
    ),
    (
        "Jan de Vries",
        "jan.devries@example.nl",
        "Keizersgracht 300",
        "Amsterdam",
        "1016 EZ",
        "five notebooks at 6.75 each and one fountain pen at 32.00",
        "no special instructions",
    ),
]


@dataclass
class Measured:
    rate: float  # decode tokens/s (aggregate over the streams)
    tokens: int  # sum of eval_count
    texts: list[str] = field(default_factory=list)
    counters: dict[str, int] | None = None  # diff of the runner's speculation counters; None: absent


@dataclass
class Row:
    model: str
    workload: str
    streams: int
    herd: dict[str, Measured] = field(default_factory=dict)
    raw: float = 0.0
    predicted: float | None = None
    pred_vstep: float | None = None
    off_texts: list[list[str]] = field(default_factory=list)  # every repeat's, to tell drift from speculation


def document(doc_tokens: int, count) -> str:  # type: ignore[no-untyped-def]
    """The first paragraphs of DOCUMENT that reach doc_tokens (all of them if they do not)."""
    parts: list[str] = []
    for para in DOCUMENT:
        parts.append(para)
        if count("\n\n".join(parts)) >= doc_tokens:
            break
    return "\n\n".join(parts)


def email(i: int) -> str:
    name, mail, street, city, code, items, note = EMAILS[i % len(EMAILS)]
    return (
        f"Hello, this is {name} ({mail}). I would like to order {items}. Please send it to {street}, "
        f"{code} {city}. A note for the courier: {note}. Thank you!"
    )


def bodies(workload: str, n: int, model: str, out: int, doc: str) -> list[dict[str, object]]:
    opts = {"temperature": 0, "seed": SEED, "num_predict": out}
    result = []
    for i in range(n):
        fmt: object = None
        if workload == "a":
            text = (
                f"Here is a Python file:\n\n```python\n{CODE}```\n\nRewrite the whole file with one change: "
                f"{CODE_CHANGES[i % len(CODE_CHANGES)]}. Reply with the complete file and nothing else."
            )
        elif workload == "b":
            text = (
                f"Document:\n\n{doc}\n\nQuestion: {QUESTIONS[i % len(QUESTIONS)]}\nAnswer by quoting the "
                "relevant sentences of the document word for word."
            )
        elif workload == "c":
            text = CHATS[i % len(CHATS)]
        else:
            text = f"Extract the order in this email as JSON.\n\n{email(i)}"
            fmt = SCHEMA
        body: dict[str, object] = {
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "options": dict(opts),
            "keep_alive": -1,
            "stream": False,
        }
        if fmt is not None:
            body["format"] = fmt
        result.append(body)
    return result


def runner_row(http: httpx.Client, model: str) -> dict[str, object]:
    """`model`'s chat runner in herd's runner view, from an answer newer than this call (bounded wait)."""
    want = {model, model + ":latest", model.removesuffix(":latest")}
    time.sleep(0.05)
    row: dict[str, object] = {}
    for _ in range(40):
        rows = [
            r for r in http.get("/api/herd/runners").json()["runners"] if r["model"] in want and r["kind"] == "chat"
        ]
        if rows:
            row = rows[0]
            if float(row.get("counters_age_s", 99)) < 0.2:  # type: ignore[arg-type]
                break
        time.sleep(0.1)
    return row


def counters(row: dict[str, object]) -> dict[str, int] | None:
    """The speculation counters of a runner row; None where the runner does not report them."""
    if not all(isinstance(row.get(k), int) for k in COUNTERS):
        return None
    return {k: int(row[k]) for k in COUNTERS}  # type: ignore[call-overload]


def warm(server: HerdServer, reqs: list[dict[str, object]], model: str) -> None:
    """Send the requests with num_predict 1 until each finds its prompt in a slot of its own.

    One pass is not always enough: concurrent arrivals can be given slots that held another stream's prompt.
    Cached means the pass evaluated at most a few tokens per request (the runner's prompt_evaluated counter);
    a runner without that counter gets two passes."""
    short = [{**b, "options": {**b["options"], "num_predict": 1}} for b in reqs]  # type: ignore[dict-item]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for attempt in range(5):
            before = runner_row(http, model).get("prompt_evaluated")
            stream_chats(server.url, short)
            after = runner_row(http, model).get("prompt_evaluated")
            if isinstance(before, int) and isinstance(after, int):
                if after - before <= 16 * len(reqs):
                    return
            elif attempt >= 1:
                return


def run_herd(server: HerdServer, reqs: list[dict[str, object]], model: str) -> Measured:
    warm(server, reqs, model)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        before = counters(runner_row(http, model))
        results = stream_chats(server.url, reqs)
        after = counters(runner_row(http, model))
    finals = [final for _, _, final, _ in results]
    for f in finals:
        if "eval_count" not in f:
            raise RuntimeError(f"herd answered without eval_count: {str(f)[:300]}")
    tokens = sum(int(f["eval_count"]) for f in finals)  # type: ignore[call-overload]
    longest = max(int(f["eval_duration"]) for f in finals)  # type: ignore[call-overload]
    texts = [str(f.get("message", {}).get("content", "")) for f in finals]  # type: ignore[attr-defined]
    diff = {k: after[k] - before[k] for k in COUNTERS} if before is not None and after is not None else None
    return Measured(tokens / longest * 1e9 if longest else 0.0, tokens, texts, diff)


def ensure_f16(server: HerdServer, path: Path) -> str:
    """Create F16_MODEL in the server's store from the GGUF at `path`, with the default model's template,
    system prompt and parameters (so prompts render the same)."""
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    with httpx.Client(base_url=server.url, timeout=600) as http:
        if http.head(f"/api/blobs/{digest}").status_code != 200:
            with open(path, "rb") as f:
                up = http.post(f"/api/blobs/{digest}", content=f)
            assert up.status_code in (200, 201), up.text
        show = http.post("/api/show", json={"model": DEFAULT_MODEL}).json()
        body: dict[str, object] = {
            "model": F16_MODEL,
            "files": {path.name: digest},
            "stream": False,
            "template": show.get("template", ""),
        }
        if show.get("system"):
            body["system"] = show["system"]
        params = parse_parameters(str(show.get("parameters", "")))
        if params:
            body["parameters"] = params
        made = http.post("/api/create", json=body)
        assert made.status_code == 200, made.text
    return F16_MODEL


def parse_parameters(text: str) -> dict[str, object]:
    """Ollama's /api/show `parameters` text (`name value` lines, strings quoted, a name repeated for a list)
    back into /api/create's `parameters` object."""
    out: dict[str, object] = {}
    for line in text.splitlines():
        name, _, value = line.strip().partition(" ")
        value = value.strip()
        if not name:
            continue
        parsed: object
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            parsed = value[1:-1]
        else:
            try:
                parsed = int(value)
            except ValueError:
                try:
                    parsed = float(value)
                except ValueError:
                    parsed = value
        if name == "stop":
            out.setdefault("stop", []).append(parsed)  # type: ignore[attr-defined]
        else:
            out[name] = parsed
    return out


def unload(server: HerdServer, model: str) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        http.post("/api/chat", json={"model": model, "messages": [], "keep_alive": 0})


def predict(row: Row, curves: dict[int, Curve]) -> None:
    """curves: by stream count, and -1 for one stream at the depth of (b)'s document."""
    m = row.herd.get("on")
    deep = row.workload.startswith("b")
    curve = curves.get(-1 if deep and row.streams == 1 else row.streams)
    if m is None or m.counters is None or curve is None:
        return
    n_tok = m.tokens
    s, p, a, f = (m.counters[k] for k in COUNTERS)
    steps = n_tok - a - f
    if steps <= 0:
        return
    if row.streams == 1:
        plain = steps - s
        if plain > 0:
            cost = (s * curve.cost(1 + p / s) if s else 0.0) + plain * curve.cost(1 + f / plain)
        else:
            cost = s * curve.cost(1 + (p + f) / s)
        if s:
            row.pred_vstep = (1 + a / s) / curve.cost(1 + p / s)
    else:
        # llama.cpp splits a batch over per-sequence KV streams into ubatches of equally many tokens per sequence:
        # the one-token-each pass, then each verifying sequence's proposals in a pass of their own (cost c1(k) in
        # one-sequence steps); forced tokens are counted as riding in those passes (optimistic).
        single = curves.get(-1 if deep else 1)
        if single is None:
            return
        t_n, t_1 = curve.base(), single.base()
        base_steps = steps / row.streams
        cost = base_steps * t_n + (s * single.cost(p / s) * t_1 if s else 0.0)
        row.predicted = (n_tok / row.streams) * t_n / cost
        return
    row.predicted = n_tok / cost


def fmt(x: float | None, digits: int = 2, target: str = "") -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}" + (f" ({target})" if target else "")


def ratio(a: Measured | None, b: Measured | float | None) -> float | None:
    rb = b.rate if isinstance(b, Measured) else b
    if a is None or not rb:
        return None
    return a.rate / rb


def print_table(rows: list[Row]) -> None:
    print()
    print(
        "| model | workload | streams | raw tok/s | off tok/s | on tok/s | noff tok/s | verify steps | k/vstep "
        "| tok/vstep | acc | ff tok | pred/vstep | predicted | on/off | meas/pred | on/raw | on/noff | same |"
    )
    print("|" + "---|" * 19)
    for r in rows:
        on, off, noff = r.herd.get("on"), r.herd.get("off"), r.herd.get("noff")
        c = on.counters if on else None
        s, p, a, f = (c[k] for k in COUNTERS) if c else (0, 0, 0, 0)
        on_off = ratio(on, off)
        meas_pred = on_off / r.predicted if on_off is not None and r.predicted else None
        t_onoff = ">=0.97" if (r.model.startswith("q4_1") or r.streams > 1) else ""
        t_raw = ">=1.8" if r.model.startswith("f16") and r.workload.startswith("a") else ""
        t_noff = ">=1.5" if r.model.startswith("f16") and r.workload.startswith("d") else ""
        same = "n/a"
        if on and off and on.texts and off.texts:
            same = f"{sum(x == y for x, y in zip(on.texts, off.texts))}/{len(on.texts)}"
        if len(r.off_texts) > 1:
            first = r.off_texts[0]
            steady = sum(all(t[i] == first[i] for t in r.off_texts[1:]) for i in range(len(first)))
            same += f"; off/off {steady}/{len(first)}"
        cells = [
            r.model,
            r.workload,
            str(r.streams),
            fmt(r.raw or None, 1),
            fmt(off.rate if off else None, 1),
            fmt(on.rate if on else None, 1),
            fmt(noff.rate if noff else None, 1),
            str(s) if c else "n/a",
            fmt(p / s if c and s else None),
            fmt((s + a) / s if c and s else None),
            fmt(a / p if c and p else None),
            str(f) if c else "n/a",
            fmt(r.pred_vstep),
            fmt(r.predicted),
            fmt(on_off, target=t_onoff),
            fmt(meas_pred, target=">=0.9"),
            fmt(ratio(on, r.raw), target=t_raw),
            fmt(ratio(on, noff), target=t_noff) if noff else "-",
            same,
        ]
        print("| " + " | ".join(cells) + " |")


WORKLOAD_NAMES = {"a": "a code edit", "b": "b doc quotes", "c": "c free chat", "d": "d json schema"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, one model, < 2 minutes")
    ap.add_argument("--models", help="comma-separated: q4_1, f16 (default both; --quick: q4_1)")
    ap.add_argument("--workloads", default="a,b,c,d")
    ap.add_argument("--streams", help="comma-separated stream counts (default 1,8; --quick: 1,4)")
    ap.add_argument("--out", type=int, help="num_predict per request (default 256; --quick: 32)")
    ap.add_argument("--doc-tokens", type=int, help="document size for (b) (default 1000; --quick: 300)")
    ap.add_argument("--repeats", type=int, default=1, help="measured runs per configuration; the fastest is kept")
    ap.add_argument("--cost-repeats", type=int, help="repeats per size of the cost curves (default 15; --quick 3)")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "herd-bench")
    args = ap.parse_args(argv)
    quick = args.quick
    models = (args.models or ("q4_1" if quick else "q4_1,f16")).split(",")
    streams = [int(x) for x in (args.streams or ("1,4" if quick else "1,8")).split(",")]
    out = args.out or (32 if quick else 256)
    doc_tokens = args.doc_tokens or (300 if quick else 1000)
    cost_repeats = args.cost_repeats if args.cost_repeats is not None else (3 if quick else 15)
    workloads = args.workloads.split(",")
    t_start = time.perf_counter()

    files = model_files(models, args.cache_dir)
    tok = get_tokenizer(str(files[models[0]]))
    doc = document(doc_tokens, lambda s: len(tok.encode(s, add_special=False)))
    print(
        f"document: {len(tok.encode(doc, add_special=False))} tokens; code file: "
        f"{len(tok.encode(CODE, add_special=False))} tokens; num_predict {out}; streams {streams}"
    )

    # Cost curves first, alone on the machine.
    curves: dict[str, dict[int, Curve]] = {}
    for name, path in files.items():
        curves[name] = {}
        if cost_repeats <= 0:
            continue
        # beyond the largest size measured the curve is extended along its last slope
        top = 2 if quick else 4
        curves[name][1] = measure(path, name, list(range(1, 4 * top + 1)), 1, 300, cost_repeats)
        # (b) decodes after a document of doc_tokens: attention over it makes every position of a pass dearer
        deep = len(tok.encode(doc, add_special=False)) + 100
        curves[name][-1] = measure(path, name, list(range(1, 4 * top + 1)), 1, deep, cost_repeats)
        for n in streams:
            if n > 1:
                curves[name][n] = measure(path, name, list(range(n, top * n + 1)), n, 300, cost_repeats)
        print(f"cost curve {name}: " + ", ".join(f"c({k})={curves[name][1].cost(k):.2f}" for k in (2, 4, 8, 16)))
    sys.stdout.flush()

    store = Path(tempfile.mkdtemp(prefix="herd-spec-bench-"))
    configs = {"off": {"HERD_SPECULATIVE": "0"}, "on": {"HERD_SPECULATIVE": "1"}}
    if "d" in workloads:
        configs["noff"] = {"HERD_SPECULATIVE": "1", "HERD_SPEC_FASTFORWARD": "0"}
    servers: dict[str, HerdServer] = {}
    rows: list[Row] = []
    try:
        for cfg, env in configs.items():
            # Started one after another: they share the store, which each registers the default model into.
            servers[cfg] = HerdServer(models_dir=store, env={**env, "OLLAMA_NUM_PARALLEL": str(max(streams))})
            servers[cfg].start()
        for name, path in files.items():
            model = DEFAULT_MODEL if name == "q4_1" else ensure_f16(servers["on"], path)
            raws: dict[int, RawLlama] = {}
            try:
                for wl in workloads:
                    for n in streams:
                        row = measure_row(servers, raws, name, path, model, wl, n, out, doc, args.repeats)
                        predict(row, curves[name])
                        rows.append(row)
                        progress(row, time.perf_counter() - t_start)
            finally:
                for raw in raws.values():
                    raw.close()
                for server in servers.values():
                    unload(server, model)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(store, ignore_errors=True)
        print_table(rows)
        print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


def measure_row(
    servers: dict[str, HerdServer],
    raws: dict[int, RawLlama],
    name: str,
    path: Path,
    model: str,
    wl: str,
    n: int,
    out: int,
    doc: str,
    repeats: int,
) -> Row:
    """One workload at one stream count on every server, then the raw loop; the fastest of `repeats` rounds."""
    reqs = bodies(wl, n, model, out, doc)
    with httpx.Client(base_url=servers["off"].url, timeout=600) as http:
        rendered = [
            http.post("/api/chat", json={**b, "_debug_render_only": True}).json()["_debug_info"]["rendered_template"]
            for b in reqs
        ]
    row = Row(name, WORKLOAD_NAMES[wl], n)
    for _ in range(repeats):
        for cfg, server in servers.items():
            if cfg == "noff" and wl != "d":
                continue  # fast-forward only acts under a constraint
            # A fresh runner for every measurement: with the slots' cache of earlier rows, the servers' prompts
            # would be split differently into cached and evaluated parts, which changes rounding, texts (an early
            # end changes an 8-stream total) and speed whatever speculation does.
            unload(server, model)
            m = run_herd(server, reqs, model)
            if cfg not in row.herd or m.rate > row.herd[cfg].rate:
                row.herd[cfg] = m
            if cfg == "off":
                row.off_texts.append(m.texts)
        if n not in raws:
            raws[n] = RawLlama(n_seq=n, path=path)
        raw = raws[n]
        # as many tokens per sequence as herd's answers have on average, so both decode at the same depths
        _, rate = raw.run([raw.tokenize(t) for t in rendered], max(8, round(row.herd["off"].tokens / n)))
        row.raw = max(row.raw, rate)
    return row


def progress(row: Row, elapsed: float) -> None:
    on, off = row.herd["on"], row.herd["off"]
    print(
        f"{row.model} {row.workload} x{row.streams}: raw {row.raw:.1f}, off {off.rate:.1f}, on {on.rate:.1f} tok/s, "
        f"counters {on.counters}, {on.tokens} tokens [{elapsed:.0f} s]",
        flush=True,
    )
    for i, (x, y) in enumerate(zip(on.texts, off.texts)):
        if x != y:
            at = next((j for j, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
            print(
                f"  stream {i}: on's text differs from off's at character {at} (lengths {len(x)}, {len(y)}): "
                f"on {x[at : at + 40]!r} off {y[at : at + 40]!r}",
                flush=True,
            )


if __name__ == "__main__":
    main()
