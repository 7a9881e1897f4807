"""GGUF Jinja chat templates, rendered like HF `apply_chat_template`, in jinja2's immutable sandbox.

A template is untrusted input (it comes with a downloaded model or a Modelfile): the sandbox blocks attribute
walks to internals, and rendering has a size and time budget so a hostile template cannot hang the server.
"""

from __future__ import annotations

import functools
import json
import operator
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import generate_lorem_ipsum

from herd.errors import InvalidRequest

MAX_OUTPUT_CHARS = 8 * 1024 * 1024
MAX_RENDER_SECONDS = 2.0  # real chat templates render in milliseconds
MAX_TEMPLATE_CHARS = 1024 * 1024  # real ones are tens of kilobytes
# No value a template builds may be larger than its whole output may be. Every operation that can make a value
# much larger than its inputs (`*`, `**`, `%`, replace, join, indent, format widths, ...) is checked *before* it
# allocates, since the time budget cannot interrupt one huge allocation.
MAX_VALUE_LEN = MAX_OUTPUT_CHARS
MAX_INT_ARG = 100_000  # a count or width passed to a call or filter; jinja's own range() stops at the same size
MAX_INT_BITS = 1 << 16
# A width or precision of 7+ digits in a %-format or a {...:...} format spec.
_HUGE_FORMAT = re.compile(r"%[^a-zA-Z%]*\d{7}|\{[^{}]*:[^{}]*\d{7}")


class _TemplateError(Exception):
    pass


def _raise_exception(message: str) -> None:
    raise _TemplateError(message)


def _tojson(value: object, indent: int | None = None, separators: tuple[str, str] | None = None,
            sort_keys: bool = False, ensure_ascii: bool = False) -> str:
    # Each nesting level repeats the indent on every line: a wide one multiplies the output. Templates use 2 or 4.
    if (isinstance(indent, int) and indent > 16) or (isinstance(indent, str) and len(indent) > 16):
        raise _TemplateError("tojson indent is too large")
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)



def _length(value: object) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)) else 0


def _check_value(value: object) -> object:
    if _length(value) > MAX_VALUE_LEN:
        raise _TemplateError("template value is too large")
    return value


def _check_args(args: tuple[object, ...], kwargs: Mapping[str, object]) -> None:
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_INT_ARG:
            raise _TemplateError(f"argument {arg} is too large")


def _check_format(fmt: object) -> None:
    if isinstance(fmt, str) and _HUGE_FORMAT.search(fmt):
        raise _TemplateError("format width is too large")


def _check_grows(method: str, obj: object, args: tuple[object, ...], kwargs: Mapping[str, object]) -> None:
    """Estimate the result of a call that can grow its input many times over, before it runs."""
    if isinstance(obj, (str, bytes)):
        if method == "replace" and len(args) >= 2 and _length(args[0]) <= _length(args[1]):
            old, new = args[0], args[1]
            count = obj.count(old) if old else len(obj) + 1  # type: ignore[arg-type]
            if len(obj) + count * (_length(new) - _length(old)) > MAX_VALUE_LEN:
                raise _TemplateError("template value is too large")
        elif method == "join" and args:
            items = args[0]
            if isinstance(items, (list, tuple)) and len(obj) * len(items) > MAX_VALUE_LEN:
                raise _TemplateError("template value is too large")
        elif method == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            tabs = obj.count("\t") if isinstance(obj, str) else obj.count(b"\t")
            if isinstance(size, int) and len(obj) + tabs * size > MAX_VALUE_LEN:
                raise _TemplateError("template value is too large")
        elif method in ("format", "format_map"):
            _check_format(obj)


def _guard_filter(name: str, fn: Callable[..., object]) -> Callable[..., object]:
    """Wrap a filter: counts and widths bounded, results bounded, and the growing filters estimated first."""
    # pass_context / pass_eval_context / pass_environment filters get that object first; functools.wraps keeps
    # the marker attribute jinja reads.
    skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(fn)
    def guarded(*args: object, **kwargs: object) -> object:
        value, rest = (args[skip] if len(args) > skip else None), args[skip + 1:]
        if name == "join" and value is not None and not isinstance(value, (str, list, tuple)):
            # A range or generator: make it a list (bounded by range's own limit) so the estimate can count it.
            value = list(value)  # type: ignore[call-overload]
            args = (*args[:skip], value, *rest)
        if name == "format":
            _check_format(value)
        else:
            _check_args(rest, kwargs)
        if name in ("replace", "join", "indent", "wordwrap", "center"):
            _check_filter_growth(name, value, rest, kwargs)
        result = fn(*args, **kwargs)
        return _check_value(result)

    return guarded


def _check_filter_growth(name: str, value: object, rest: tuple[object, ...], kwargs: Mapping[str, object]) -> None:
    if name == "replace" and isinstance(value, str):
        _check_grows("replace", value, rest, kwargs)
    elif name == "join":
        sep = rest[0] if rest else kwargs.get("d", "")
        if isinstance(value, (list, tuple)) and _length(sep) * len(value) > MAX_VALUE_LEN:
            raise _TemplateError("template value is too large")
    elif name == "indent" and isinstance(value, str):
        width = rest[0] if rest else kwargs.get("width", 4)
        per_line = _length(width) if isinstance(width, str) else (width if isinstance(width, int) else 0)
        if len(value) + (value.count("\n") + 1) * per_line > MAX_VALUE_LEN:
            raise _TemplateError("template value is too large")
    elif name == "wordwrap" and isinstance(value, str):
        width = rest[0] if rest else kwargs.get("width", 79)
        wrap = rest[2] if len(rest) > 2 else kwargs.get("wrapstring")
        breaks = len(value) // width + 1 if isinstance(width, int) and width > 0 else 0
        if len(value) + breaks * _length(wrap) > MAX_VALUE_LEN:
            raise _TemplateError("template value is too large")


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if n > 100 or max > 1000 or min > max:
        raise _TemplateError("lipsum arguments are too large")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


def _mul(left: object, right: object) -> object:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int):
            if len(seq) * max(count, 0) > MAX_VALUE_LEN:
                raise _TemplateError("template value is too large")
            return operator.mul(left, right)
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise _TemplateError("number is too large")
    return operator.mul(left, right)


def _pow(left: object, right: object) -> object:
    if (isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1
            and left.bit_length() * right > MAX_INT_BITS):
        raise _TemplateError("number is too large")
    return operator.pow(left, right)  # type: ignore[call-overload]


def _mod(left: object, right: object) -> object:
    _check_format(left)
    return _check_value(operator.mod(left, right))  # type: ignore[call-overload]


_BINOPS: dict[str, Callable[[object, object], object]] = {"*": _mul, "**": _pow, "%": _mod}


class _BudgetEnvironment(ImmutableSandboxedEnvironment):
    """Checks the clock on every attribute access and call, so endless loops end with an error, and bounds the
    size of every value before it is built (see MAX_VALUE_LEN)."""

    _local = threading.local()  # renders may run in worker threads at once
    intercepted_binops = frozenset(_BINOPS)

    def _check(self) -> None:
        deadline = getattr(self._local, "deadline", 0.0)
        if deadline and time.monotonic() > deadline:
            raise _TemplateError("template rendering took too long")

    def unsafe_undefined(self, obj: object, attribute: str) -> jinja2.Undefined:
        # jinja returns an Undefined that fails only when used, and prints as "" when it is not: a probe such as
        # `{{ x.__class__ }}` would render quietly. Fail at once, so every attempt is a clean template error.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context: object, operator: str, left: object, right: object) -> object:  # type: ignore[override]
        self._check()
        return _BINOPS[operator](left, right)

    def getattr(self, obj: object, attribute: str) -> object:  # type: ignore[override]
        self._check()
        return _check_value(super().getattr(obj, attribute))

    def getitem(self, obj: object, argument: object) -> object:  # type: ignore[override]
        self._check()
        return _check_value(super().getitem(obj, argument))

    def call(self, __context: Context, __obj: object, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        self._check()
        method = getattr(__obj, "__name__", "")
        # The sandbox hands out str.format as a wrapper function; the string is the wrapped method's __self__.
        owner = getattr(__obj, "__self__", None) or getattr(getattr(__obj, "__wrapped__", None), "__self__", None)
        if __obj is not self.globals.get("range") and method not in ("format", "format_map"):
            _check_args(args, kwargs)  # range() has its own bound; a format's arguments are data
        if method == "join" and isinstance(owner, str) and args and not isinstance(args[0], (str, list, tuple)):
            args = (list(args[0]), *args[1:])  # type: ignore[call-overload]  # so the estimate can count it
        _check_grows(method, owner, args, kwargs)
        return _check_value(super().call(__context, __obj, *args, **kwargs))


@lru_cache(maxsize=32)
def _compile(source: str) -> tuple[_BudgetEnvironment, jinja2.Template]:
    env = _BudgetEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.filters.update({name: _guard_filter(name, fn) for name, fn in env.filters.items()})
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["lipsum"] = _bounded_lipsum
    if len(source) > MAX_TEMPLATE_CHARS:
        raise InvalidRequest("template error: template is too large")
    try:
        return env, env.from_string(source)
    except jinja2.TemplateError as exc:
        raise InvalidRequest(f"template error: {exc}") from None
    except (RecursionError, MemoryError):
        raise InvalidRequest("template error: template is nested too deeply") from None


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
    except MemoryError:
        raise InvalidRequest("template error: out of memory") from None
    except jinja2.exceptions.SecurityError as exc:
        raise InvalidRequest(f"template error: {exc}") from None
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError,
            ZeroDivisionError, OverflowError, RecursionError) as exc:
        raise InvalidRequest(f"template error: {exc}") from None
    finally:
        env._local.deadline = 0.0
    return "".join(out)
