"""DRAFT over the HTTP API (issue 18 point 4): /api/create with `draft`, /api/show, and the LoadSpec a chat gets,
on the real ASGI app over the fake runner (no weights are loaded)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from herd.registry.store import Store
from tests.inproc.conftest import MODEL, chat_body
from tests.unit.registry.test_registry_draft import write_vocab_gguf


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_create_with_a_draft_then_show_and_load(make_harness: Callable[..., Any], models_dir: Path) -> None:
    """Proves: `draft` naming a copy of the default model creates the pair (200, "success"); /api/show's modelfile
    has the DRAFT line with the draft blob's path; a chat on the pair asks the scheduler for a runner whose LoadSpec
    carries that path, and one on the plain model for none. Cannot prove: what a real runner does with it."""

    async def main() -> None:
        async with make_harness() as h:
            call = await h.client.request("POST", "/api/copy", {"source": MODEL, "destination": "smollm2-copy"})
            assert call.status == 200
            call = await h.client.request(
                "POST", "/api/create", {"model": "paired", "from": MODEL, "draft": "smollm2-copy"}, timeout=20
            )
            assert call.status == 200 and call.lines()[-1] == {"status": "success"}
            call = await h.client.request("POST", "/api/show", {"model": "paired"})
            assert call.status == 200
            doc = call.lines()[0]
            lines = doc["modelfile"].splitlines()
            from_line = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
            draft_path = lines[from_line + 1].removeprefix("DRAFT ")
            assert lines[from_line + 1].startswith("DRAFT ") and Path(draft_path).exists()
            assert Path(draft_path).parent == models_dir / "blobs"

            call = await h.client.request("POST", "/api/chat", chat_body(False, model="paired"))
            assert call.status == 200
            assert h.fakes.runners[-1].spec.draft_path == draft_path
            call = await h.client.request("POST", "/api/chat", chat_body(False))
            assert call.status == 200 and h.fakes.runners[-1].spec.draft_path == ""

    run(main())


def test_a_draft_with_another_vocabulary_is_a_400(
    make_harness: Callable[..., Any], models_dir: Path, tmp_path: Path
) -> None:
    """Proves: a draft whose vocabulary is not the model's is refused with status 400 and an error that names it,
    before any status line, and no model is created. Cannot prove: more than the one synthetic vocabulary."""

    async def main() -> None:
        async with make_harness() as h:
            digest, _ = Store(models_dir).add_blob_file(
                write_vocab_gguf(tmp_path / "tiny.gguf", ["a", "b", "ab"], [1, 1, 1])
            )
            blob = str(models_dir / "blobs" / digest.replace(":", "-"))
            call = await h.client.request(
                "POST", "/api/create", {"model": "bad", "from": MODEL, "draft": blob}, timeout=20
            )
            assert call.status == 400
            error = call.lines()[0]["error"]
            assert blob in error and "vocabulary" in error
            call = await h.client.request("POST", "/api/show", {"model": "bad"})
            assert call.status == 404

    run(main())
