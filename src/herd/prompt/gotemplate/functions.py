"""The template functions: Go's builtins and Ollama's (`json`, `currentDate`, `yesterdayDate`,
`toTypeScriptType`)."""

from __future__ import annotations

import datetime as _dt
import urllib.parse
from collections.abc import Callable, Mapping, Sequence

from herd.prompt.gotemplate.values import (
    _fmt_v,
    _go_type,
    _is_int,
    _is_num,
    _JsonList,
    _JsonView,
    _marshal,
    _sprint,
    _sprintf,
    _Struct,
    _TemplateError,
)

# --------------------------------------------------------------------------------------------------------------
# Builtin functions


def _truth(v: object) -> bool:
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return v != 0
    if isinstance(v, _Struct | _JsonView):
        return True
    if hasattr(v, "__len__"):
        return len(v) > 0  # type: ignore[arg-type]
    return True


def _kind(v: object) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if _is_num(v):
        return "num"
    if isinstance(v, str):
        return "str"
    return "other"


def _eq2(a: object, b: object) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        return False
    if ka == "other":
        if isinstance(a, list | dict | _JsonView | _Struct) or isinstance(b, list | dict | _JsonView | _Struct):
            raise _TemplateError("error calling eq: non-comparable types")
        return a is b or a == b
    return a == b


def _fn_eq(a: object, *bs: object) -> bool:
    if not bs:
        raise _TemplateError("error calling eq: missing argument for comparison")
    return any(_eq2(a, b) for b in bs)


def _fn_ne(a: object, b: object) -> bool:
    return not _eq2(a, b)


def _ordered(name: str, a: object, b: object) -> tuple[object, object]:
    if (_is_num(a) and _is_num(b)) or (isinstance(a, str) and isinstance(b, str)):
        return a, b
    if _kind(a) != _kind(b):
        raise _TemplateError(f"error calling {name}: incompatible types for comparison")
    raise _TemplateError(f"error calling {name}: invalid type for comparison")


def _fn_lt(a: object, b: object) -> bool:
    x, y = _ordered("lt", a, b)
    return x < y  # type: ignore[operator]


def _fn_le(a: object, b: object) -> bool:
    x, y = _ordered("le", a, b)
    return x <= y  # type: ignore[operator]


def _fn_gt(a: object, b: object) -> bool:
    x, y = _ordered("gt", a, b)
    return x > y  # type: ignore[operator]


def _fn_ge(a: object, b: object) -> bool:
    x, y = _ordered("ge", a, b)
    return x >= y  # type: ignore[operator]


def _fn_not(a: object) -> bool:
    return not _truth(a)


def _fn_len(a: object) -> int:
    if a is None:
        return 0
    if isinstance(a, str):
        return len(a.encode("utf-8"))
    if isinstance(a, bytes | bytearray | list | tuple | Mapping):
        return len(a)
    raise _TemplateError(f"error calling len: len of type {_go_type(a)}")


def _to_index(v: object, name: str) -> int:
    if not _is_int(v):
        raise _TemplateError(f"error calling {name}: cannot index slice/array with type {_go_type(v)}")
    return v  # type: ignore[return-value]


def _fn_index(item: object, *keys: object) -> object:
    v = item
    for k in keys:
        if v is None:
            return None
        if isinstance(v, Mapping):
            try:
                v = v.get(k)
            except TypeError:
                v = None
        elif isinstance(v, str | bytes | bytearray | list | tuple):
            i = _to_index(k, "index")
            seq = v.encode("utf-8") if isinstance(v, str) else v
            if not 0 <= i < len(seq):
                raise _TemplateError(f"error calling index: index out of range: {i}")
            v = seq[i]
        else:
            raise _TemplateError(f"error calling index: can't index item of type {_go_type(v)}")
    return v


def _fn_slice(item: object, *idx: object) -> object:
    if len(idx) > 3:
        raise _TemplateError(f"error calling slice: too many slice indexes: {len(idx)}")
    if item is None:
        raise _TemplateError("error calling slice: slice of untyped nil")
    if not isinstance(item, str | bytes | bytearray | list | tuple):
        raise _TemplateError(f"error calling slice: can't slice item of type {_go_type(item)}")
    if isinstance(item, str) and len(idx) == 3:
        raise _TemplateError("error calling slice: cannot 3-index slice a string")
    seq = item.encode("utf-8") if isinstance(item, str) else item
    n = len(seq)
    bounds = [_to_index(x, "slice") for x in idx]
    lo = bounds[0] if bounds else 0
    hi = bounds[1] if len(bounds) > 1 else n
    cap = bounds[2] if len(bounds) > 2 else n
    if not (0 <= lo <= hi <= cap <= n):
        raise _TemplateError(f"error calling slice: index out of range: {lo}:{hi}")
    part = seq[lo:hi]
    if isinstance(item, str):
        return bytes(part).decode("utf-8", "replace")
    if isinstance(item, _JsonList):
        return _JsonList(part)
    return part


def _fn_print(*args: object) -> str:
    return _sprint(args)


def _fn_println(*args: object) -> str:
    return " ".join(_fmt_v(a) for a in args) + "\n"


def _fn_printf(fmt: object, *args: object) -> str:
    if not isinstance(fmt, str):
        raise _TemplateError(f"error calling printf: format is {_go_type(fmt)}, not string")
    return _sprintf(fmt, args)


def _eval_args(args: Sequence[object]) -> str:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return _sprint(args)


_HTML_ESC = {"<": "&lt;", ">": "&gt;", "&": "&amp;", "'": "&#39;", '"': "&#34;", "\x00": "\ufffd"}


def _fn_html(*args: object) -> str:
    return "".join(_HTML_ESC.get(c, c) for c in _eval_args(args))


_JS_ESC = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E", "&": "\\u0026", "=": "\\u003D"}


def _fn_js(*args: object) -> str:
    out = []
    for c in _eval_args(args):
        if c in _JS_ESC:
            out.append(_JS_ESC[c])
        elif ord(c) < 0x20 or (ord(c) >= 0x80 and not c.isprintable()):
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return "".join(out)


def _fn_urlquery(*args: object) -> str:
    return urllib.parse.quote_plus(_eval_args(args), safe="")


def _fn_call(fn: object, *args: object) -> object:
    if fn is None:
        raise _TemplateError("error calling call: call of nil")
    if not callable(fn):
        raise _TemplateError(f"error calling call: non-function of type {_go_type(fn)}")
    return fn(*args)


def _fn_json(v: object) -> str:
    return _marshal(v)


def _fn_current_date(*_args: object) -> str:
    return _dt.date.today().isoformat()


def _fn_yesterday_date(*_args: object) -> str:
    return (_dt.date.today() - _dt.timedelta(days=1)).isoformat()


_TS_TYPES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
             "array": "any[]", "object": "Record<string, any>", "null": "null"}


def _fn_to_ts_type(v: object) -> str:
    if isinstance(v, _JsonView):
        t = v.raw.get("type")
    elif isinstance(v, Mapping):
        t = v.get("type")
    else:
        return "any"
    if isinstance(t, str) and t:
        return _TS_TYPES.get(t, "any")
    if isinstance(t, list | tuple) and t:
        return " | ".join(_TS_TYPES.get(x, "any") if isinstance(x, str) else "any" for x in t)
    return "any"


# name -> (function, min args, max args or None)
_FUNCS: dict[str, tuple[Callable[..., object], int, int | None]] = {
    "and": (lambda *a: a[-1], 1, None),  # evaluated lazily by the executor
    "or": (lambda *a: a[-1], 1, None),
    "not": (_fn_not, 1, 1),
    "eq": (_fn_eq, 1, None),
    "ne": (_fn_ne, 2, 2),
    "lt": (_fn_lt, 2, 2),
    "le": (_fn_le, 2, 2),
    "gt": (_fn_gt, 2, 2),
    "ge": (_fn_ge, 2, 2),
    "len": (_fn_len, 1, 1),
    "index": (_fn_index, 1, None),
    "slice": (_fn_slice, 1, None),
    "print": (_fn_print, 0, None),
    "printf": (_fn_printf, 1, None),
    "println": (_fn_println, 0, None),
    "html": (_fn_html, 0, None),
    "js": (_fn_js, 0, None),
    "urlquery": (_fn_urlquery, 0, None),
    "call": (_fn_call, 1, None),
    "json": (_fn_json, 1, 1),
    "currentDate": (_fn_current_date, 0, None),
    "yesterdayDate": (_fn_yesterday_date, 0, None),
    "toTypeScriptType": (_fn_to_ts_type, 1, 1),
}
