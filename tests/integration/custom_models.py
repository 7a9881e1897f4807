"""Models made for tests: the default model's weights with another template, written straight into a store."""

from __future__ import annotations

import json
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
