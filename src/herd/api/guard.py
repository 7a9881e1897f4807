"""Edge guards as pure ASGI middleware: the Host check against DNS rebinding, the CORS allow-list (spec 1), and
the drain on shutdown. Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass through unbuffered.

Matches Ollama's `server/routes.go`: gin-contrib/cors runs first (a disallowed Origin gets 403 with an empty body, a
preflight from an allowed one gets 204), then `allowedHostsMiddleware` (only while the listener is on loopback).
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from functools import lru_cache
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Ollama's envconfig.AllowedOrigins: these hosts with any port, over http and https, plus app-like schemes.
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0")
_APP_ORIGINS = ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
# gin-contrib/cors AllowBrowserExtensions.
_EXTENSION_SCHEMES = ("chrome-extension://", "safari-extension://", "moz-extension://", "ms-browser-extension://")

ALLOW_HEADERS = (
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With",
    # OpenAI's SDKs (the x-stainless family), listed as Ollama lists them.
    "OpenAI-Beta", "x-stainless-arch", "x-stainless-async", "x-stainless-custom-poll-interval",
    "x-stainless-helper-method", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
    "x-stainless-poll-helper", "x-stainless-retry-count", "x-stainless-runtime", "x-stainless-runtime-version",
    "x-stainless-timeout",
)
ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
MAX_AGE = "43200"  # gin-contrib/cors default: 12 hours
_LOCAL_TLDS = (".localhost", ".local", ".internal")
SHUTTING_DOWN_BODY = b'{"error":"server is shutting down"}'


def default_origins() -> tuple[str, ...]:
    out: list[str] = []
    for host in _LOCAL_HOSTS:
        out += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    return (*out, *_APP_ORIGINS)


class OriginPolicy:
    """Exact origins, `prefix*suffix` wildcards (one `*`, as gin-contrib allows) and `*` for every origin."""

    def __init__(self, extra: Iterable[str]) -> None:
        self.allow_all = False
        self.exact: set[str] = set()
        self.wildcards: list[tuple[str, str]] = []
        for origin in (*default_origins(), *extra):
            origin = origin.strip().lower()
            if not origin:
                continue
            if origin == "*":
                self.allow_all = True
            elif "*" in origin:
                prefix, _, suffix = origin.partition("*")
                self.wildcards.append((prefix, suffix.replace("*", "")))
            else:
                self.exact.add(origin)

    def allows(self, origin: str) -> bool:
        origin = origin.lower()
        if self.allow_all or origin in self.exact:
            return True
        if origin.startswith(_EXTENSION_SCHEMES):
            return True
        return any(len(origin) >= len(p) + len(s) and origin.startswith(p) and origin.endswith(s)
                   for p, s in self.wildcards)


def is_loopback_host(host: str) -> bool:
    """Whether the listen address is loopback (the Host check applies only then, as in Ollama)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=1)
def _local_addresses() -> frozenset[str]:
    """The machine's own interface addresses (Ollama's isLocalIP), best effort, read once."""
    found: set[str] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(info[4][0]))
    except OSError:
        pass
    try:  # IPv4 address of each interface, by SIOCGIFADDR
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                    found.add(socket.inet_ntoa(packed[20:24]))
                except OSError:
                    continue
    except OSError:
        pass
    return frozenset(found)


def host_allowed(host_header: str) -> bool:
    """Ollama's allowedHostsMiddleware: loopback, private, unspecified or own IPs, and local names."""
    host = host_header.strip()
    if host.startswith("["):  # [v6]:port or [v6]
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return ip.is_loopback or ip.is_private or ip.is_unspecified or str(ip) in _local_addresses()
    host = host.lower()
    if host in ("", "localhost") or host.endswith(_LOCAL_TLDS):
        return True
    return host == socket.gethostname().lower()


class Drain:
    """Counts requests in flight; once `start()` is called, new requests get 503 and `idle()` waits them out."""

    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self.draining = True

    def enter(self) -> None:
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


class GuardMiddleware:
    def __init__(self, app: ASGIApp, *, origins: Iterable[str] = (), check_host: bool = True,
                 drain: Drain | None = None) -> None:
        self.app = app
        self.policy = OriginPolicy(origins)
        self.check_host = check_host
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        method = scope["method"]
        host = headers.get("host", "")
        origin = headers.get("origin")
        cors: list[tuple[bytes, bytes]] = []
        # gin-contrib/cors: an Origin equal to this server's own is a same-origin request, not CORS.
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            if not self.policy.allows(origin):
                await _empty(send, 403)
                return
            cors = self._cors_headers(origin)
            if method == "OPTIONS" and "access-control-request-method" in headers:
                await _empty(send, 204, cors + self._preflight_headers(headers))
                return
        if self.check_host and not host_allowed(host):
            await _empty(send, 403)  # DNS rebinding: a foreign name that resolves to us
            return
        if method == "OPTIONS":
            await _empty(send, 204, cors)
            return
        if self.drain is not None and self.drain.draining:
            await _send(send, 503, SHUTTING_DOWN_BODY, [(b"content-type", b"application/json; charset=utf-8")])
            return
        if self.drain is not None:
            self.drain.enter()
        try:
            if not cors:
                await self.app(scope, receive, send)
                return

            async def send_with_cors(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = dict(message)
                    message["headers"] = [*message.get("headers", []), *cors]
                await send(message)

            await self.app(scope, receive, send_with_cors)
        finally:
            if self.drain is not None:
                self.drain.leave()

    def _cors_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        if self.policy.allow_all:
            return [(b"access-control-allow-origin", b"*")]
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]

    @staticmethod
    def _preflight_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
        allowed = list(ALLOW_HEADERS)
        known = {h.lower() for h in allowed}
        # The whole x-stainless-* family: newer OpenAI SDKs add members Ollama's fixed list lacks.
        for name in headers.get("access-control-request-headers", "").split(","):
            name = name.strip().lower()
            if name.startswith("x-stainless-") and name not in known:
                allowed.append(name)
        return [(b"access-control-allow-methods", ALLOW_METHODS.encode()),
                (b"access-control-allow-headers", ",".join(allowed).encode("latin-1")),
                (b"access-control-max-age", MAX_AGE.encode())]


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        out.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
    return out


async def _empty(send: Send, status: int, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await _send(send, status, b"", headers or [])


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
