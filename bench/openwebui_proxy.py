"""A logging reverse proxy to put between a client (Open WebUI) and a herd server, to capture what the client sends.

    python3 bench/openwebui_proxy.py --listen 127.0.0.1:11700 --upstream http://127.0.0.1:11600 \
        --log /tmp/owui-proxy.jsonl

Every request is forwarded unchanged (method, path, query, headers but the hop-by-hop ones, body) and the answer is
streamed back chunk by chunk as herd writes it, so NDJSON still arrives token by token and the client's stop button
still reaches herd as a closed connection. Each exchange is appended to the JSONL log when it ends: method, path,
request body (parsed JSON where it parses), status, the first bytes of the answer, its size, and whether the client
hung up before the answer ended. Loopback only; not a test, not part of herd.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# RFC 9110 7.6.1: these describe one connection, not the message, so a proxy must not pass them on. Content-length
# goes too: httpx and uvicorn recompute framing for the bodies they actually send.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "content-length", "host"}
HEAD_BYTES = 4096


def body_for_log(raw: bytes) -> object:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        try:
            return {"_text": raw.decode()}
        except UnicodeDecodeError:
            return {"_base64": base64.b64encode(raw[:HEAD_BYTES]).decode()}


class LoggingProxy:
    def __init__(self, upstream: str, log_path: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self.log_path = log_path
        self.client: httpx.AsyncClient | None = None
        self.seq = 0

    def write(self, record: dict[str, object]) -> None:
        # One event loop writes, so appends never interleave; flush per record so a crash loses nothing captured.
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            await self.exchange(scope, receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                # No read timeout: a long prefill before the first token is normal, and the client decides when to
                # give up (its disconnect closes the upstream stream below).
                self.client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), follow_redirects=False)
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def exchange(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.client is not None
        self.seq += 1
        started = time.time()
        chunks = []
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        path = scope["path"] + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in HOP_BY_HOP]
        record: dict[str, object] = {"seq": self.seq, "time": started, "method": scope["method"], "path": path,
                                     "request_headers": dict(headers), "request": body_for_log(body)}
        # A request line goes out at once too: a stream can run for minutes before its full record is written.
        self.write({"seq": self.seq, "event": "request", "time": started, "method": scope["method"], "path": path,
                    "request": record["request"]})
        record["event"] = "exchange"
        head = bytearray()
        timing: dict[str, float] = {}
        state: dict[str, httpx.Response] = {}

        async def forward() -> None:
            assert self.client is not None
            req = self.client.build_request(scope["method"], self.upstream + path, headers=headers, content=body)
            try:
                resp = state["resp"] = await self.client.send(req, stream=True)
            except httpx.HTTPError as exc:
                record["status"] = 502
                record["proxy_error"] = f"{type(exc).__name__}: {exc}"
                err = json.dumps({"error": f"proxy: upstream failed: {exc}"}).encode()
                await send({"type": "http.response.start", "status": 502,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": err})
                return
            record["status"] = resp.status_code
            record["response_headers"] = dict(resp.headers)
            await send({"type": "http.response.start", "status": resp.status_code,
                        "headers": [(k.encode("latin-1"), v.encode("latin-1"))
                                    for k, v in resp.headers.multi_items() if k.lower() not in HOP_BY_HOP]})
            t0 = time.monotonic()
            async for chunk in resp.aiter_raw():
                timing.setdefault("first_byte_s", round(time.monotonic() - t0, 3))
                if len(head) < HEAD_BYTES:
                    head.extend(chunk[: HEAD_BYTES - len(head)])
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        # The client's disconnect is watched from the start, in its own task: herd sends no headers before its first
        # token, so a stop pressed during a long prefill would otherwise go unseen (nothing to fail a send on) and
        # the proxy would keep herd busy on an answer nobody reads. Cancelling forward() closes the upstream
        # connection, which is what herd would have seen with the client talking to it directly.
        forwarder, watcher = asyncio.create_task(forward()), asyncio.create_task(watch())
        client_closed = False
        try:
            done, _ = await asyncio.wait({forwarder, watcher}, return_when=asyncio.FIRST_COMPLETED)
            client_closed = forwarder not in done or isinstance(forwarder.exception(), OSError)
            if forwarder in done and forwarder.exception() is not None and not client_closed:
                record["proxy_error"] = repr(forwarder.exception())
        finally:
            for task in (forwarder, watcher):
                task.cancel()
            await asyncio.gather(forwarder, watcher, return_exceptions=True)
            resp = state.get("resp")
            if resp is not None:
                await resp.aclose()
            record.update({"response_head": head.decode("utf-8", errors="replace"),
                           "response_bytes": resp.num_bytes_downloaded if resp is not None else 0,
                           "first_byte_s": timing.get("first_byte_s"), "duration_s": round(time.time() - started, 3),
                           "client_closed_early": client_closed})
            record.setdefault("status", None)
            self.write(record)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:11700", help="host:port to listen on (loopback)")
    ap.add_argument("--upstream", default="http://127.0.0.1:11600", help="the herd server to forward to")
    ap.add_argument("--log", default="/tmp/owui-proxy.jsonl", help="JSONL file the exchanges are appended to")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    proxy = LoggingProxy(args.upstream, Path(args.log))
    uvicorn.run(proxy, host=host or "127.0.0.1", port=int(port), log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
