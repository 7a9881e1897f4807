"""GGUF Jinja chat templates, rendered like HF `apply_chat_template`, in jinja2's immutable sandbox.

A template is untrusted input (it comes with a downloaded model or a Modelfile): the sandbox blocks attribute
walks to internals, and rendering has a size and time budget so a hostile template cannot hang the server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from herd.errors import InvalidRequest

MAX_OUTPUT_CHARS = 8 * 1024 * 1024
MAX_RENDER_SECONDS = 5.0


class _TemplateError(Exception):
    pass


def _raise_exception(message: str) -> None:
    raise _TemplateError(message)


def _tojson(value: object, indent: int | None = None, separators: tuple[str, str] | None = None,
            sort_keys: bool = False, ensure_ascii: bool = False) -> str:
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _BudgetEnvironment(ImmutableSandboxedEnvironment):
    """Checks the clock on every attribute access and call, so endless loops end with an error."""

    _local = threading.local()  # renders may run in worker threads at once

    def _check(self) -> None:
        deadline = getattr(self._local, "deadline", 0.0)
        if deadline and time.monotonic() > deadline:
            raise _TemplateError("template rendering took too long")

    def getattr(self, obj: object, attribute: str) -> object:  # type: ignore[override]
        self._check()
        return super().getattr(obj, attribute)

    def getitem(self, obj: object, argument: object) -> object:  # type: ignore[override]
        self._check()
        return super().getitem(obj, argument)

    def call(self, __context: object, __obj: object, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        self._check()
        return super().call(__context, __obj, *args, **kwargs)


@lru_cache(maxsize=32)
def _compile(source: str) -> tuple[_BudgetEnvironment, jinja2.Template]:
    env = _BudgetEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env, env.from_string(source)
    except jinja2.TemplateError as exc:
        raise InvalidRequest(f"template error: {exc}") from None


def check_template(source: str) -> None:
    _compile(source)


def render_jinja(source: str, variables: Mapping[str, object]) -> str:
    env, template = _compile(source)
    env._local.deadline = time.monotonic() + MAX_RENDER_SECONDS
    out: list[str] = []
    size = 0
    try:
        for piece in template.generate(**variables):
            size += len(piece)
            if size > MAX_OUTPUT_CHARS:
                raise _TemplateError("template output is too large")
            env._check()
            out.append(piece)
    except _TemplateError as exc:
        raise InvalidRequest(f"template error: {exc}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise InvalidRequest(f"template error: {exc}") from None
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError,
            ZeroDivisionError, OverflowError, RecursionError) as exc:
        raise InvalidRequest(f"template error: {exc}") from None
    finally:
        env._local.deadline = 0.0
    return "".join(out)
