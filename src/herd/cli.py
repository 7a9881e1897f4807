"""The `herd` command: `serve` starts the server; the other verbs talk to it over HTTP, like `ollama` does."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Self

import httpx

from herd.config import Settings, parse_host


def base_url() -> str:
    raw = os.environ.get("HERD_HOST") or os.environ.get("OLLAMA_HOST")
    host, port = parse_host(raw)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def client() -> httpx.Client:
    return httpx.Client(base_url=base_url(), timeout=httpx.Timeout(None, connect=5.0))


def fail(message: str) -> int:
    print(f"Error: {message}", file=sys.stderr)
    return 1


def error_of(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("error", resp.text))
    except ValueError:
        return resp.text


def stream_lines(resp: httpx.Response) -> Iterator[dict[str, object]]:
    for line in resp.iter_lines():
        if line.strip():
            doc = json.loads(line)
            if "error" in doc:
                raise RuntimeError(str(doc["error"]))
            yield doc


# ---- verbs ---------------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from herd.serving import serve

    serve(Settings.from_env(), args.log_level)
    return 0


def _chat(c: httpx.Client, model: str, messages: list[dict[str, str]], out: list[str]) -> None:
    body = {"model": model, "messages": messages, "stream": True}
    with c.stream("POST", "/api/chat", json=body) as resp:
        if resp.status_code >= 400:
            resp.read()
            raise RuntimeError(error_of(resp))
        for doc in stream_lines(resp):
            msg = doc.get("message") or {}
            piece = str(msg.get("content", "")) if isinstance(msg, dict) else ""
            out.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")


def cmd_run(args: argparse.Namespace) -> int:
    prompt = " ".join(args.prompt)
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    with client() as c:
        try:
            resp = c.post("/api/chat", json={"model": args.model, "messages": [], "stream": False})
            if resp.status_code >= 400:
                return fail(error_of(resp))
            if prompt:
                _chat(c, args.model, [{"role": "user", "content": prompt}], [])
                return 0
            return repl(c, args.model)
        except (httpx.HTTPError, RuntimeError) as exc:
            return fail(str(exc))


def repl(c: httpx.Client, model: str) -> int:
    from rich.console import Console

    console = Console()
    console.print(f"[dim]Chatting with {model}. /bye to leave, /clear to forget the conversation.[/dim]")
    history: list[dict[str, str]] = []
    while True:
        try:
            line = console.input("[bold green]>>> [/bold green]")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return 0
        if not line.strip():
            continue
        if line.strip() in ("/bye", "/exit"):
            return 0
        if line.strip() == "/clear":
            history.clear()
            continue
        history.append({"role": "user", "content": line})
        out: list[str] = []
        try:
            _chat(c, model, history, out)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(out)})


def _human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _ago(text: str) -> str:
    try:
        then = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    secs = (datetime.now(then.tzinfo) - then).total_seconds()
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if secs >= size:
            return f"{int(secs // size)} {unit} ago"
    return "Less than a minute ago"


def _table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        print("    ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def cmd_list(args: argparse.Namespace) -> int:
    with client() as c:
        try:
            resp = c.get("/api/tags")
        except httpx.HTTPError as exc:
            return fail(str(exc))
        if resp.status_code >= 400:
            return fail(error_of(resp))
        rows = [[m["name"], m["digest"][:12], _human_size(m["size"]), _ago(m["modified_at"])]
                for m in resp.json()["models"]]
        _table(rows, ["NAME", "ID", "SIZE", "MODIFIED"])
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    with client() as c:
        try:
            resp = c.get("/api/ps")
        except httpx.HTTPError as exc:
            return fail(str(exc))
        if resp.status_code >= 400:
            return fail(error_of(resp))
        rows = []
        for m in resp.json()["models"]:
            expires = m["expires_at"]
            until = "Forever" if expires.startswith("22") else expires
            rows.append([m["name"], m["digest"][:12], _human_size(m["size"]), "100% CPU",
                         str(m.get("context_length", "")), until])
        _table(rows, ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with client() as c:
        try:
            resp = c.post("/api/show", json={"model": args.model})
        except httpx.HTTPError as exc:
            return fail(str(exc))
        if resp.status_code >= 400:
            return fail(error_of(resp))
        doc = resp.json()
        if args.modelfile:
            print(doc["modelfile"])
            return 0
        if args.template:
            print(doc.get("template", ""))
            return 0
        if args.parameters:
            print(doc.get("parameters", ""))
            return 0
        info = doc.get("model_info", {})
        details = doc.get("details", {})
        arch = info.get("general.architecture", details.get("family", ""))
        print("  Model")
        for key, value in (("architecture", arch), ("parameters", details.get("parameter_size", "")),
                           ("context length", info.get(f"{arch}.context_length", "")),
                           ("embedding length", info.get(f"{arch}.embedding_length", "")),
                           ("quantization", details.get("quantization_level", ""))):
            print(f"    {key:<20}{value}")
        print("\n  Capabilities")
        for cap in doc.get("capabilities", []):
            print(f"    {cap}")
        if doc.get("parameters"):
            print("\n  Parameters")
            for line in str(doc["parameters"]).splitlines():
                print(f"    {line}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    with client() as c:
        try:
            resp = c.post("/api/generate", json={"model": args.model, "prompt": "", "keep_alive": 0, "stream": False})
            if resp.status_code == 404 and "page not found" in resp.text:
                resp = c.post("/api/chat", json={"model": args.model, "messages": [], "keep_alive": 0,
                                                  "stream": False})
        except httpx.HTTPError as exc:
            return fail(str(exc))
        if resp.status_code >= 400:
            return fail(error_of(resp))
    return 0


# ---- model management: create, cp, rm, pull, push ---------------------------------------------------------


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
    with _ProgressView() as view:
        try:
            with c.stream("POST", path, json={**body, "stream": True}) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise RuntimeError(error_of(resp))
                for doc in stream_lines(resp):
                    view.show(doc)
        except (httpx.HTTPError, RuntimeError) as exc:
            view.bars.stop()
            return fail(str(exc))
    return 0


def _sha256_with_progress(path: Path, view: _ProgressView) -> str:
    import hashlib

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
            raise RuntimeError(error_of(head))
        size = path.stat().st_size

        def body() -> Iterator[bytes]:
            sent = 0
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    sent += len(chunk)
                    view.bar(f"upload:{digest}", f"copying file {digest}", size, sent)
                    yield chunk

        resp = c.post(f"/api/blobs/{digest}", content=body())
        if resp.status_code >= 400:
            raise RuntimeError(error_of(resp))
    return digest


def _create_body(args: argparse.Namespace, c: httpx.Client) -> dict[str, object]:
    from herd.errors import HerdError
    from herd.registry.modelfile import parse_modelfile

    path = Path(args.file or "Modelfile")
    try:
        mf = parse_modelfile(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RuntimeError(f"cannot read {path}: {exc.strerror or exc}") from None
    except HerdError as exc:
        raise RuntimeError(exc.message) from None
    if mf.adapters:
        raise RuntimeError("adapters (LoRA) are not supported by herd")
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
            raise RuntimeError(f"no .safetensors files in {source}")
        body["files"] = {p.relative_to(source).as_posix(): _upload_blob(c, p) for p in wanted}
    elif source.is_file():
        body["files"] = {source.name: _upload_blob(c, source)}
    else:
        body["from"] = mf.from_
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
    if args.quantize:
        body["quantize"] = args.quantize
    return body


def cmd_create(args: argparse.Namespace) -> int:
    with client() as c:
        try:
            body = _create_body(args, c)
        except (httpx.HTTPError, RuntimeError) as exc:
            return fail(str(exc))
        return _stream_progress(c, "/api/create", body)


def cmd_pull(args: argparse.Namespace) -> int:
    with client() as c:
        return _stream_progress(c, "/api/pull", {"model": args.model, "insecure": args.insecure})


def cmd_push(args: argparse.Namespace) -> int:
    with client() as c:
        return _stream_progress(c, "/api/push", {"model": args.model, "insecure": args.insecure})


def cmd_cp(args: argparse.Namespace) -> int:
    with client() as c:
        try:
            resp = c.post("/api/copy", json={"source": args.source, "destination": args.destination})
        except httpx.HTTPError as exc:
            return fail(str(exc))
        if resp.status_code >= 400:
            return fail(error_of(resp))
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with client() as c:
        for name in args.models:
            try:
                resp = c.request("DELETE", "/api/delete", json={"model": name})
            except httpx.HTTPError as exc:
                return fail(str(exc))
            if resp.status_code >= 400:
                return fail(error_of(resp))
            print(f"deleted '{name}'")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="herd", description="A local LLM server that speaks Ollama's API")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="start the server")
    s.add_argument("--log-level", default=os.environ.get("HERD_LOG_LEVEL", "warning"))
    s.set_defaults(func=cmd_serve)
    r = sub.add_parser("run", help="chat with a model (one answer with a prompt, a REPL without)")
    r.add_argument("model")
    r.add_argument("prompt", nargs="*")
    r.set_defaults(func=cmd_run)
    ls = sub.add_parser("list", aliases=["ls"], help="list models")
    ls.set_defaults(func=cmd_list)
    ps = sub.add_parser("ps", help="list loaded models")
    ps.set_defaults(func=cmd_ps)
    sh = sub.add_parser("show", help="show a model")
    sh.add_argument("model")
    sh.add_argument("--modelfile", action="store_true")
    sh.add_argument("--template", action="store_true")
    sh.add_argument("--parameters", action="store_true")
    sh.set_defaults(func=cmd_show)
    cr = sub.add_parser("create", help="create a model from a Modelfile")
    cr.add_argument("model")
    cr.add_argument("-f", "--file", help="name of the Modelfile (default: Modelfile)")
    cr.add_argument("-q", "--quantize", help="quantize to this level (herd refuses: use a quantized GGUF)")
    cr.set_defaults(func=cmd_create)
    pl = sub.add_parser("pull", help="pull a model from a registry")
    pl.add_argument("model")
    pl.add_argument("--insecure", action="store_true", help="use http instead of https")
    pl.set_defaults(func=cmd_pull)
    pu = sub.add_parser("push", help="push a model to a registry")
    pu.add_argument("model")
    pu.add_argument("--insecure", action="store_true", help="use http instead of https")
    pu.set_defaults(func=cmd_push)
    cp = sub.add_parser("cp", help="copy a model")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.set_defaults(func=cmd_cp)
    rm = sub.add_parser("rm", help="remove models")
    rm.add_argument("models", nargs="+")
    rm.set_defaults(func=cmd_rm)
    st = sub.add_parser("stop", help="unload a model")
    st.add_argument("model")
    st.set_defaults(func=cmd_stop)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
