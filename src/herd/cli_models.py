"""`herd create`, `cp`, `rm`, `pull` and `push`: model management over HTTP, with rich progress like `ollama`."""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import httpx

from herd.cli_client import CliError, check, client, stream_lines


class _ProgressView:
    """Shows `{"status", "digest", "total", "completed"}` lines like `ollama`: one bar per digest with a size, and
    plain status lines otherwise. Drawn on stderr with rich; in a pipe rich prints the lines without animation."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.console = Console(stderr=True)
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                             console=self.console)
        self.tasks: dict[str, object] = {}

    def __enter__(self) -> Self:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def bar(self, key: str, description: str, total: int | None, completed: int) -> None:
        task = self.tasks.get(key)
        if task is None:
            task = self.tasks[key] = self.bars.add_task(description, total=total)
        self.bars.update(task, total=total, completed=completed, description=description)  # type: ignore[arg-type]

    def show(self, doc: dict[str, object]) -> None:
        status = str(doc.get("status", ""))
        total = doc.get("total")
        if doc.get("digest") and isinstance(total, int) and total > 0:
            completed = doc.get("completed")
            self.bar(str(doc["digest"]), status, total, completed if isinstance(completed, int) else 0)
        elif status:
            self.bars.console.print(status, soft_wrap=True)


def _stream_progress(c: httpx.Client, path: str, body: dict[str, object]) -> int:
    with _ProgressView() as view, c.stream("POST", path, json={**body, "stream": True}) as resp:
        for doc in stream_lines(check(resp)):
            view.show(doc)
    return 0


def _sha256_with_progress(path: Path, view: _ProgressView) -> str:

    h = hashlib.sha256()
    size = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            done += len(chunk)
            view.bar(f"hash:{path}", f"gathering model components ({path.name})", size, done)
    return "sha256:" + h.hexdigest()


def _upload_blob(c: httpx.Client, path: Path) -> str:
    """Like `ollama create`: hash the local file, skip the upload if the server already has the blob (HEAD), else
    POST the bytes to /api/blobs/<digest>. Returns the digest for the `files` map."""
    with _ProgressView() as view:
        digest = _sha256_with_progress(path, view)
        head = c.head(f"/api/blobs/{digest}")
        if head.status_code == 200:
            return digest
        if head.status_code != 404:
            check(head)
        size = path.stat().st_size

        def body() -> Iterator[bytes]:
            sent = 0
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    sent += len(chunk)
                    view.bar(f"upload:{digest}", f"copying file {digest}", size, sent)
                    yield chunk

        check(c.post(f"/api/blobs/{digest}", content=body()))
    return digest


def _create_body(args: argparse.Namespace, c: httpx.Client) -> dict[str, object]:
    from herd.errors import HerdError
    from herd.registry.modelfile import parse_modelfile

    path = Path(args.file or "Modelfile")
    try:
        mf = parse_modelfile(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except HerdError as exc:
        raise CliError(exc.message) from None
    if mf.adapters:
        raise CliError("adapters (LoRA) are not supported by herd")
    body: dict[str, object] = {"model": args.model}
    # FROM a path is relative to the Modelfile, as in `ollama create`; anything that is not a file is a model name.
    assert mf.from_ is not None
    source = Path(mf.from_).expanduser()
    if not source.is_absolute():
        source = path.parent / source
    if source.is_dir():
        # A safetensors folder (BERT embedding models): like `ollama create`, every file the conversion reads goes
        # up as a blob under its path relative to the folder, and the server converts them to one GGUF.
        wanted = [p for p in sorted(source.rglob("*")) if p.is_file() and not p.name.startswith(".")
                  and (p.suffix in (".safetensors", ".json") or p.name == "vocab.txt")]
        if not any(p.suffix == ".safetensors" for p in wanted):
            raise CliError(f"no .safetensors files in {source}")
        body["files"] = {p.relative_to(source).as_posix(): _upload_blob(c, p) for p in wanted}
    elif source.is_file():
        body["files"] = {source.name: _upload_blob(c, source)}
        for extra in mf.froms[1:]:
            # A second FROM: a vision projector GGUF that goes next to the model (the server tells them apart).
            more = Path(extra).expanduser()
            more = more if more.is_absolute() else path.parent / more
            if not more.is_file():
                raise CliError(f"{more}: no such file")
            body["files"][more.name] = _upload_blob(c, more)  # type: ignore[index]
    elif mf.from_.startswith(("/", "./", "../", "~")) or mf.from_.lower().endswith(".gguf"):
        # The server reads no local paths (only its store's blobs): a missing file is this side's error.
        raise CliError(f"{source}: no such file")
    else:
        body["from"] = mf.from_
    if len(mf.froms) > 1 and not source.is_file():
        raise CliError("a second FROM (a vision projector) must follow a FROM of a GGUF file")
    if mf.draft:
        # As `ollama create` does: a local draft GGUF goes up as a blob and is named in `draft_files`; a name that
        # is no file is a model of the server's, sent as `draft`.
        draft = Path(mf.draft).expanduser()
        draft = draft if draft.is_absolute() else path.parent / draft
        if draft.is_file():
            body["draft_files"] = {draft.name: _upload_blob(c, draft)}
        elif mf.draft.startswith(("/", "./", "../", "~")) or mf.draft.lower().endswith(".gguf"):
            raise CliError(f"{draft}: no such file")
        else:
            body["draft"] = mf.draft
    if mf.template is not None:
        body["template"] = mf.template
    if mf.system is not None:
        body["system"] = mf.system
    if mf.parameters:
        body["parameters"] = mf.parameter_dict()
    if mf.messages:
        body["messages"] = [{"role": role, "content": content} for role, content in mf.messages]
    if mf.license:
        body["license"] = list(mf.license)
    if mf.renderer:
        body["renderer"] = mf.renderer  # the server refuses what it cannot honour, naming it
    if mf.parser:
        body["parser"] = mf.parser
    if args.quantize:
        body["quantize"] = args.quantize
    return body


def cmd_create(args: argparse.Namespace) -> int:
    with client() as c:
        return _stream_progress(c, "/api/create", _create_body(args, c))


def cmd_pull(args: argparse.Namespace) -> int:
    with client() as c:
        return _stream_progress(c, "/api/pull", {"model": args.model, "insecure": args.insecure})


def cmd_push(args: argparse.Namespace) -> int:
    with client() as c:
        return _stream_progress(c, "/api/push", {"model": args.model, "insecure": args.insecure})


def cmd_cp(args: argparse.Namespace) -> int:
    with client() as c:
        check(c.post("/api/copy", json={"source": args.source, "destination": args.destination}))
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with client() as c:
        for name in args.models:
            check(c.request("DELETE", "/api/delete", json={"model": name}))
            print(f"deleted '{name}'")
    return 0
