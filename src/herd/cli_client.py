"""What the `herd` verbs share: finding the server like `ollama` does, and reading its answers."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator

import httpx

from herd.config import parse_host


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


class CliError(Exception):
    """A failure a verb reports as `Error: <message>` with exit status 1 (main() prints it)."""


def check(resp: httpx.Response) -> httpx.Response:
    """The response, or CliError with the server's message for an error status (a streamed body is read first)."""
    if resp.status_code >= 400:
        resp.read()
        raise CliError(error_of(resp))
    return resp


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
                raise CliError(str(doc["error"]))
            yield doc
