"""The `herd` command: `serve` starts the server; the other verbs talk to it over HTTP, like `ollama` does."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime

import httpx

from herd import cli_models
from herd.cli_client import CliError, check, client, fail, stream_lines
from herd.config import Settings
from herd.engine.rpc import DEFAULT_PORT as DEFAULT_RPC_PORT

# ---- verbs ---------------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from herd.serving import serve

    try:
        settings = Settings.from_env()
    except ValueError as exc:  # HERD_RPC_SERVERS that is not a list of host:port
        return fail(f"HERD_RPC_SERVERS: {exc}")
    if settings.rpc_servers:
        from herd.engine.rpc import check_build

        why = check_build()
        if why:
            return fail(f"HERD_RPC_SERVERS is set, but {why}")
    serve(settings, args.log_level)
    return 0


def cmd_rpc_worker(args: argparse.Namespace) -> int:
    from herd.config import physical_cores
    from herd.engine.rpc_worker import serve

    return serve(args.host, args.port, args.threads or physical_cores(), args.mem)


def _chat(c: httpx.Client, model: str, messages: list[dict[str, str]], out: list[str]) -> None:
    body = {"model": model, "messages": messages, "stream": True}
    with c.stream("POST", "/api/chat", json=body) as resp:
        for doc in stream_lines(check(resp)):
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
        check(c.post("/api/chat", json={"model": args.model, "messages": [], "stream": False}))
        if prompt:
            _chat(c, args.model, [{"role": "user", "content": prompt}], [])
            return 0
        return repl(c, args.model)


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
        resp = check(c.get("/api/tags"))
        rows = [[m["name"], m["digest"][:12], _human_size(m["size"]), _ago(m["modified_at"])]
                for m in resp.json()["models"]]
        _table(rows, ["NAME", "ID", "SIZE", "MODIFIED"])
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    with client() as c:
        resp = check(c.get("/api/ps"))
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
        doc = check(c.post("/api/show", json={"model": args.model})).json()
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
        resp = c.post("/api/generate", json={"model": args.model, "prompt": "", "keep_alive": 0, "stream": False})
        if resp.status_code == 404 and "page not found" in resp.text:
            resp = c.post("/api/chat", json={"model": args.model, "messages": [], "keep_alive": 0, "stream": False})
        check(resp)
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
    cr.set_defaults(func=cli_models.cmd_create)
    pl = sub.add_parser("pull", help="pull a model from a registry")
    pl.add_argument("model")
    pl.add_argument("--insecure", action="store_true", help="use http instead of https")
    pl.set_defaults(func=cli_models.cmd_pull)
    pu = sub.add_parser("push", help="push a model to a registry")
    pu.add_argument("model")
    pu.add_argument("--insecure", action="store_true", help="use http instead of https")
    pu.set_defaults(func=cli_models.cmd_push)
    cp = sub.add_parser("cp", help="copy a model")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.set_defaults(func=cli_models.cmd_cp)
    rm = sub.add_parser("rm", help="remove models")
    rm.add_argument("models", nargs="+")
    rm.set_defaults(func=cli_models.cmd_rm)
    rw = sub.add_parser("rpc-worker", help="lend this machine's CPU or GPU to herd servers (llama.cpp RPC)",
                        description="Serve this machine's GPUs, or its CPU, to herd servers that list it in "
                        "HERD_RPC_SERVERS. The protocol has no authentication: use a trusted network only.")
    rw.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    rw.add_argument("--port", type=int, default=DEFAULT_RPC_PORT,
                    help=f"port to listen on (default {DEFAULT_RPC_PORT})")
    rw.add_argument("--threads", type=int, default=0, help="CPU threads (default: one per physical core)")
    rw.add_argument("--mem", type=int, default=None, metavar="BYTES",
                    help="memory to offer, which servers split layers by (default: the device's own)")
    rw.set_defaults(func=cmd_rpc_worker)
    st = sub.add_parser("stop", help="unload a model")
    st.add_argument("model")
    st.set_defaults(func=cmd_stop)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, httpx.HTTPError) as exc:
        return fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
