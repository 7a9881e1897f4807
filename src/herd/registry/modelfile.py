"""Ollama Modelfiles: parsing (FROM, TEMPLATE, SYSTEM, PARAMETER, MESSAGE, LICENSE, ADAPTER, DRAFT, RENDERER,
PARSER) and the text that /api/show prints (`modelfile` and `parameters`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from herd.errors import InvalidRequest
from herd.options import BOOL_OPTIONS, FLOAT_OPTIONS, INT_OPTIONS, LIST_OPTIONS, STRING_OPTIONS, validate_options

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
_INSTRUCTIONS = ("from", "template", "system", "parameter", "message", "license", "adapter", "requires", "renderer",
                 "parser", "draft")


@dataclass(frozen=True)
class Modelfile:
    from_: str | None = None
    # Every FROM, in order: a GGUF and its vision projector are two FROM lines (`from_` is the first).
    froms: tuple[str, ...] = ()
    template: str | None = None
    system: str | None = None
    parameters: tuple[tuple[str, object], ...] = ()
    messages: tuple[tuple[str, str], ...] = ()
    license: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()
    # DRAFT (Ollama's): a small model with the same vocabulary that proposes tokens for speculative decoding; a
    # model name or a GGUF file, resolved as FROM is (registry/draft.py).
    draft: str | None = None
    # Parsed so that create can refuse a value it does not know by name (registry/create.py), rather than the
    # Modelfile failing as if RENDERER or PARSER were not Ollama instructions.
    renderer: str | None = None
    parser: str | None = None

    def parameter_dict(self) -> dict[str, object]:
        """Repeated keys (stop) become lists, as Ollama stores them in the params layer."""
        out: dict[str, object] = {}
        for key, value in self.parameters:
            if key == "stop":
                out.setdefault("stop", [])
                out["stop"].append(value)  # type: ignore[union-attr]
            else:
                out[key] = value
        return out


def typed_parameter(key: str, raw: str) -> object:
    key = key.lower()
    try:
        if key in INT_OPTIONS:
            return int(float(raw))
        if key in FLOAT_OPTIONS:
            return float(raw)
        if key in BOOL_OPTIONS:
            if raw.lower() not in ("true", "false"):
                raise ValueError(raw)
            return raw.lower() == "true"
    except ValueError:
        raise InvalidRequest(f"invalid value for parameter {key!r}: {raw!r}") from None
    if key == "stop":
        return raw
    if key in STRING_OPTIONS:  # kv_cache_type: one word of a fixed set, checked as the option is
        return validate_options({key: raw})[key]
    if key in LIST_OPTIONS:
        # rpc_servers, tensor_split: checked now, kept as the text written (`a:1,b:2`, `3,1`, `none`), which is
        # what /api/show prints back; the options read it into a list at load.
        validate_options({key: raw})
        return ",".join(p.strip() for p in raw.split(",") if p.strip())
    raise InvalidRequest(f"unknown parameter '{key}'")


def _read_value(text: str, pos: int) -> tuple[str, int]:
    """A value is bare to the end of the line, "quoted", or \"\"\"triple quoted\"\"\" across lines."""
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    if text.startswith('"""', pos):
        end = text.find('"""', pos + 3)
        if end == -1:
            raise InvalidRequest("unterminated multiline string in Modelfile")
        return text[pos + 3 : end], end + 3
    if text.startswith('"', pos):
        m = re.compile(r'"((?:[^"\\]|\\.)*)"').match(text, pos)
        if not m:
            raise InvalidRequest("unterminated string in Modelfile")
        return json.loads('"' + m.group(1) + '"'), m.end()
    end = text.find("\n", pos)
    end = len(text) if end == -1 else end
    return text[pos:end].strip(), end


def parse_modelfile(text: str) -> Modelfile:
    fields: dict[str, object] = {"parameters": [], "messages": [], "license": [], "adapters": []}
    pos = 0
    text = text.replace("\r\n", "\n")
    while pos < len(text):
        m = re.compile(r"[ \t\n]*").match(text, pos)
        pos = m.end() if m else pos
        if pos >= len(text):
            break
        if text[pos] == "#":
            nl = text.find("\n", pos)
            pos = len(text) if nl == -1 else nl + 1
            continue
        m = re.compile(r"([A-Za-z]+)[ \t]+").match(text, pos)
        if not m or m.group(1).lower() not in _INSTRUCTIONS:
            word = text[pos:].split(None, 1)[0] if text[pos:].split() else ""
            raise InvalidRequest(f'command must be one of "from", "license", "template", "system", "adapter", '
                                 f'"draft", "renderer", "parser", "parameter", or "message" (got {word!r})')
        cmd = m.group(1).lower()
        pos = m.end()
        if cmd == "parameter":
            km = re.compile(r"([A-Za-z_]+)[ \t]+").match(text, pos)
            if not km:
                raise InvalidRequest("missing parameter name or value in Modelfile")
            value, pos = _read_value(text, km.end())
            fields["parameters"].append((km.group(1).lower(), typed_parameter(km.group(1), value)))  # type: ignore[union-attr]
        elif cmd == "message":
            rm = re.compile(r"([A-Za-z]+)[ \t]+").match(text, pos)
            if not rm or rm.group(1).lower() not in MESSAGE_ROLES:
                raise InvalidRequest("message role must be one of \"system\", \"user\", \"assistant\" or \"tool\"")
            value, pos = _read_value(text, rm.end())
            fields["messages"].append((rm.group(1).lower(), value))  # type: ignore[union-attr]
        else:
            value, pos = _read_value(text, pos)
            if cmd == "license":
                fields["license"].append(value)  # type: ignore[union-attr]
            elif cmd == "adapter":
                fields["adapters"].append(value)  # type: ignore[union-attr]
            elif cmd == "draft":
                # One GGUF drafts; Ollama's several DRAFT lines are the files of one safetensors folder, which herd
                # does not convert for drafting.
                if fields.get("draft"):
                    raise InvalidRequest("a Modelfile takes one DRAFT line")
                fields["draft"] = value
            elif cmd == "from":
                fields.setdefault("froms", [])
                fields["froms"].append(value)  # type: ignore[union-attr]
                fields["from_"] = fields["froms"][0]  # type: ignore[index]
            elif cmd in ("template", "system", "renderer", "parser"):
                fields[cmd] = value
    if not fields.get("from_"):
        raise InvalidRequest("no FROM line")
    return Modelfile(
        from_=fields.get("from_"),  # type: ignore[arg-type]
        froms=tuple(fields.get("froms", ())),  # type: ignore[arg-type]
        template=fields.get("template"),  # type: ignore[arg-type]
        system=fields.get("system"),  # type: ignore[arg-type]
        parameters=tuple(fields["parameters"]),  # type: ignore[arg-type]
        messages=tuple(fields["messages"]),  # type: ignore[arg-type]
        license=tuple(fields["license"]),  # type: ignore[arg-type]
        adapters=tuple(fields["adapters"]),  # type: ignore[arg-type]
        draft=fields.get("draft") or None,  # type: ignore[arg-type]
        renderer=fields.get("renderer") or None,  # type: ignore[arg-type]
        parser=fields.get("parser") or None,  # type: ignore[arg-type]
    )


# ---- printing (what /api/show returns) -----------------------------------------------------------------------


def go_value(value: object) -> str:
    """A parameter value as Go's %v / %q print it in Ollama's `parameters` text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e21:
            return str(int(value))
        text = repr(value)
        if "e-0" in text:
            text = text.replace("e-0", "e-")
        return text
    return json.dumps(str(value), ensure_ascii=False)


def format_parameters(params: Iterable[tuple[str, object]]) -> str:
    return "\n".join(f"{key:<30} {go_value(value)}" for key, value in params)


def render_modelfile(
    *,
    name: str,
    model_path: str,
    template: str | None,
    system: str | None,
    parameters: Iterable[tuple[str, object]],
    messages: Iterable[tuple[str, str]] = (),
    license: Iterable[str] = (),
    draft: str | None = None,
) -> str:
    lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {name}",
        "",
        f"FROM {model_path}",
    ]
    if draft:
        lines.append(f"DRAFT {draft}")  # where Ollama prints it: after FROM and ADAPTER
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    for key, value in parameters:
        text = value if isinstance(value, str) else go_value(value)
        lines.append(f"PARAMETER {key} {text}")
    for text in license:
        lines.append(f'LICENSE """{text}"""')
    for role, content in messages:
        lines.append(f'MESSAGE {role} """{content}"""')
    return "\n".join(lines) + "\n"
