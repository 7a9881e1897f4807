"""DRAFT (Ollama's Modelfile keyword, `/api/create` `draft` or `draft_files`): a small model stored with a target
model, which the runner loads beside it to propose tokens for speculative decoding (engine/draft.py).

The draft GGUF is a layer of the target's manifest with Ollama's media type for it, so it travels with the model
(copy, push, pull, delete) like the projector does. Drafting works on token ids: the target verifies the draft's
ids, so both must give every id the same text. That is checked here, once, from the two GGUF headers (no weights
are read), and a draft that differs is refused at create time with a 400 that names it, instead of a runner
that would accept nothing or, with a longer vocabulary, propose ids the target does not have.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from herd.errors import InvalidRequest
from herd.registry.gguf_info import read_gguf_full, read_gguf_info
from herd.registry.manage import go_quote
from herd.registry.store import LAYER_PREFIX, Layer, Store

DRAFT_MEDIA_TYPE = LAYER_PREFIX + "draft"  # Ollama's manifest.MediaTypeImageDraft

# The header keys that fix what each token id means. Merges and scores only change how text is split into ids,
# which the draft never does (it is fed the target's ids), so they may differ.
_VOCAB_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type")


def vocab_mismatch(target: dict[str, object], draft: dict[str, object]) -> str | None:
    """How two GGUF headers' vocabularies differ, in words, or None when every id means the same token."""
    tokens_t, tokens_d = target.get("tokenizer.ggml.tokens"), draft.get("tokenizer.ggml.tokens")
    if not isinstance(tokens_d, list) or not tokens_d:
        return "the draft has no vocabulary"
    if not isinstance(tokens_t, list) or not tokens_t:
        return "the model has no vocabulary"
    if len(tokens_t) != len(tokens_d):
        return f"{len(tokens_d)} tokens in the draft, {len(tokens_t)} in the model"
    for key in _VOCAB_KEYS:
        a, b = target.get(key), draft.get(key)
        if a == b:
            continue
        if key == "tokenizer.ggml.model":
            return f"tokenizer {draft.get(key)!r} in the draft, {target.get(key)!r} in the model"
        if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
            return f"{key} is missing or of another length in one of them"
        i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        what = "text" if key.endswith("tokens") else "type"
        return f"token {i} has {what} {b[i]!r} in the draft, {a[i]!r} in the model"
    return None


def check_draft(target: Path, draft: Path, named: str) -> None:
    """Refuse (400) a draft that is not a text model or whose vocabulary is not the target's."""
    info = read_gguf_info(draft)  # malformed: 400 invalid GGUF file
    if info.architecture == "clip":
        raise InvalidRequest(f"draft {go_quote(named)} is a vision projector, not a model that can draft")
    if info.has_pooling:
        raise InvalidRequest(f"draft {go_quote(named)} is an embedding model, not one that can draft")
    # The full headers: the lean one leaves the vocabulary out. Read once per create, never cached.
    why = vocab_mismatch(read_gguf_full(target).metadata, read_gguf_full(draft).metadata)
    if why is not None:
        raise InvalidRequest(
            f"draft {go_quote(named)} does not have the model's vocabulary ({why}); a draft model "
            "must share the model's tokenizer"
        )


def with_draft(
    store: Store, layers: Sequence[Layer], target: Path | None, source: Sequence[Layer], named: str
) -> tuple[Layer, ...]:
    """`layers` with the model layer of `source` (what the draft's name, path or files resolved to) as the draft
    layer, replacing the one a base model had. `target` is the target GGUF when it is new, else its model layer's
    blob is read."""
    model = next((x for x in source if x.kind == "model"), None)
    if model is None:
        raise InvalidRequest(f"draft {go_quote(named)} has no model GGUF")
    if target is None:
        own = next((x for x in layers if x.kind == "model"), None)
        if own is None:
            raise InvalidRequest("the model has no GGUF for a draft to pair with")
        target = store.blob_path(own.digest)
    check_draft(target, store.blob_path(model.digest), named)
    return (*(x for x in layers if x.kind != "draft"), Layer(DRAFT_MEDIA_TYPE, model.digest, model.size))
