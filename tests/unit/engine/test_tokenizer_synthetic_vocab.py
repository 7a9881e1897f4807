"""Family markers as special tokens of a vocabulary, on a synthetic GGUF written here with the `gguf` package.

The file is a vocabulary only (no tensors; the tokenizer process and llguidance load vocab-only): a byte-level BPE
(every byte one token, one merge) plus the markers the families' call grammars use, typed as real models type
them: `<|python_tag|>` (Llama 3), `[TOOL_CALLS]`, `[ARGS]`, `[CALL_ID]` (Mistral) as CONTROL tokens, `<tool_call>` /
`</tool_call>` (Qwen2.5, Hermes) as USER_DEFINED; the merged "he" is an ordinary token, one piece but not special.

What it proves: `Tokenizer.special_tokens` (engine/tokenizer.py) reports exactly the markers that are one control or
user-defined token, on a vocabulary that has them, through the real tokenizer process and llama.cpp; the id of such
a marker is what `Tokenizer.encode(marker, False)` returns; and llguidance's llama.cpp bridge (the tokenizer the
runner's constraint uses) sees the same tokens as special, so the family grammars built from that answer compile
against it and admit the marker token: by name for `<...>` markers, by id for Mistral's bracketed ones.
What it cannot prove: anything about the real Llama 3 or Mistral vocabularies beyond these token types (none can be
downloaded here), nor how a model behaves with them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest
from llguidance import LLMatcher, LLTokenizer

from herd.constrain.families import family_call_grammar
from herd.constrain.grammar import ToolSpec
from herd.constrain.matcher import build_tokenizer
from herd.engine.tokenizer import Tokenizers

CONTROL, USER_DEFINED, NORMAL = 3, 4, 1  # gguf.TokenType
MARKERS = [
    ("<|begin_of_text|>", CONTROL),
    ("<|eot_id|>", CONTROL),
    ("<|python_tag|>", CONTROL),
    ("[TOOL_CALLS]", CONTROL),
    ("[ARGS]", CONTROL),
    ("[CALL_ID]", CONTROL),
    ("<tool_call>", USER_DEFINED),
    ("</tool_call>", USER_DEFINED),
]
FIRST_MARKER = 257  # after the 256 byte tokens and the one merged token "he"
MARKER_ID = {text: FIRST_MARKER + i for i, (text, _) in enumerate(MARKERS)}


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte -> printable character map, which llama.cpp's BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_vocab(path: Path) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    # The hyperparameters llama.cpp reads before the vocabulary, even for a vocab-only load.
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([*_byte_level_alphabet(), "he", *(text for text, _ in MARKERS)])
    w.add_token_types([NORMAL] * 257 + [kind for _, kind in MARKERS])
    w.add_token_merges(["h e"])
    w.add_bos_token_id(MARKER_ID["<|begin_of_text|>"])
    w.add_eos_token_id(MARKER_ID["<|eot_id|>"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("vocab") / "markers.gguf")


def test_special_tokens_reports_the_family_markers(vocab_path: Path) -> None:
    tokenizers = Tokenizers()
    try:
        tok = tokenizers.get(str(vocab_path))
        assert tok.n_vocab == FIRST_MARKER + len(MARKERS)
        asked = ("<|python_tag|>", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "<tool_call>", "</tool_call>", "he",
                 "<|channel|>", "<|python_tag|", "[THINK]", "")
        assert tok.special_tokens(asked) == frozenset(
            {"<|python_tag|>", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "<tool_call>", "</tool_call>"})
        # The id a grammar needs for a bracketed marker: the one token the marker's text encodes to.
        for marker in ("[TOOL_CALLS]", "[ARGS]", "<|python_tag|>"):
            assert tok.encode(marker, False) == (MARKER_ID[marker],)
        assert tok.encode("he", False) == (FIRST_MARKER - 1,)  # one token, yet not special
        assert tok.decode([MARKER_ID["[TOOL_CALLS]"]]) == "[TOOL_CALLS]"  # the text the parser reads
    finally:
        tokenizers.close()


@pytest.fixture(scope="module")
def llg_tokenizer(vocab_path: Path) -> Iterator[LLTokenizer]:
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(vocab_path).encode(), params)
    assert model, "llama.cpp could not load the synthetic vocabulary"
    try:
        yield build_tokenizer(llama_cpp.llama_model_get_vocab(model))
    finally:
        llama_cpp.llama_model_free(model)


def _accepts(tokenizer: LLTokenizer, grammar: str | None, tokens: list[int]) -> bool:
    assert grammar is not None
    m = LLMatcher(tokenizer, grammar, log_level=0)
    assert not m.is_error(), m.get_error()
    return all(m.consume_token(t) for t in tokens) and m.is_accepting() and not m.is_error()


WEATHER = ToolSpec("get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}},
                                       "required": ["city"]})
ARGS = json.dumps({"city": "Paris"})


def test_llguidance_bridge_sees_the_same_special_tokens(llg_tokenizer: LLTokenizer) -> None:
    for marker, token in MARKER_ID.items():
        assert llg_tokenizer.is_special_token(token), marker
    assert not llg_tokenizer.is_special_token(FIRST_MARKER - 1)  # "he"
    assert llg_tokenizer.tokenize_str("[TOOL_CALLS]") != [MARKER_ID["[TOOL_CALLS]"]]  # text never becomes the token


def test_family_grammars_admit_the_marker_tokens(llg_tokenizer: LLTokenizer) -> None:
    """The markers `special_tokens` reports go into the family grammars; the runner's llguidance tokenizer then lets
    the model write each as its one token."""
    text = llg_tokenizer.tokenize_str
    call = '{"name": "get_weather", "parameters": ' + ARGS + "}"
    llama3 = family_call_grammar("llama3", "<|python_tag|>", [WEATHER], None, frozenset({"<|python_tag|>"}))
    assert _accepts(llg_tokenizer, llama3, [MARKER_ID["<|python_tag|>"], *text(call)])
    ids = {m: MARKER_ID[m] for m in ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]")}
    mistral = family_call_grammar("mistral", "[TOOL_CALLS]x[ARGS]", [WEATHER], "", ids)
    tokens = [MARKER_ID["[TOOL_CALLS]"], *text("get_weather"), MARKER_ID["[ARGS]"], *text(ARGS)]
    assert _accepts(llg_tokenizer, mistral, tokens)
    qwen = family_call_grammar("qwen3", "", [WEATHER], None, frozenset({"<tool_call>", "</tool_call>"}))
    hermes = '{"name": "get_weather", "arguments": ' + ARGS + "}"
    assert _accepts(llg_tokenizer, qwen, [*text("Sure."), MARKER_ID["<tool_call>"], *text(hermes),
                                          MARKER_ID["</tool_call>"]])
    # Without the answer of special_tokens, the grammars mask those tokens off.
    plain = family_call_grammar("llama3", "<|python_tag|>", [WEATHER], None)
    assert not _accepts(llg_tokenizer, plain, [MARKER_ID["<|python_tag|>"], *text(call)])
