"""Models made for tests: the default model's weights with another template, written straight into a store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from herd.registry.default_model import DEFAULT_MODEL
from herd.registry.names import ModelName
from herd.registry.store import LAYER_PREFIX, Layer, Manifest, Store

# ChatML that renders `tools` and asks for <tool_call> JSON (Hermes/Qwen style).
TOOLS_TEMPLATE = """{%- if tools %}<|im_start|>system
You are a function-calling assistant. For every request, call one of these functions:
{% for t in tools %}{{ t.function | tojson }}
{% endfor %}Answer only with <tool_call>{"name": <function name>, "arguments": <arguments object>}</tool_call>.<|im_end|>
{% endif %}
{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}{% elif m.role == 'tool' %}<tool_response>{{ m.content }}</tool_response>{% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}<|im_start|>assistant
"""

# ChatML whose generation prompt pre-opens <think> when thinking is on (earlier answers drop their </think> part).
THINK_TEMPLATE = """{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.role == 'assistant' %}{{ m.content.split('</think>')[-1] }}{% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}<|im_start|>assistant
{% if enable_thinking is not defined or enable_thinking %}<think>
{% endif %}"""


def add_model(models_dir: Path, name: str, template: str | None = None, system: str | None = None,
              params: dict[str, object] | None = None) -> str:
    store = Store(models_dir)
    base = store.find(DEFAULT_MODEL).manifest
    layers = [layer for layer in base.layers if layer.kind == "model"]
    for kind, text in (("template", template), ("system", system),
                       ("params", json.dumps(params) if params else None)):
        if text is not None:
            blob = store.write_blob(text.encode())
            layers.append(Layer(LAYER_PREFIX + kind, blob.digest, blob.size))
    store.write_manifest(ModelName.parse(name), Manifest(config=base.config, layers=tuple(layers)))
    return name


def f16_copy(work_dir: Path) -> Path:
    """The default model's weights requantized to F16 by llama.cpp's own llama_model_quantize (a few seconds, no
    download): memory-bound like the big models people run on CPUs, where verifying several tokens in one pass
    costs little more than one. Quantized in a child process: llama.cpp state left in the test process by earlier
    in-process tests made the quantize crash it once."""
    from herd.registry.default_model import default_model_file

    src = default_model_file()
    assert src is not None, "the default model package is not installed"
    out = work_dir / "smollm2-f16.gguf"
    if not out.exists():
        part = out.with_suffix(".part")
        done = subprocess.run([sys.executable, "-c", _QUANTIZE, str(src), str(part)], capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, f"llama_model_quantize failed: {done.stderr[-2000:]}"
        part.rename(out)  # whole files only: an interrupted run leaves a .part, never a truncated model
    return out


_QUANTIZE = """
import ctypes, sys
import llama_cpp as L
params = L.llama_model_quantize_default_params()
params.ftype = L.LLAMA_FTYPE_MOSTLY_F16
params.allow_requantize = True  # the source is Q4_1
sys.exit(L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


def add_gguf_model(models_dir: Path, name: str, gguf: Path) -> str:
    """A model of the default model's config and template with the weights of `gguf`, linked into the store."""
    store = Store(models_dir)
    base = store.find(DEFAULT_MODEL).manifest
    digest, size = store.add_blob_file(gguf, link=True)
    layers = [Layer(LAYER_PREFIX + "model", digest, size)]
    layers += [layer for layer in base.layers if layer.kind != "model"]
    store.write_manifest(ModelName.parse(name), Manifest(config=base.config, layers=tuple(layers)))
    return name
