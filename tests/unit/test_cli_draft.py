"""`herd create`'s request body for a Modelfile with DRAFT (cli_models.py), against a mock HTTP server.

Proves: a DRAFT that is a local file (relative to the Modelfile) is hashed, uploaded as a blob unless the server has
it, and named in Ollama's `draft_files`; a DRAFT that is no file is sent as `draft`, a model name; a path that does
not exist is this side's error. Cannot prove: what a real server does with the body (tests/inproc does that).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import httpx
import pytest

from herd.cli_client import CliError
from herd.cli_models import _create_body


def body_for(tmp_path: Path, modelfile: str) -> tuple[dict[str, object], list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return httpx.Response(404 if request.method == "HEAD" else 201)

    (tmp_path / "Modelfile").write_text(modelfile)
    args = argparse.Namespace(file=str(tmp_path / "Modelfile"), model="paired", quantize=None)
    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://herd") as c:
        return _create_body(args, c), seen


def test_a_local_draft_file_is_uploaded_and_named_in_draft_files(tmp_path: Path) -> None:
    (tmp_path / "small.gguf").write_bytes(b"GGUF draft bytes")
    digest = "sha256:" + hashlib.sha256(b"GGUF draft bytes").hexdigest()
    body, seen = body_for(tmp_path, "FROM smollm2:135m\nDRAFT ./small.gguf\n")
    assert body == {"model": "paired", "from": "smollm2:135m", "draft_files": {"small.gguf": digest}}
    assert seen == [f"HEAD /api/blobs/{digest}", f"POST /api/blobs/{digest}"]


def test_a_draft_that_is_no_file_is_a_model_name(tmp_path: Path) -> None:
    body, seen = body_for(tmp_path, "FROM smollm2:135m\nDRAFT smollm2-copy\n")
    assert body["draft"] == "smollm2-copy" and "draft_files" not in body and seen == []
    with pytest.raises(CliError, match="no such file"):
        body_for(tmp_path, "FROM smollm2:135m\nDRAFT ./missing.gguf\n")
