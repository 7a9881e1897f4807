"""ModelCreator, ModelManager and blob uploads against a store in a temp folder (no server, no model run)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from herd.errors import BlobNotFound, DigestMismatch, InvalidRequest, ModelNotFound, NotImplementedFeature, UnsafePath
from herd.registry.create import CreateSpec, ModelCreator, typed_parameters
from herd.registry.manage import ModelManager
from herd.registry.store import Store
from tests.integration.fake_registry import write_tiny_gguf


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


def in_store(store: Store, path: Path) -> str:
    """A local file as /api/create may name it: a blob of the store (put there as an upload would)."""
    digest, _ = store.add_blob_file(path)
    return str(store.blob_path(digest))


def run(creator: ModelCreator, **fields: object) -> list[str]:
    return [p.status for p in creator.create(CreateSpec(**fields))]  # type: ignore[arg-type]


def layers(store: Store, name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for layer in store.find(name).manifest.layers:
        out.setdefault(layer.kind, []).append(store.read_blob(layer.digest).decode("utf-8", "replace"))
    return out


def test_create_from_a_store_blob_path_then_derive(store: Store, gguf: Path) -> None:
    creator = ModelCreator(store)
    statuses = run(creator, model="base", from_=in_store(store, gguf), system="S1", parameters={"temperature": 0.5, "top_k": 3})
    assert statuses[0] == "parsing GGUF" and statuses[-2:] == ["writing manifest", "success"]
    base = store.find("base")
    assert base.manifest.layer("model").digest == "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    config = json.loads(store.read_blob(base.manifest.config.digest))
    assert config["model_family"] == "llama" and config["model_format"] == "gguf"

    statuses = run(creator, model="child", from_="base", system="S2", parameters={"temperature": "0.25", "stop": "X"},
                   license=("L1", "L2"), messages=(("user", "hi"),))
    assert statuses[0].startswith("using existing layer")
    got = layers(store, "child")
    assert got["system"] == ["S2"]  # replaced, not added
    assert json.loads(got["params"][0]) == {"temperature": 0.25, "top_k": 3, "stop": ["X"]}  # merged over the base
    assert got["license"] == ["L1", "L2"]
    assert json.loads(got["messages"][0]) == [{"role": "user", "content": "hi"}]
    kinds = [x.kind for x in store.find("child").manifest.layers]
    assert kinds[0] == "model" and kinds.count("system") == 1
    assert store.find("child").manifest.config == base.manifest.config


def test_create_from_uploaded_files(store: Store, gguf: Path) -> None:
    digest, _ = store.add_blob_file(gguf)
    statuses = run(ModelCreator(store), model="up", files=(("weights.gguf", digest.upper().replace("SHA256", "sha256")),))
    assert statuses[-1] == "success"
    assert f"using existing layer {digest}" in statuses
    assert store.find("up").manifest.layer("model").digest == digest


@pytest.mark.parametrize(("fields", "message"), [
    ({"model": ""}, "invalid model name"),
    ({"model": "a"}, "neither 'from' or 'files' was specified"),
    ({"model": "a", "from_": "base", "quantize": "q8_0"}, "quantization to 'q8_0' is not supported"),
    ({"model": "a", "files": (("C:\\x.gguf", "sha256:" + "0" * 64),)}, "file path must be relative"),
    ({"model": "a", "files": (("a/../../x.gguf", "sha256:" + "0" * 64),)}, "file path must be relative"),
    ({"model": "a", "files": (("x.gguf", "sha256:xyz"),)}, "invalid digest format"),
    ({"model": "a", "files": (("x.safetensors", "SELF"),)}, "config.json is missing"),  # not a BERT folder
    ({"model": "a", "files": (("x.bin", "SELF"),)}, "GGUF files and BERT safetensors folders only"),
    ({"model": "a", "from_": "/"}, '"from" names a file outside the model store'),
    ({"model": "a", "from_": "base", "template": "{{ messages | nosuchfilter }}"}, "template error"),
    ({"model": "a", "from_": "base", "messages": (("wizard", "x"),)}, "message role"),
])
def test_create_refusals(store: Store, gguf: Path, fields: dict[str, object], message: str) -> None:
    creator = ModelCreator(store)
    run(creator, model="base", from_=in_store(store, gguf))
    if fields.get("files") and fields["files"][0][1] == "SELF":  # type: ignore[index]
        digest = store.find("base").manifest.layer("model").digest  # type: ignore[union-attr]
        fields = {**fields, "files": ((fields["files"][0][0], digest),)}  # type: ignore[index]
    with pytest.raises(InvalidRequest, match=message):
        run(creator, **fields)


def test_create_from_unknown_model_is_404(store: Store) -> None:
    with pytest.raises(ModelNotFound, match="model 'ghost' not found"):
        run(ModelCreator(store), model="a", from_="ghost")


def test_a_failed_create_writes_no_manifest(store: Store, gguf: Path) -> None:
    with pytest.raises(InvalidRequest):
        run(ModelCreator(store), model="half", from_=in_store(store, gguf), parameters={"nope": 1})
    assert store.list() == []


def test_typed_parameters() -> None:
    assert typed_parameters({"num_ctx": "2048", "temperature": 1, "use_mmap": "false", "stop": ["a", "b"],
                             "seed": None}) == {"num_ctx": 2048, "temperature": 1.0, "use_mmap": False,
                                                "stop": ["a", "b"]}
    with pytest.raises(InvalidRequest, match='option "stop"'):
        typed_parameters({"stop": [1]})
    with pytest.raises(InvalidRequest, match="must be of type integer"):
        typed_parameters({"num_ctx": True})


def test_legacy_modelfile_field(store: Store, gguf: Path) -> None:
    creator = ModelCreator(store)
    run(creator, model="base", from_=in_store(store, gguf))
    run(creator, model="legacy", modelfile='FROM base\nSYSTEM "old client"\nPARAMETER stop END\n')
    got = layers(store, "legacy")
    assert got["system"] == ["old client"] and json.loads(got["params"][0]) == {"stop": ["END"]}


# ---- uploads, copy, delete ----------------------------------------------------------------------------------


async def _body(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def upload(manager: ModelManager, digest: str, *parts: bytes) -> bool:
    return asyncio.run(manager.receive_blob(digest, _body(*parts)))


def test_blob_upload_verifies_before_it_enters_the_store(store: Store) -> None:
    manager = ModelManager(store)
    data = b"x" * 5_000_000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(BlobNotFound, match=f'blob "{digest}" not found'):
        manager.check_blob(digest)
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        upload(manager, digest, data[:-1], b"y")
    assert not store.has_blob(digest) and list(store.blobs.iterdir()) == []  # no temp file left either
    assert upload(manager, digest, data[:3_000_000], data[3_000_000:]) is True
    assert upload(manager, digest) is False  # already stored: the body is not read
    manager.check_blob(digest.replace("sha256:", "sha256-"))
    with pytest.raises(InvalidRequest, match="invalid digest format"):
        manager.check_blob("sha256:../../x")


def test_copy_and_delete_keep_shared_blobs(store: Store, gguf: Path) -> None:
    creator, manager = ModelCreator(store), ModelManager(store)
    run(creator, model="a", from_=in_store(store, gguf), system="shared")
    manager.copy("a", "b")
    partial = store.blobs / ("sha256-" + "1" * 64 + "-partial")
    partial.write_bytes(b"half a download")
    manager.delete("a")
    assert {m.name.display for m in store.list()} == {"b:latest"}
    assert all(store.has_blob(x.digest) for x in store.find("b").manifest.layers)
    manager.delete("b")
    assert [p.name for p in store.blobs.iterdir()] == [partial.name]  # a pull in progress is not pruned
    with pytest.raises(ModelNotFound, match="model 'b' not found"):
        manager.delete("b")
    with pytest.raises(ModelNotFound, match='model "a" not found'):
        manager.copy("a", "c")
    with pytest.raises(InvalidRequest, match='destination "a/../b" is invalid'):
        manager.copy("x", "a/../b")




def test_pinned_blobs_survive_a_prune(store: Store) -> None:
    layer = store.write_blob(b"written, not yet named by a manifest")
    with store.pinned([layer.digest]):
        store.prune_blobs()
        assert store.has_blob(layer.digest)
    store.prune_blobs()
    assert not store.has_blob(layer.digest)


# ---- no file outside the store (issue 12, point 9) ------------------------------------------------------------


@pytest.mark.parametrize("source", [
    "/etc/passwd", "/etc/hostname", "/dev/zero", "/proc/self/environ", "./model.gguf", "../x.gguf", "~/x.gguf",
    "x.gguf", "bad name!", "/tmp", "{store}/blobs/../../../etc/passwd", "{store}/manifests", "{store}/blobs",
    "{store}/blobs/sha256-" + "0" * 64 + "/../../x", "{store}/blobs/sha256-" + "A" * 64, "{outside}",
    "/etc/passwd\0.gguf",
])
def test_from_a_path_outside_the_store_is_refused_before_it_is_opened(store: Store, gguf: Path, tmp_path: Path,
                                                                     source: str) -> None:
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(gguf.read_bytes())  # a valid GGUF, so only the rule can refuse it
    text = source.format(store=store.root, outside=outside)
    with pytest.raises(UnsafePath, match="outside the model store"):
        run(ModelCreator(store), model="a", from_=text)
    with pytest.raises(UnsafePath):  # the same path in a legacy Modelfile's FROM
        run(ModelCreator(store), model="a", modelfile=f"FROM {text}\n")
    assert store.list() == []


def test_from_a_blob_path_needs_no_copy_and_symlinked_store_works(store: Store, gguf: Path, tmp_path: Path) -> None:
    path = in_store(store, gguf)
    before = sorted(p.name for p in store.blobs.iterdir())
    run(ModelCreator(store), model="viablob", from_=path)
    link = tmp_path / "link-to-models"
    link.symlink_to(store.root, target_is_directory=True)
    run(ModelCreator(store), model="vialink", from_=str(link / "blobs" / Path(path).name))
    digest = "sha256:" + Path(path).name.removeprefix("sha256-")
    for name in ("viablob", "vialink"):
        assert store.find(name).manifest.layer("model").digest == digest  # type: ignore[union-attr]
    after = {p.name for p in store.blobs.iterdir()}
    assert set(before) <= after and Path(path).name in after


def test_a_missing_blob_path_is_a_400_not_a_file_read(store: Store) -> None:
    path = store.blobs / ("sha256-" + "1" * 64)
    with pytest.raises(InvalidRequest, match="not found; upload it"):
        run(ModelCreator(store), model="a", from_=str(path))


def test_adapter_paths_are_refused(store: Store, gguf: Path) -> None:
    base = in_store(store, gguf)
    with pytest.raises(InvalidRequest, match="adapters"):
        run(ModelCreator(store), model="a", modelfile=f"FROM {base}\nADAPTER ../x\n")
    with pytest.raises(InvalidRequest, match="adapters"):
        run(ModelCreator(store), model="a", from_=base, adapters=(("/etc/passwd", "sha256:" + "0" * 64),))


# ---- RENDERER / PARSER (issue 12, point 10) -------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "named"), [
    ({"renderer": "olmo9"}, 'RENDERER "olmo9" is not supported'),
    ({"parser": "frob"}, 'PARSER "frob" is not supported'),
    ({"modelfile": "FROM {base}\nRENDERER olmo9\n"}, 'RENDERER "olmo9"'),
    ({"modelfile": "FROM {base}\nPARSER lfm9\n"}, 'PARSER "lfm9"'),
])
def test_unknown_renderer_or_parser_is_refused_not_stored(store: Store, gguf: Path, fields: dict[str, str],
                                                         named: str) -> None:
    base = in_store(store, gguf)
    run(ModelCreator(store), model="base", from_=base)
    spec = {k: v.format(base=base) for k, v in fields.items()}
    if "modelfile" not in spec:
        spec["from_"] = "base"
    with pytest.raises(NotImplementedFeature, match=named):
        run(ModelCreator(store), model="withrenderer", **spec)
    assert [m.name for m in store.list()] == [store.find("base").name]


@pytest.mark.parametrize(("fields", "family"), [
    ({"parser": "qwen3-coder"}, "qwen3-coder"),
    ({"renderer": "harmony", "parser": "harmony"}, "harmony"),
    ({"modelfile": "FROM {base}\nPARSER deepseek3.1\n"}, "deepseek3"),
    ({"parser": "GLM-4.7"}, "glm-4.7"),
])
def test_known_renderer_or_parser_is_stored_and_chooses_the_family(store: Store, gguf: Path, fields: dict[str, str],
                                                                   family: str) -> None:
    """A RENDERER or PARSER herd knows goes into the manifest config, and the model's family is then the one it
    names, whatever its template says (Ollama's order of choice)."""
    from herd.registry.models import ModelCatalog

    base = in_store(store, gguf)
    run(ModelCreator(store), model="base", from_=base)
    spec = {k: v.format(base=base) for k, v in fields.items()}
    if "modelfile" not in spec:
        spec["from_"] = "base"
    run(ModelCreator(store), model="named", **spec)
    resolved = ModelCatalog(store).resolve("named")
    assert resolved.family.name == family
    assert ModelCatalog(store).resolve("base").family.name != family
