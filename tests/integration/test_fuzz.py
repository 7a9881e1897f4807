"""A bounded fuzz run (schemathesis, ~200 cases, well under a minute) against a live server, driven by the server's
own /openapi.json: no 5xx except the documented ones, the server never dies, and every error body has Ollama's
(`{"error": "..."}`) or OpenAI's (`{"error": {"message", "type", ...}}`) shape. `bench/fuzz.sh` runs 2000 cases.

/api/pull and /api/push are left out: they would reach for registries off this machine.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.server import HerdServer

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

pytestmark = pytest.mark.integration

# Small bounds keep every generated request cheap: random options cannot ask for long generations.
FUZZ_ENV = {"HERD_NUM_PARALLEL": "2", "HERD_CONTEXT_LENGTH": "256", "HERD_NUM_THREAD": "1",
            "HERD_MAX_NUM_CTX": "512", "HERD_MAX_NUM_PREDICT": "8", "HERD_MAX_BODY_BYTES": "1000000",
            "HERD_MAX_BLOB_BYTES": "1000000", "HERD_LOAD_TIMEOUT": "60"}
EXCLUDED = ("/api/pull", "/api/push")
PER_OPERATION = 20  # hypothesis stops early on small input spaces: about 250 cases in all
BUDGET_S = 55.0
# 5xx answers Ollama gives on purpose (spec 4): a bad `format` (500 before output), a runner that failed, a full
# queue or a server shutting down (503).
DOCUMENTED_5XX = ("invalid format", "model runner has unexpectedly stopped", "server busy", "server is shutting down")


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[HerdServer]:
    srv = HerdServer(env=FUZZ_ENV).start()
    yield srv
    srv.stop()
    shutil.rmtree(srv.models_dir, ignore_errors=True)


def check_response(method: str, path: str, resp: httpx.Response) -> str | None:
    """None if the answer is acceptable, else what is wrong with it."""
    status = resp.status_code
    if status >= 500 and method == "HEAD":
        return f"{status} on HEAD"
    if status < 400 or method == "HEAD":  # a HEAD answer has no body to check
        return None
    if status in (404, 405) and resp.headers.get("content-type", "").startswith("text/plain"):
        return None  # Go's mux wording for unknown routes and methods, as Ollama
    try:
        body = resp.json()
    except ValueError:
        return f"{status} with a body that is not JSON: {resp.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if path.startswith("/v1/"):
        if not (isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error):
            return f"{status} not in OpenAI's error shape: {body!r:.200}"
        message = error["message"]
    else:
        if not isinstance(error, str):
            return f"{status} not in Ollama's error shape: {body!r:.200}"
        message = error
    if status >= 500 and not any(text in message for text in DOCUMENTED_5XX):
        return f"undocumented {status}: {message[:300]}"
    return None


class Fuzzer:
    """Runs generated cases of one operation after another against the server, within one time budget."""

    def __init__(self, http: httpx.Client, base_url: str) -> None:
        self.http = http
        self.base_url = base_url
        self.deadline = time.monotonic() + BUDGET_S
        self.cases = 0
        self.problems: list[str] = []

    def run(self, op: object) -> None:
        from hypothesis import HealthCheck, Phase, given, settings

        method, path = op.method.upper(), op.path  # type: ignore[attr-defined]

        @given(case=op.as_strategy())  # type: ignore[attr-defined]
        @settings(max_examples=PER_OPERATION, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), derandomize=True)
        def one(case: object) -> None:
            if time.monotonic() > self.deadline:
                return
            self.cases += 1
            kwargs = case.as_transport_kwargs(base_url=self.base_url)  # type: ignore[attr-defined]
            try:
                resp = self.http.request(kwargs["method"], kwargs["url"], content=kwargs.get("data"),
                                         json=kwargs.get("json"), params=kwargs.get("params"),
                                         headers=kwargs.get("headers"))
            except httpx.TransportError as exc:
                self.problems.append(f"{method} {path}: transport error {exc!r}")
                return
            problem = check_response(method, path, resp)
            if problem:
                self.problems.append(f"{method} {path}: {problem}")

        one()


def test_fuzz_the_openapi_document(fuzz_server: HerdServer) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    operations = [op for op in operations if op.path not in EXCLUDED]
    assert len(operations) >= 15
    chat = next(op for op in operations if op.path == "/api/chat")
    assert chat.get_request_payload_content_types() == ["application/json"]  # the real body is described

    with httpx.Client(base_url=fuzz_server.url, timeout=30) as http:
        fuzzer = Fuzzer(http, fuzz_server.url)
        for op in operations:
            if time.monotonic() > fuzzer.deadline:
                break
            fuzzer.run(op)
            assert fuzz_server.proc is not None and fuzz_server.proc.poll() is None, f"server died on {op.path}"
        alive = http.get("/api/version")
    print(f"{fuzzer.cases} fuzz cases over {len(operations)} operations")
    assert alive.status_code == 200
    assert fuzzer.cases >= 100
    assert not fuzzer.problems, "\n".join(fuzzer.problems[:20])
