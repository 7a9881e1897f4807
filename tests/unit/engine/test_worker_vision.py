"""The runner's step loop with a vision projector, on the real default model and the synthetic projector of
tests/vision_fixture.py, driven in-process (no pipe loop, no server).

What it proves: an image is evaluated by mtmd into its own sequence's KV one image chunk per step, while a
sequence that is already generating gets its next token in every one of those steps; the image's tokens are
counted in the prompt; a slot's cached prefix names an image by its hash, so the same image again is reused
and another image at the same place is a miss from the image on; an image's KV is the same whether it was
evaluated alone or beside another stream (the same greedy text); a prompt that ends with an image is refused.
What it cannot prove: anything about what the model "sees" (the projector's weights are noise), nor projectors
with M-RoPE or non-causal image decoding (the synthetic one has neither)."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from pathlib import Path

import pytest

from herd.engine.protocol import DoneEvent, GenerateCmd, ImageInput, LoadSpec, SamplingParams
from herd.engine.vision import ImageChunk
from herd.engine.worker import Worker
from herd.images import decode_image
from herd.registry.default_model import default_model_file
from tests.vision_fixture import IMAGE_TOKENS, png_bytes, write_projector

GREEDY = SamplingParams(temperature=0, num_predict=10)
HEAD = (1, 9690, 198, 19556, 2, 198, 1, 4093, 198)  # ChatML: system turn, then the user's header
TAIL = (9531, 253, 2, 198, 1, 520, 9531, 198)  # some user text, the end of the turn, the assistant's header


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    path = default_model_file()
    assert path is not None
    projector = write_projector(Path(tmp_path_factory.mktemp("vision")) / "mmproj.gguf")
    a, b = mp.Pipe()
    spec = LoadSpec(model_path=str(path), num_ctx=512, num_batch=64, num_parallel=3, num_thread=2, use_mmap=True,
                    projector_path=str(projector))
    w = Worker(a, spec)
    yield w
    a.close()
    b.close()


def image(seed: int, at: int = len(HEAD)) -> ImageInput:
    d = decode_image(png_bytes(32, 32, seed))
    return ImageInput(at, d.digest, d.width, d.height, d.rgb)


def cmd(req_id: int, *images: ImageInput, tokens: tuple[int, ...] = HEAD + TAIL) -> GenerateCmd:
    return GenerateCmd(req_id, tokens, GREEDY, images=images)


def run(worker: Worker, *cmds: GenerateCmd, steps: int = 300) -> dict[int, tuple[str, DoneEvent]]:
    worker.events.clear()
    worker.waiting.extend(cmds)
    texts: dict[int, list[str]] = {c.req_id: [] for c in cmds}
    done: dict[int, DoneEvent] = {}
    for _ in range(steps):
        worker.assign_slots()
        if worker.active:
            worker.step()
        for ev in worker.events:
            if isinstance(ev, DoneEvent):
                done[ev.req_id] = ev
            elif isinstance(ev, tuple):
                texts[ev[0]].append(ev[1])
        worker.events.clear()
        if len(done) == len(cmds):
            break
    return {rid: ("".join(texts[rid]), done[rid]) for rid in done}


def forget(worker: Worker) -> None:
    for slot in worker.slots:
        worker.L.llama_memory_seq_rm(worker.mem, slot.seq_id, 0, -1)
        slot.tokens.clear()


def test_image_tokens_are_counted_and_reach_the_model(worker: Worker) -> None:
    forget(worker)
    plain_text, plain = run(worker, cmd(1))[1]
    a_text, a = run(worker, cmd(2, image(1)))[2]
    b_text, b = run(worker, cmd(3, image(2)))[3]
    assert a.prompt_tokens == plain.prompt_tokens + IMAGE_TOKENS
    assert b.prompt_tokens == plain.prompt_tokens + IMAGE_TOKENS
    assert len({plain_text, a_text, b_text}) == 3  # each image changes the greedy text


def test_other_streams_decode_between_image_chunks(worker: Worker) -> None:
    forget(worker)
    text_alone, _ = run(worker, cmd(10))[10]
    images_alone, _ = run(worker, cmd(11, image(3), image(4), image(5, at=len(HEAD) + 2)))[11]
    forget(worker)
    worker.events.clear()
    worker.waiting.append(GenerateCmd(12, HEAD + TAIL, SamplingParams(temperature=0, num_predict=40)))
    for _ in range(20):  # until the text stream is generating
        worker.assign_slots()
        worker.step()
        if worker.active[12].generated:
            break
    worker.waiting.append(cmd(13, image(3), image(4), image(5, at=len(HEAD) + 2)))
    image_steps = 0
    while 13 not in {e.req_id for e in worker.events if isinstance(e, DoneEvent)}:
        worker.assign_slots()
        seq = worker.active.get(13)
        had_image = seq is not None and any(isinstance(i, ImageChunk) for i in seq.pending)
        before = len(worker.active[12].generated)
        worker.step()
        if had_image and 12 in worker.active:
            image_steps += 1
            assert len(worker.active[12].generated) == before + 1  # the text stream got its token this step
    assert image_steps >= 3  # three images, each evaluated in a step of its own
    texts: dict[int, str] = {12: "", 13: ""}
    for ev in worker.events:
        if isinstance(ev, tuple):
            texts[ev[0]] += ev[1]
    while 12 in worker.active:
        worker.events.clear()
        worker.step()
        texts[12] += "".join(ev[1] for ev in worker.events if isinstance(ev, tuple) and ev[0] == 12)
    assert texts[13] == images_alone  # the image KV built beside a stream is the one built alone
    assert texts[12].startswith(text_alone)


def test_prompt_cache_names_images_by_hash(worker: Worker) -> None:
    forget(worker)
    first = run(worker, cmd(20, image(6)))[20][1]
    assert first.cached_tokens == 0
    again = run(worker, cmd(21, image(6)))[21][1]
    assert again.cached_tokens >= len(HEAD) + IMAGE_TOKENS  # the image's KV is reused
    other = run(worker, cmd(22, image(7)))[22][1]
    assert other.cached_tokens == len(HEAD)  # the same text before it, but a different image: a miss from there


def test_a_prompt_that_ends_with_an_image_is_refused(worker: Worker) -> None:
    out = run(worker, cmd(30, image(8, at=len(HEAD)), tokens=HEAD))
    assert out[30][1].reason == "error" and "must not end with an image" in out[30][1].error
    assert not any(s.busy for s in worker.slots)
