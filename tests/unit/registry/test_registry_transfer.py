"""Transfers (pull and push) against the loopback registry of tests/integration/fake_registry.py, in process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from herd.errors import InvalidRequest, ModelNotFound, RegistryError
from herd.registry.create import CreateSpec, ModelCreator
from herd.registry.names import ModelName
from herd.registry.progress import Cancelled, Progress, check_cancel, iterate_in_thread
from herd.registry.store import Store
from herd.registry.transfer import Repository, Transfers
from tests.integration.fake_registry import FakeRegistry, write_tiny_gguf


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def registry(gguf: Path) -> Iterator[FakeRegistry]:
    reg = FakeRegistry()
    config = reg.add_blob(b'{"model_format":"gguf","model_family":"llama"}')
    reg.add_model("library/tiny", "latest", config, [("model", reg.add_blob(gguf)),
                                                      ("system", reg.add_blob(b"from the registry"))])
    yield reg
    reg.stop()


@pytest.fixture(autouse=True)
def _reset(registry: FakeRegistry) -> Iterator[None]:
    registry.reset_faults()
    yield
    registry.reset_faults()


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


def pull(store: Store, registry: FakeRegistry, repo: str = "library/tiny",
         cancel: threading.Event | None = None) -> list[Progress]:
    return list(Transfers(store, backoff_s=0.01).pull(f"{registry.host}/{repo}", insecure=True, cancel=cancel))


def digest_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def partials(store: Store) -> list[Path]:
    return list(store.blobs.glob("*-partial"))


def test_repository_urls() -> None:
    hf = Repository.of(ModelName.parse("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"), insecure=False)
    assert hf.url("manifests", hf.tag) == "https://hf.co/v2/bartowski/Llama-3.2-1B-Instruct-GGUF/manifests/Q4_K_M"
    library = Repository.of(ModelName.parse("llama3.2"), insecure=False)
    assert library.url("blobs", "sha256:ab") == "https://registry.ollama.ai/v2/library/llama3.2/blobs/sha256:ab"
    assert Repository.of(ModelName.parse("localhost:5000/a/b"), insecure=True).base == "http://localhost:5000"
    with pytest.raises(InvalidRequest, match="unsupported scheme"):
        Repository.of(ModelName.parse("file://host/a/b"), insecure=False)


def test_pull_writes_blobs_then_the_manifest(store: Store, registry: FakeRegistry, gguf: Path) -> None:
    steps = pull(store, registry)
    assert steps[0].status == "pulling manifest"
    assert [s.status for s in steps[-3:]] == ["verifying sha256 digest", "writing manifest", "success"]
    model = store.find(f"{registry.host}/library/tiny")
    assert model.manifest.layer("model").digest == digest_of(gguf)  # type: ignore[union-attr]
    assert store.read_blob(model.manifest.layer("system").digest) == b"from the registry"  # type: ignore[union-attr]
    assert partials(store) == []


def test_bearer_challenge_gets_a_token_that_never_reaches_storage(store: Store, registry: FakeRegistry) -> None:
    registry.token = "s3cret"
    pull(store, registry)
    assert any(s.auth is None and s.path.startswith("/v2/") for s in registry.seen)  # the first, challenged, try
    assert any(s.auth == "Bearer s3cret" for s in registry.seen)
    assert all(s.auth is None for s in registry.seen if s.path.startswith("/storage/"))


def test_resume_within_one_pull(store: Store, registry: FakeRegistry, gguf: Path) -> None:
    registry.drop_after, registry.drops = 700_000, 2
    pull(store, registry)
    ranges = [s.range for s in registry.seen if s.path.startswith("/storage/") and s.range]
    assert ranges == ["bytes=700000-", "bytes=1400000-"]
    assert digest_of(store.blob_path(digest_of(gguf))) == digest_of(gguf)


def test_a_server_that_ignores_range_restarts_cleanly(store: Store, registry: FakeRegistry, gguf: Path) -> None:
    registry.drop_after, registry.drops, registry.ignore_range = 500_000, 1, True
    pull(store, registry)
    assert digest_of(store.blob_path(digest_of(gguf))) == digest_of(gguf)


def test_gives_up_keeps_partial_and_resumes_later(store: Store, registry: FakeRegistry, gguf: Path) -> None:
    registry.drop_after, registry.drops, registry.fail_after_drop = 800_000, 1, True
    with pytest.raises(RegistryError, match="503"):
        pull(store, registry)
    assert [p.stat().st_size for p in partials(store)] == [800_000]
    with pytest.raises(ModelNotFound):
        store.find(f"{registry.host}/library/tiny")
    registry.reset_faults()
    steps = pull(store, registry)
    first = next(s for s in steps if s.digest == digest_of(gguf))
    assert first.completed == 800_000
    assert partials(store) == [] and store.has_blob(digest_of(gguf))


def test_a_partial_file_survives_prune(store: Store, registry: FakeRegistry) -> None:
    registry.drop_after, registry.drops, registry.fail_after_drop = 800_000, 1, True
    with pytest.raises(RegistryError):
        pull(store, registry)
    store.prune_blobs()  # what a delete of another model runs
    assert len(partials(store)) == 1


def test_digest_mismatch_removes_the_partial_file(store: Store, registry: FakeRegistry, gguf: Path) -> None:
    registry.corrupt.add(digest_of(gguf))
    with pytest.raises(RegistryError, match=f"digest mismatch, file must be downloaded again: want {digest_of(gguf)}"):
        pull(store, registry)
    assert partials(store) == [] and not store.has_blob(digest_of(gguf))


def test_cancel_stops_and_keeps_the_partial_file(store: Store, registry: FakeRegistry, gguf: Path) -> None:
    registry.drop_after, registry.drops, registry.fail_after_drop = 900_000, 1, True
    cancel = threading.Event()
    steps = Transfers(store, backoff_s=5).pull(f"{registry.host}/library/tiny", insecure=True, cancel=cancel)
    with pytest.raises(Cancelled):
        for step in steps:
            if step.digest == digest_of(gguf) and step.completed is None:
                threading.Timer(0.5, cancel.set).start()  # the client goes away while the pull backs off
    assert [p.stat().st_size for p in partials(store)] == [900_000]


def test_hostile_manifest_digest_cannot_name_a_path(store: Store, registry: FakeRegistry) -> None:
    registry.manifests[("library/evil", "latest")] = json.dumps({
        "schemaVersion": 2, "config": {"digest": "sha256:" + "0" * 64, "size": 1},
        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:../../../etc/passwd",
                    "size": 1}]}).encode()
    with pytest.raises(RegistryError, match="invalid manifest"):
        pull(store, registry, "library/evil")


def test_unknown_model(store: Store, registry: FakeRegistry) -> None:
    with pytest.raises(RegistryError, match="pull model manifest: file does not exist"):
        pull(store, registry, "library/ghost")


def test_push_uploads_missing_blobs_then_the_manifest(store: Store, registry: FakeRegistry, gguf: Path) -> None:
    target = f"{registry.host}/team/made:v1"
    digest, _ = store.add_blob_file(gguf)  # in the store first, as an upload through /api/blobs puts it
    list(ModelCreator(store).create(CreateSpec(model=target, from_=str(store.blob_path(digest)), system="made here")))
    transfers = Transfers(store)
    steps = list(transfers.push(target, insecure=True))
    assert steps[0].status == "retrieving manifest" and [s.status for s in steps[-2:]] == ["pushing manifest",
                                                                                              "success"]
    local = store.find(target).manifest
    remote = json.loads(registry.manifests[("team/made", "v1")])
    assert [x["digest"] for x in remote["layers"]] == [x.digest for x in local.layers]
    for layer in (*local.layers, local.config):
        assert registry.blob_bytes(layer.digest) == store.read_blob(layer.digest)
    registry.seen.clear()
    list(transfers.push(target, insecure=True))
    assert {s.method for s in registry.seen} == {"HEAD", "PUT"}  # every blob is there: only the manifest again
    with pytest.raises(ModelNotFound):
        list(transfers.push("ghost", insecure=True))


def test_closing_the_async_side_cancels_the_operation() -> None:
    """What a client disconnect does to a streamed pull: the thread-side generator sees `cancel` and is closed."""
    cancel = threading.Event()
    closed = threading.Event()

    def steps() -> Iterator[int]:
        try:
            for i in range(1000):
                check_cancel(cancel)
                yield i
        finally:
            closed.set()

    async def consume() -> int:
        it = iterate_in_thread(steps(), cancel)
        first = await it.__anext__()
        await it.aclose()  # type: ignore[attr-defined]
        return first

    assert asyncio.run(consume()) == 0
    assert cancel.is_set() and closed.is_set()
