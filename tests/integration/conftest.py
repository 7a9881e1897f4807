from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.server import HerdServer

MODEL = "smollm2:135m"


@pytest.fixture(scope="session")
def server() -> Iterator[HerdServer]:
    srv = HerdServer().start()
    yield srv
    srv.stop()


@pytest.fixture()
def http(server: HerdServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client
