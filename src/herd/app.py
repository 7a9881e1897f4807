"""create_app(settings) builds the FastAPI app; its lifespan starts and stops the scheduler and the runners."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from herd import __version__
from herd.api import loop_probe
from herd.api.anthropic import routes as anthropic_routes
from herd.api.guard import Drain, GuardMiddleware, is_loopback_host
from herd.api.ollama import chat as ollama_chat
from herd.api.ollama import generate as ollama_generate
from herd.api.ollama import models as ollama_models
from herd.api.openai import responses_routes as openai_responses
from herd.api.openai import routes as openai_routes
from herd.api.openapi import install as install_openapi
from herd.config import Settings
from herd.engine import tokenizer
from herd.engine.protocol import LoadSpec
from herd.engine.runner import Runner
from herd.services.wiring import Services, build_services


def create_app(settings: Settings | None = None, services: Services | None = None,
               runner_factory: Callable[[LoadSpec], Runner] | None = None) -> FastAPI:
    """`runner_factory` replaces the runner process (the in-process tests pass a fake one)."""
    settings = settings or Settings.from_env()
    svc = services or build_services(settings, runner_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.scheduler.start()
        try:
            yield
        finally:
            await svc.scheduler.shutdown()
            await asyncio.to_thread(tokenizer.default.close)  # the tokenizer process ends with the server

    app = FastAPI(title="herd", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.services = svc
    app.state.drain = Drain()  # serving.py starts it on SIGTERM; the guard then answers new requests 503
    # Host check (DNS rebinding) only while listening on loopback, as Ollama; CORS for the built-in and extra origins.
    app.add_middleware(GuardMiddleware, origins=settings.origins, check_host=is_loopback_host(settings.host),
                       drain=app.state.drain)
    app.include_router(ollama_chat.router)
    app.include_router(ollama_generate.router)
    app.include_router(ollama_models.router)
    app.include_router(openai_routes.router)
    app.include_router(openai_responses.router)
    app.include_router(anthropic_routes.router)
    loop_probe.install(app)  # only with HERD_LOOP_PROBE=1: bench/loop_lag.py reads the loop's worst stall

    install_openapi(app)  # /openapi.json: nested body schemas under components, one operationId per method

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Go's mux answers unknown routes and wrong methods in plain text.
        if exc.status_code == 405:
            # Starlette's router names the route's methods in the exception (from a set: sorted here, so the header
            # is the same every time); HTTP, and Ollama, send them as Allow.
            headers = dict(exc.headers or {})
            if "Allow" in headers:
                headers["Allow"] = ", ".join(sorted(m.strip() for m in headers["Allow"].split(",")))
            return PlainTextResponse("405 method not allowed", status_code=405, media_type="text/plain",
                                     headers=headers)
        if exc.status_code == 404:
            return PlainTextResponse("404 page not found", status_code=404, media_type="text/plain")
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code, media_type="text/plain")

    return app
