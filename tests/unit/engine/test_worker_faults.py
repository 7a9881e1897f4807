"""The runner's step loop on the real default model, driven in-process (no pipe loop, no server).

What it proves: a batch that llama.cpp refuses because of one sequence (here a prompt holding a token id the
vocabulary does not have, which llama.cpp rejects for the whole batch) ends that sequence alone with a clear
error, while the sequence decoded beside it goes on and produces the same greedy text it produces alone; the
failed slot's cached tokens are emptied with its KV, so they still match. Also the runner's own guards for a
prompt of zero tokens or one that does not fit num_ctx. What it cannot prove: other decode failures (a KV cache
that runs out), which the runner's bounds keep from happening and which llama.cpp reports the same way."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator

import pytest

from herd.engine.protocol import DoneEvent, GenerateCmd, LoadSpec, SamplingParams
from herd.engine.worker import Worker
from herd.registry.default_model import default_model_file

GREEDY = SamplingParams(temperature=0, num_predict=12)


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    path = default_model_file()
    assert path is not None
    a, b = mp.Pipe()
    spec = LoadSpec(model_path=str(path), num_ctx=256, num_batch=64, num_parallel=2, num_thread=2, use_mmap=True)
    w = Worker(a, spec)
    yield w
    a.close()
    b.close()


def run(worker: Worker, *cmds: GenerateCmd, later: tuple[int, GenerateCmd] | None = None,
        steps: int = 200) -> dict[int, tuple[str, DoneEvent]]:
    """Step the worker until every request is done; `later` adds one request at that step."""
    worker.events.clear()
    worker.waiting.extend(cmds)
    every = [*cmds, *([later[1]] if later else [])]
    texts: dict[int, list[str]] = {c.req_id: [] for c in every}
    done: dict[int, DoneEvent] = {}
    for step in range(steps):
        if later and step == later[0]:
            worker.waiting.append(later[1])
        worker.assign_slots()
        if worker.active:
            worker.step()
        for ev in worker.events:
            if isinstance(ev, DoneEvent):
                done[ev.req_id] = ev
            elif isinstance(ev, tuple):
                texts[ev[0]].append(ev[1])
        worker.events.clear()
        if len(done) == len(every):
            break
    return {rid: ("".join(texts[rid]), done[rid]) for rid in done}


PROMPT = (1, 9690, 198, 19556, 2, 198, 1, 520, 9531, 198)  # ChatML: a user turn, then the assistant's header


def test_a_sequence_that_breaks_the_batch_fails_alone(worker: Worker) -> None:
    alone_text, alone = run(worker, GenerateCmd(1, PROMPT, GREEDY))[1]
    assert alone.reason == "length" and alone.eval_count == 12
    bad = PROMPT[:4] + (worker.n_vocab + 5,) + PROMPT[5:]
    # At step 3 the good one is decoding when the bad one's prompt joins its batch.
    out = run(worker, GenerateCmd(2, PROMPT, GREEDY), later=(3, GenerateCmd(3, bad, GREEDY)))
    good_text, good = out[2]
    assert good.reason == "length" and good.eval_count == 12 and good_text == alone_text
    assert out[3][1].reason == "error" and "not in the model's vocabulary" in out[3][1].error
    assert not any(s.busy for s in worker.slots)
    # Every slot's cached tokens are what its KV holds: the failed one holds nothing, the good one its text.
    assert sorted(len(s.tokens) for s in worker.slots)[0] == 0
    assert any(s.tokens[: len(PROMPT)] == list(PROMPT) for s in worker.slots)


def test_runner_guards_empty_and_oversized_prompts(worker: Worker) -> None:
    out = run(worker, GenerateCmd(10, (), GREEDY), GenerateCmd(11, (1,) * 256, GREEDY))
    assert out[10][1].reason == "error" and out[10][1].error == "prompt is empty"
    assert out[11][1].reason == "error" and "does not fit num_ctx" in out[11][1].error
    assert not any(s.busy for s in worker.slots)
