"""Go `text/template` chat templates, as Ollama runs them (spec 7.2, 7.3), in pure Python.

`GoTemplate(source)` parses a template (syntax errors raise `InvalidRequest("template error: ...")`) and
`render(data)` executes it. `render_chat` builds Ollama's data model (`.System`, `.Messages`, `.Tools`, `.Think`,
...) from a conversation and runs the template, including the legacy `.System/.Prompt/.Response` form.
`uses_tools`, `uses_suffix`, `uses_thinking`, `uses_messages` and `uses_response` read the parsed tree.

The language subset: text and actions with `{{-`/`-}}` trimming, comments, field chains on `.`, `$` and `$x`,
variables (`:=` and `=`), `if`/`else if`/`else`, `range` (lists, maps, ints; `$i, $v :=`; `else`; `break`,
`continue`), `with`/`else with`/`else`, `define`/`template`/`block`, pipelines, parentheses, literals, and the
functions `and or not eq ne lt le gt ge len index slice print printf println html js urlquery call` plus
Ollama's `json currentDate yesterdayDate toTypeScriptType`.

Differences from Go, on purpose: a missing key or field reads as nil and prints as "" (Go prints
"<no value>" or fails); comparisons of mixed number types compare the values; Python methods of the data are
never called (templates come from model files and are not trusted).
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from herd.errors import InvalidRequest

__all__ = [
    "GoTemplate",
    "MessageLike",
    "ToolCallLike",
    "ToolLike",
    "render_chat",
    "uses_messages",
    "uses_response",
    "uses_suffix",
    "uses_thinking",
    "uses_tools",
]


# --------------------------------------------------------------------------------------------------------------
# Input protocols


class ToolCallLike(Protocol):
    id: str
    index: int
    name: str
    arguments: dict


class MessageLike(Protocol):
    role: str
    content: str
    thinking: str
    images: tuple[bytes, ...]
    tool_calls: tuple[ToolCallLike, ...]
    tool_name: str
    tool_call_id: str


class ToolLike(Protocol):
    name: str
    description: str
    parameters: dict
    raw: dict


# --------------------------------------------------------------------------------------------------------------
# Errors


class _TemplateError(Exception):
    """A parse or execution error; the public API turns it into InvalidRequest."""


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


_MISSING = object()  # "no final argument" in a pipeline
_MAX_DEPTH = 100  # nested {{template}} calls
# A template is untrusted input (it comes with a model): execution has a budget, so `{{ range 1000000000 }}` or a
# string doubled in a loop ends with a template error instead of a hang or an out-of-memory server.
_MAX_STEPS = 1_000_000  # nodes executed, range iterations included
_MAX_OUTPUT_CHARS = 8 * 1024 * 1024  # the rendered prompt, and any one value a function returns
_MAX_SECONDS = 2.0
_MAX_WIDTH = 100_000  # printf width and precision
_MAX_SOURCE_CHARS = 1024 * 1024


# --------------------------------------------------------------------------------------------------------------
# Values: Go-like views of the data model


class _Struct:
    """A Go struct: fields by exact Go name. Prints as compact JSON of `json_value`."""

    __slots__ = ("fields", "json_value")

    def __init__(self, fields: dict[str, object], json_value: object) -> None:
        self.fields = fields
        self.json_value = json_value

    def __str__(self) -> str:
        return _marshal(self.json_value)

    def __repr__(self) -> str:
        return f"_Struct({self.fields!r})"


_GO_TO_JSON = {"Defs": "$defs", "ID": "id"}


class _JsonView:
    """A JSON object seen as a Go struct (tools): `.Function.Name` reads key "function" then "name".

    Prints as its compact JSON, as Ollama's tool types do.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: Mapping[str, object]) -> None:
        self.raw = raw

    def field(self, name: str) -> object:
        raw = self.raw
        key = _GO_TO_JSON.get(name) or (name[:1].lower() + name[1:])
        if key in raw:
            value = raw[key]
        elif name in raw:
            key, value = name, raw[name]
        else:
            low = name.lower()
            for k, v in raw.items():
                if isinstance(k, str) and k.lower() == low:
                    key, value = k, v
                    break
            else:
                return None
        return _wrap_json(value, key)

    def __str__(self) -> str:
        return _marshal(self.raw)

    def __repr__(self) -> str:
        return f"_JsonView({self.raw!r})"


class _JsonMap(dict):  # type: ignore[type-arg]
    """A Go map that prints as JSON (tool call arguments, tool properties). Ranges in insertion order."""

    def __str__(self) -> str:
        return _marshal(self)


class _JsonList(list):  # type: ignore[type-arg]
    """A Go slice that prints as JSON (the tool list)."""

    def __str__(self) -> str:
        return _marshal(self)


def _wrap_json(value: object, key: str) -> object:
    if isinstance(value, Mapping):
        if key in ("properties", "$defs"):
            return _JsonMap({k: _wrap_json(v, "") for k, v in value.items()})
        return _JsonView(value)
    if isinstance(value, list | tuple):
        return [_wrap_json(v, "") for v in value]
    return value


# --------------------------------------------------------------------------------------------------------------
# Formatting (Go fmt %v, encoding/json)


def _float_digits(f: float) -> tuple[str, int]:
    """Shortest decimal digits of abs(f) and the decimal point position (value = 0.DIGITS * 10**dp)."""
    _sign, digits, exp = Decimal(repr(abs(f))).as_tuple()
    ds = "".join(map(str, digits)).lstrip("0")
    assert isinstance(exp, int)
    if not ds:
        return "0", 1
    stripped = ds.rstrip("0")
    exp += len(ds) - len(stripped)
    return stripped, len(stripped) + exp


def _exp_form(ds: str, dp: int, min_exp_digits: int) -> str:
    mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
    e = dp - 1
    return f"{mant}e{'-' if e < 0 else '+'}{abs(e):0{min_exp_digits}d}"


def _fixed_form(ds: str, dp: int) -> str:
    if dp <= 0:
        return "0." + "0" * (-dp) + ds
    if dp >= len(ds):
        return ds + "0" * (dp - len(ds))
    return ds[:dp] + "." + ds[dp:]


def _go_float(f: float) -> str:
    """Go's %v for a float64 (strconv 'g' with the shortest digits)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, f) < 0 else ""
    if f == 0:
        return sign + "0"
    ds, dp = _float_digits(f)
    e = dp - 1
    if e < -4 or e >= 6:  # strconv: shortest 'g' switches to %e from exponent 6 (1e+06)
        return sign + _exp_form(ds, dp, 2)
    return sign + _fixed_form(ds, dp)


def _json_float(f: float) -> str:
    if math.isnan(f) or math.isinf(f):
        raise _TemplateError(f"json: unsupported value: {_go_float(f)}")
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    sign = "-" if f < 0 else ""
    ds, dp = _float_digits(f)
    a = abs(f)
    if a < 1e-6 or a >= 1e21:
        return sign + _exp_form(ds, dp, 1)
    return sign + _fixed_form(ds, dp)


_JSON_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f",
             "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JSON_NEEDS = re.compile(r'["\\<>&\u2028\u2029\x00-\x1f]')


def _json_string(s: str) -> str:
    def repl(m: re.Match[str]) -> str:
        c = m.group()
        return _JSON_ESC.get(c) or f"\\u{ord(c):04x}"

    return '"' + _JSON_NEEDS.sub(repl, s) + '"'


def _marshal(v: object) -> str:
    """Go json.Marshal: compact, with <, >, & escaped. Maps keep their insertion order."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _json_float(v)
    if isinstance(v, str):
        return _json_string(v)
    if isinstance(v, bytes | bytearray):
        return '"' + base64.b64encode(bytes(v)).decode("ascii") + '"'
    if isinstance(v, _JsonView):
        return _marshal(v.raw)
    if isinstance(v, _Struct):
        return _marshal(v.json_value)
    if isinstance(v, Mapping):
        return "{" + ",".join(_json_string(str(k)) + ":" + _marshal(x) for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_marshal(x) for x in v) + "]"
    return _json_string(str(v))


def _sorted_items(m: Mapping[object, object]) -> list[tuple[object, object]]:
    if isinstance(m, _JsonMap):
        return list(m.items())
    try:
        return sorted(m.items(), key=lambda kv: kv[0])  # type: ignore[arg-type,return-value]
    except TypeError:
        return list(m.items())


def _fmt_v(v: object, top: bool = False) -> str:
    """Go %v. At the top level of an action, nil prints as "" (Ollama-style), elsewhere as "<nil>"."""
    if v is None:
        return "" if top else "<nil>"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, _Struct | _JsonView | _JsonMap | _JsonList):
        return str(v)
    if isinstance(v, bytes | bytearray):
        return "[" + " ".join(str(b) for b in v) + "]"
    if isinstance(v, Mapping):
        return "map[" + " ".join(f"{_fmt_v(k)}:{_fmt_v(x)}" for k, x in _sorted_items(v)) + "]"
    if isinstance(v, list | tuple):
        return "[" + " ".join(_fmt_v(x) for x in v) + "]"
    return str(v)


def _go_type(v: object) -> str:
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, bytes | bytearray):
        return "[]uint8"
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    if isinstance(v, list | tuple):
        return "[]interface {}"
    return type(v).__name__


_GO_QUOTE_ESC = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
                 "\\": "\\\\", '"': '\\"'}


def _go_quote(s: str) -> str:
    out = []
    for c in s:
        if c in _GO_QUOTE_ESC:
            out.append(_GO_QUOTE_ESC[c])
        elif c.isprintable():
            out.append(c)
        elif ord(c) < 0x80:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?([a-zA-Z%])")


def _sprintf(fmt: str, args: Sequence[object]) -> str:
    out: list[str] = []
    i = argi = 0
    n = len(fmt)
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        m = _VERB.match(fmt, j)
        if m is None:
            out.append("%!(NOVERB)")
            break
        i = m.end()
        flags, width, prec, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[argi]
        argi += 1
        out.append(_fmt_verb(verb, flags, int(width) if width else 0,
                             None if prec is None else int(prec or "0"), arg))
    if argi < len(args):
        extra = ", ".join(f"{_go_type(a)}={_fmt_v(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _fmt_verb(verb: str, flags: str, width: int, prec: int | None, arg: object) -> str:
    if width > _MAX_WIDTH or (prec is not None and prec > _MAX_WIDTH):
        raise _TemplateError("printf width or precision is too large")
    bad = f"%!{verb}(<nil>)" if arg is None else f"%!{verb}({_go_type(arg)}={_fmt_v(arg)})"
    numeric = False
    s: str
    if verb == "v":
        if isinstance(arg, float) and prec is not None:
            s = format(arg, f".{prec}g")
        else:
            s = _fmt_v(arg)
        numeric = _is_num(arg)
    elif verb == "s":
        if isinstance(arg, str):
            s = arg
        elif isinstance(arg, bytes | bytearray):
            s = bytes(arg).decode("utf-8", "replace")
        elif arg is None or _is_num(arg) or isinstance(arg, bool):
            return bad
        else:
            s = _fmt_v(arg)
        if prec is not None:
            s = s[:prec]
    elif verb == "d":
        if not _is_int(arg):
            return bad
        s = str(arg)
        numeric = True
    elif verb in "fFeEgG":
        if not _is_num(arg):
            return bad
        f = float(arg)  # type: ignore[arg-type]
        if verb in "gG" and prec is None:
            s = _go_float(f)
            if verb == "G":
                s = s.upper()
        else:
            s = format(f, f".{6 if prec is None else prec}{verb}")
        numeric = True
    elif verb == "t":
        if not isinstance(arg, bool):
            return bad
        s = "true" if arg else "false"
    elif verb == "q":
        if isinstance(arg, str):
            s = _go_quote(arg)
        elif _is_int(arg):
            s = "'" + _go_quote(chr(arg))[1:-1].replace("'", "\\'") + "'"  # type: ignore[arg-type]
        else:
            return bad
    elif verb in "xX":
        if _is_int(arg):
            s = format(arg, "x")
            numeric = True
        elif isinstance(arg, str | bytes | bytearray):
            data = arg.encode() if isinstance(arg, str) else bytes(arg)
            s = data.hex()
        else:
            return bad
        if verb == "X":
            s = s.upper()
    elif verb in "obc" or verb == "U":
        if not _is_int(arg):
            return bad
        iv: int = arg  # type: ignore[assignment]
        if verb == "o":
            s = format(iv, "o")
        elif verb == "b":
            s = format(iv, "b")
        elif verb == "c":
            s = chr(iv)
        else:
            s = f"U+{iv:04X}"
        numeric = verb in "ob"
    else:
        return bad
    if numeric and "+" in flags and not s.startswith("-"):
        s = "+" + s
    if width and len(s) < width:
        if "-" in flags:
            s = s.ljust(width)
        elif "0" in flags and numeric:
            sign = s[0] if s[:1] in "+-" else ""
            s = sign + s[len(sign):].rjust(width - len(sign), "0")
        else:
            s = s.rjust(width)
    return s


def _sprint(args: Sequence[object]) -> str:
    out: list[str] = []
    prev_str = True
    for i, a in enumerate(args):
        is_str = isinstance(a, str)
        if i > 0 and not is_str and not prev_str:
            out.append(" ")
        out.append(_fmt_v(a))
        prev_str = is_str
    return "".join(out)


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


# --------------------------------------------------------------------------------------------------------------
# Tree


@dataclass(slots=True)
class _Text:
    text: str


@dataclass(slots=True)
class _Field:
    idents: tuple[str, ...]


@dataclass(slots=True)
class _Var:
    name: str
    idents: tuple[str, ...] = ()


@dataclass(slots=True)
class _Dot:
    pass


@dataclass(slots=True)
class _Nil:
    pass


@dataclass(slots=True)
class _Lit:
    value: object


@dataclass(slots=True)
class _Ident:
    name: str


@dataclass(slots=True)
class _SubPipe:
    pipe: _Pipe


@dataclass(slots=True)
class _Chain:
    node: object
    idents: tuple[str, ...]


@dataclass(slots=True)
class _Cmd:
    args: list[object]


@dataclass(slots=True)
class _Pipe:
    decl: list[str]
    is_assign: bool
    cmds: list[_Cmd]


@dataclass(slots=True)
class _Action:
    pipe: _Pipe
    line: int


@dataclass(slots=True)
class _Branch:
    kind: str  # "if" | "range" | "with"
    pipe: _Pipe
    body: list[object]
    else_: list[object] | None
    line: int


@dataclass(slots=True)
class _TemplateCall:
    name: str
    pipe: _Pipe | None
    line: int


@dataclass(slots=True)
class _BreakNode:
    pass


@dataclass(slots=True)
class _ContinueNode:
    pass


# --------------------------------------------------------------------------------------------------------------
# Lexer


@dataclass(slots=True)
class _Tok:
    kind: str  # field var dot ident string number bool nil lparen rparen pipe declare assign comma
    val: object
    spaced: bool
    pos: int


@dataclass(slots=True)
class _ActionPiece:
    toks: list[_Tok]
    pos: int


_SPACE = " \t\r\n"
_IDENT_RE = re.compile(r"[^\W\d]\w*")
_VAR_RE = re.compile(r"\$\w*")
_NUM_RE = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]*(?:\.[0-9a-fA-F_]*)?(?:[pP][+-]?[0-9_]+)?"
    r"|0[bB][01_]+|0[oO][0-7_]+"
    r"|(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9_]+)?)i?"
)
_KEYWORDS = frozenset({"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"})
_SIMPLE_ESC = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
               "'": "'", '"': '"'}


class _Source:
    def __init__(self, src: str) -> None:
        self.src = src

    def line(self, pos: int) -> int:
        return self.src.count("\n", 0, pos) + 1

    def error(self, pos: int, msg: str) -> _TemplateError:
        return _TemplateError(f"template: :{self.line(pos)}: {msg}")


def _unquote(body: str, src: _Source, pos: int) -> str:
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogatepass")
            i += 1
            continue
        if i + 1 >= n:
            raise src.error(pos, "invalid syntax in quoted string")
        e = body[i + 1]
        i += 2
        if e in _SIMPLE_ESC:
            out += _SIMPLE_ESC[e].encode()
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i:i + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise src.error(pos, "invalid syntax in quoted string")
            i += width
            code = int(digits, 16)
            if e == "x":
                out.append(code)
            else:
                if code > 0x10FFFF:
                    raise src.error(pos, "invalid syntax in quoted string")
                out += chr(code).encode("utf-8", "surrogatepass")
        elif e in "01234567":
            digits = body[i - 1:i + 2]
            if len(digits) != 3 or not all(d in "01234567" for d in digits) or int(digits, 8) > 255:
                raise src.error(pos, "invalid syntax in quoted string")
            i += 2
            out.append(int(digits, 8))
        else:
            raise src.error(pos, "invalid syntax in quoted string")
    return out.decode("utf-8", "replace")


def _parse_number(text: str, src: _Source, pos: int) -> int | float:
    t = text.replace("_", "")
    try:
        if t.endswith("i"):
            raise ValueError("complex")
        body = t.lstrip("+-")
        neg = t.startswith("-")
        if body[:2] in ("0x", "0X"):
            if any(c in body for c in ".pP"):
                v: int | float = float.fromhex(body)
            else:
                v = int(body, 16)
        elif body[:2] in ("0b", "0B", "0o", "0O"):
            v = int(body, 0)
        elif any(c in body for c in ".eE"):
            v = float(body)
        elif len(body) > 1 and body[0] == "0":
            v = int(body, 8)
        else:
            v = int(body)
    except ValueError:
        raise src.error(pos, f"illegal number syntax: {text!r}") from None
    return -v if neg else v


def _lex(src: _Source) -> list[str | _ActionPiece]:
    s = src.src
    n = len(s)
    pieces: list[str | _ActionPiece] = []
    pos = 0
    trim_next = False
    while True:
        start = s.find("{{", pos)
        text = s[pos:] if start < 0 else s[pos:start]
        if trim_next:
            text = text.lstrip(_SPACE)
        if start < 0:
            if text:
                pieces.append(text)
            return pieces
        k = start + 2
        if k + 1 < n and s[k] == "-" and s[k + 1] in _SPACE:
            text = text.rstrip(_SPACE)
            k += 2
        if text:
            pieces.append(text)
        if s.startswith("/*", k):
            end = s.find("*/", k + 2)
            if end < 0:
                raise src.error(start, "unclosed comment")
            k = end + 2
            if s.startswith("}}", k):
                pos, trim_next = k + 2, False
            elif k < n and s[k] in _SPACE and s.startswith("-}}", k + 1):
                pos, trim_next = k + 4, True
            else:
                raise src.error(start, "comment ends before closing delimiter")
            continue
        toks, pos, trim_next = _lex_action(src, k, start)
        pieces.append(_ActionPiece(toks, start))


def _lex_action(src: _Source, k: int, start: int) -> tuple[list[_Tok], int, bool]:
    s = src.src
    n = len(s)
    toks: list[_Tok] = []
    spaced = True
    while True:
        if k >= n:
            raise src.error(start, "unclosed action")
        c = s[k]
        if s.startswith("}}", k):
            return toks, k + 2, False
        if c in _SPACE:
            if s.startswith("-}}", k + 1):
                return toks, k + 4, True
            k += 1
            spaced = True
            continue
        if c == '"':
            j = k + 1
            while True:
                if j >= n or s[j] == "\n":
                    raise src.error(k, "unterminated quoted string")
                if s[j] == "\\":
                    j += 2
                    continue
                if s[j] == '"':
                    break
                j += 1
            toks.append(_Tok("string", _unquote(s[k + 1:j], src, k), spaced, k))
            k = j + 1
        elif c == "`":
            j = s.find("`", k + 1)
            if j < 0:
                raise src.error(k, "unterminated raw quoted string")
            toks.append(_Tok("string", s[k + 1:j].replace("\r", ""), spaced, k))
            k = j + 1
        elif c == "'":
            j = k + 1
            while True:
                if j >= n or s[j] == "\n":
                    raise src.error(k, "unterminated character constant")
                if s[j] == "\\":
                    j += 2
                    continue
                if s[j] == "'":
                    break
                j += 1
            val = _unquote(s[k + 1:j], src, k)
            if len(val) != 1:
                raise src.error(k, f"malformed character constant: {s[k:j + 1]}")
            toks.append(_Tok("number", ord(val), spaced, k))
            k = j + 1
        elif c in "()|,":
            kind = {"(": "lparen", ")": "rparen", "|": "pipe", ",": "comma"}[c]
            toks.append(_Tok(kind, c, spaced, k))
            k += 1
        elif s.startswith(":=", k):
            toks.append(_Tok("declare", ":=", spaced, k))
            k += 2
        elif c == "=":
            toks.append(_Tok("assign", "=", spaced, k))
            k += 1
        elif c == "$":
            m = _VAR_RE.match(s, k)
            assert m is not None
            toks.append(_Tok("var", m.group(), spaced, k))
            k = m.end()
        elif c == "." and k + 1 < n and (s[k + 1] == "_" or s[k + 1].isalpha()):
            m = _IDENT_RE.match(s, k + 1)
            assert m is not None
            toks.append(_Tok("field", m.group(), spaced, k))
            k = m.end()
        elif c.isdigit() or (c in "+-." and k + 1 < n and (s[k + 1].isdigit() or (
                c != "." and s[k + 1] == "." and k + 2 < n and s[k + 2].isdigit()))):
            m = _NUM_RE.match(s, k)
            if m is None or m.end() == k or (m.end() < n and (s[m.end()].isalnum() or s[m.end()] == "_")):
                end = m.end() if m else k + 1
                raise src.error(k, f"bad number syntax: {s[k:end + 1]!r}")
            toks.append(_Tok("number", _parse_number(m.group(), src, k), spaced, k))
            k = m.end()
        elif c == ".":
            toks.append(_Tok("dot", ".", spaced, k))
            k += 1
        elif c == "_" or c.isalpha():
            m = _IDENT_RE.match(s, k)
            assert m is not None
            word = m.group()
            if word in ("true", "false"):
                toks.append(_Tok("bool", word == "true", spaced, k))
            elif word == "nil":
                toks.append(_Tok("nil", None, spaced, k))
            else:
                toks.append(_Tok("ident", word, spaced, k))
            k = m.end()
        else:
            raise src.error(k, f"unrecognized character in action: {c!r}")
        spaced = False


# --------------------------------------------------------------------------------------------------------------
# Parser


class _Cursor:
    def __init__(self, toks: list[_Tok], end_pos: int) -> None:
        self.toks = toks
        self.i = 0
        self.end_pos = end_pos

    def peek(self, off: int = 0) -> _Tok | None:
        j = self.i + off
        return self.toks[j] if j < len(self.toks) else None

    def next(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def done(self) -> bool:
        return self.i >= len(self.toks)


def _describe(t: _Tok | None) -> str:
    if t is None:
        return "<end of action>"
    if t.kind == "string":
        return _go_quote(str(t.val))
    if t.kind == "field":
        return f"<.{t.val}>"
    if t.kind == "ident":
        return f"<{t.val}>"
    return f"<{t.val}>" if t.kind != "number" else f"<{_fmt_v(t.val)}>"


class _Parser:
    def __init__(self, src: _Source, pieces: list[str | _ActionPiece]) -> None:
        self.src = src
        self.pieces = pieces
        self.i = 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.depth = 0
        self.defines: dict[str, list[object]] = {}

    def err(self, pos: int, msg: str) -> _TemplateError:
        return self.src.error(pos, msg)

    def parse(self) -> list[object]:
        nodes, stop = self.parse_list()
        if stop is not None:
            raise self.err(stop.pos, f"unexpected {{{{{stop.toks[0].val}}}}}")
        return nodes

    def parse_list(self) -> tuple[list[object], _ActionPiece | None]:
        nodes: list[object] = []
        while self.i < len(self.pieces):
            p = self.pieces[self.i]
            self.i += 1
            if isinstance(p, str):
                nodes.append(_Text(p))
                continue
            if not p.toks:
                raise self.err(p.pos, "missing value for command")
            t0 = p.toks[0]
            if t0.kind == "ident" and t0.val in _KEYWORDS:
                kw = str(t0.val)
                if kw in ("end", "else"):
                    return nodes, p
                node = self.keyword(kw, p)
                if node is not None:
                    nodes.append(node)
                continue
            cur = _Cursor(p.toks, p.pos)
            pipe = self.pipeline(cur, "command", None)
            nodes.append(_Action(pipe, self.src.line(p.pos)))
        return nodes, None

    def keyword(self, kw: str, p: _ActionPiece) -> object | None:
        line = self.src.line(p.pos)
        rest = p.toks[1:]
        if kw in ("if", "range", "with"):
            return self.control(kw, rest, p.pos)
        if kw in ("break", "continue"):
            if self.range_depth == 0:
                raise self.err(p.pos, f"{{{{{kw}}}}} outside {{{{range}}}}")
            if rest:
                raise self.err(p.pos, f"unexpected {_describe(rest[0])} in {{{{{kw}}}}}")
            return _BreakNode() if kw == "break" else _ContinueNode()
        if kw == "template":
            name, pipe = self.template_args(rest, p.pos, "template", required=False)
            return _TemplateCall(name, pipe, line)
        if kw == "define":
            if self.depth > 0:
                raise self.err(p.pos, "unexpected <define> in command")
            name, _ = self.template_args(rest, p.pos, "define", required=False, no_pipe=True)
            self.defines[name] = self.definition(p.pos)
            return None
        if kw == "block":
            name, pipe = self.template_args(rest, p.pos, "block", required=True)
            self.defines[name] = self.definition(p.pos)
            return _TemplateCall(name, pipe, line)
        raise self.err(p.pos, f"unexpected <{kw}>")

    def definition(self, pos: int) -> list[object]:
        saved_vars, saved_range = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        self.depth += 1
        try:
            body, stop = self.parse_list()
        finally:
            self.vars, self.range_depth = saved_vars, saved_range
            self.depth -= 1
        if stop is None:
            raise self.err(pos, "unexpected EOF")
        if stop.toks[0].val != "end":
            raise self.err(stop.pos, "unexpected {{else}}")
        if len(stop.toks) > 1:
            raise self.err(stop.pos, f"unexpected {_describe(stop.toks[1])} in end")
        return body

    def template_args(self, toks: list[_Tok], pos: int, ctx: str, *, required: bool,
                      no_pipe: bool = False) -> tuple[str, _Pipe | None]:
        if not toks or toks[0].kind != "string":
            raise self.err(pos, f"unexpected {_describe(toks[0] if toks else None)} in {ctx} clause")
        name = str(toks[0].val)
        rest = toks[1:]
        if no_pipe:
            if rest:
                raise self.err(pos, f"unexpected {_describe(rest[0])} in {ctx} clause")
            return name, None
        if not rest:
            if required:
                raise self.err(pos, f"missing value for {ctx}")
            return name, None
        cur = _Cursor(rest, pos)
        return name, self.pipeline(cur, ctx, None)

    def control(self, kw: str, toks: list[_Tok], pos: int) -> _Branch:
        line = self.src.line(pos)
        mark = len(self.vars)
        self.depth += 1
        try:
            pipe = self.pipeline(_Cursor(toks, pos), kw, None)
            if kw == "range":
                self.range_depth += 1
            try:
                body, stop = self.parse_list()
            finally:
                if kw == "range":
                    self.range_depth -= 1
            if stop is None:
                raise self.err(pos, "unexpected EOF")
            else_: list[object] | None = None
            if stop.toks[0].val == "else":
                etoks = stop.toks[1:]
                if etoks and kw in ("if", "with") and etoks[0].kind == "ident" and etoks[0].val == kw:
                    # {{else if x}} is {{else}}{{if x}}...{{end}}{{end}} with the one {{end}} shared.
                    else_ = [self.control(kw, etoks[1:], stop.pos)]
                    return _Branch(kw, pipe, body, else_, line)
                if etoks:
                    raise self.err(stop.pos, f"unexpected {_describe(etoks[0])} in else")
                else_, stop = self.parse_list()
                if stop is None:
                    raise self.err(pos, "unexpected EOF")
                if stop.toks[0].val != "end":
                    raise self.err(stop.pos, "expected end; found {{else}}")
            if len(stop.toks) > 1:
                raise self.err(stop.pos, f"unexpected {_describe(stop.toks[1])} in end")
            return _Branch(kw, pipe, body, else_, line)
        finally:
            del self.vars[mark:]
            self.depth -= 1

    def pipeline(self, cur: _Cursor, ctx: str, end: str | None) -> _Pipe:
        decl: list[str] = []
        is_assign = False
        t0, t1 = cur.peek(), cur.peek(1)
        if t0 is not None and t0.kind == "var" and t1 is not None:
            names: list[_Tok] = []
            if t1.kind in ("declare", "assign"):
                names = [t0]
                op = t1
                cur.i += 2
            elif t1.kind == "comma":
                t2, t3 = cur.peek(2), cur.peek(3)
                if t2 is not None and t2.kind == "var" and t3 is not None and t3.kind in ("declare", "assign"):
                    if ctx != "range":
                        raise self.err(t0.pos, f"too many declarations in {ctx}")
                    names = [t0, t2]
                    op = t3
                    cur.i += 4
            if names:
                is_assign = op.kind == "assign"
                for name_tok in names:
                    name = str(name_tok.val)
                    if is_assign:
                        if name not in self.vars:
                            raise self.err(name_tok.pos, f"undefined variable {_go_quote(name)}")
                    else:
                        self.vars.append(name)
                    decl.append(name)
        cmds: list[_Cmd] = []
        while True:
            args: list[object] = []
            while True:
                t = cur.peek()
                if t is None or t.kind in ("pipe", "rparen"):
                    break
                args.append(self.operand(cur, ctx))
            t = cur.peek()
            if not args:
                raise self.err(t.pos if t else cur.end_pos, f"missing value for {ctx}")
            cmds.append(_Cmd(args))
            if t is not None and t.kind == "pipe":
                cur.next()
                continue
            break
        t = cur.peek()
        if end == "rparen":
            if t is None:
                raise self.err(cur.end_pos, "unclosed left paren")
            cur.next()
        elif t is not None:
            raise self.err(t.pos, f"unexpected {_describe(t)} in {ctx}")
        for n, c in enumerate(cmds[1:], start=2):
            if isinstance(c.args[0], _Lit | _Dot | _Nil):
                raise self.err(cur.end_pos, f"non executable command in pipeline stage {n}")
        return _Pipe(decl, is_assign, cmds)

    def operand(self, cur: _Cursor, ctx: str) -> object:
        t = cur.next()
        node: object
        if t.kind == "ident":
            name = str(t.val)
            if name in _KEYWORDS:
                raise self.err(t.pos, f"unexpected <{name}> in {ctx}")
            if name not in _FUNCS:
                raise self.err(t.pos, f"function {_go_quote(name)} not defined")
            node = _Ident(name)
        elif t.kind == "dot":
            node = _Dot()
        elif t.kind == "nil":
            node = _Nil()
        elif t.kind == "var":
            name = str(t.val)
            if name not in self.vars:
                raise self.err(t.pos, f"undefined variable {_go_quote(name)}")
            node = _Var(name)
        elif t.kind == "field":
            node = _Field((str(t.val),))
        elif t.kind in ("string", "number", "bool"):
            node = _Lit(t.val)
        elif t.kind == "lparen":
            node = _SubPipe(self.pipeline(cur, "parenthesized pipeline", "rparen"))
        else:
            raise self.err(t.pos, f"unexpected {_describe(t)} in operand")
        fields: list[str] = []
        while True:
            nt = cur.peek()
            if nt is None or nt.kind != "field" or nt.spaced:
                break
            fields.append(str(cur.next().val))
        if fields:
            if isinstance(node, _Field):
                node = _Field(node.idents + tuple(fields))
            elif isinstance(node, _Var):
                node = _Var(node.name, tuple(fields))
            elif isinstance(node, _Lit | _Nil | _Dot | _Ident):
                raise self.err(t.pos, f"unexpected . after term {_describe(t)}")
            else:
                node = _Chain(node, tuple(fields))
        return node


# --------------------------------------------------------------------------------------------------------------
# Executor


def _get_field(obj: object, name: str) -> object:
    if obj is None:
        return None
    if isinstance(obj, _Struct):
        return obj.fields.get(name)
    if isinstance(obj, _JsonView):
        return obj.field(name)
    if isinstance(obj, Mapping):
        try:
            return obj.get(name)
        except TypeError:
            return None
    if isinstance(obj, str | bytes | bytearray | int | float | list | tuple):
        return None
    if name.startswith("_"):
        return None
    value = getattr(obj, name, None)
    return None if callable(value) else value


def _range_items(val: object) -> Sequence[tuple[object, object]]:
    if val is None:
        return []
    if isinstance(val, bool):
        raise _TemplateError("range can't iterate over bool")
    if isinstance(val, int):
        # Lazily: `range 1000000000` must not build a list first; the step budget ends the loop.
        return _IntPairs(range(max(val, 0)))
    if isinstance(val, Mapping):
        return _sorted_items(val)
    if isinstance(val, list | tuple):
        return list(enumerate(val))
    raise _TemplateError(f"range can't iterate over {_fmt_v(val)}")


class _IntPairs(Sequence[tuple[int, int]]):
    """`range N` as (i, i) pairs without a list of N items."""

    def __init__(self, r: range) -> None:
        self.r = r

    def __len__(self) -> int:
        return len(self.r)

    def __getitem__(self, i: int) -> tuple[int, int]:  # type: ignore[override]
        return self.r[i], self.r[i]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, i) for i in self.r)


class _Exec:
    def __init__(self, defines: Mapping[str, list[object]], root: object) -> None:
        self.defines = defines
        self.out: list[str] = []
        self.size = 0
        self.steps = 0
        self.deadline = time.monotonic() + _MAX_SECONDS
        self.vars: list[list[object]] = [["$", root]]
        self.line = 0
        self.depth = 0

    def error(self, msg: str) -> _TemplateError:
        return _TemplateError(f"template: :{self.line}: executing: {msg}")

    def tick(self) -> None:
        self.steps += 1
        if self.steps > _MAX_STEPS:
            raise self.error("template execution exceeded its step budget")
        if not self.steps & 255 and time.monotonic() > self.deadline:
            raise self.error("template rendering took too long")

    def emit(self, text: str) -> None:
        self.size += len(text)
        if self.size > _MAX_OUTPUT_CHARS:
            raise self.error("template output is too large")
        self.out.append(text)

    # statements

    def walk(self, nodes: Iterable[object], dot: object) -> None:
        for node in nodes:
            self.tick()
            if isinstance(node, _Text):
                self.emit(node.text)
            elif isinstance(node, _Action):
                self.line = node.line
                val = self.pipe(node.pipe, dot)
                if not node.pipe.decl:
                    self.emit(_fmt_v(val, top=True))
            elif isinstance(node, _Branch):
                self.line = node.line
                if node.kind == "range":
                    self.walk_range(node, dot)
                else:
                    self.walk_if(node, dot)
            elif isinstance(node, _BreakNode):
                raise _Break
            elif isinstance(node, _ContinueNode):
                raise _Continue
            elif isinstance(node, _TemplateCall):
                self.line = node.line
                self.call_template(node, dot)

    def walk_if(self, node: _Branch, dot: object) -> None:
        mark = len(self.vars)
        try:
            val = self.pipe(node.pipe, dot)
            if _truth(val):
                self.walk(node.body, val if node.kind == "with" else dot)
            elif node.else_ is not None:
                self.walk(node.else_, dot)
        finally:
            del self.vars[mark:]

    def walk_range(self, node: _Branch, dot: object) -> None:
        mark = len(self.vars)
        try:
            val = self.pipe(node.pipe, dot)
            try:
                items = _range_items(val)
            except _TemplateError as e:
                raise self.error(str(e)) from None
            if not items:
                if node.else_ is not None:
                    self.walk(node.else_, dot)
                return
            decl = node.pipe.decl
            top = len(self.vars)
            for key, elem in items:
                self.tick()
                if decl:
                    if node.pipe.is_assign:
                        if len(decl) == 2:
                            self.set_var(decl[0], key)
                            self.set_var(decl[1], elem)
                        else:
                            self.set_var(decl[0], elem)
                    else:
                        self.vars[top - 1][1] = elem
                        if len(decl) == 2:
                            self.vars[top - 2][1] = key
                try:
                    self.walk(node.body, elem)
                except _Continue:
                    pass
                except _Break:
                    break
                finally:
                    del self.vars[top:]
        finally:
            del self.vars[mark:]

    def call_template(self, node: _TemplateCall, dot: object) -> None:
        body = self.defines.get(node.name)
        if body is None:
            raise self.error(f"no such template {_go_quote(node.name)}")
        value = self.pipe(node.pipe, dot) if node.pipe is not None else None
        if self.depth >= _MAX_DEPTH:
            raise self.error("exceeded maximum template depth")
        saved = self.vars
        self.vars = [["$", value]]
        self.depth += 1
        try:
            self.walk(body, value)
        finally:
            self.vars = saved
            self.depth -= 1

    # variables

    def get_var(self, name: str) -> object:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise self.error(f"undefined variable: {name}")

    def set_var(self, name: str, value: object) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        raise self.error(f"undefined variable: {name}")

    # expressions

    def pipe(self, pipe: _Pipe, dot: object) -> object:
        val: object = _MISSING
        for cmd in pipe.cmds:
            val = self.command(cmd, dot, val)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, val)
            else:
                self.vars.append([name, val])
        return val

    def not_a_function(self, args: list[object], final: object) -> None:
        if len(args) > 1 or final is not _MISSING:
            raise self.error("can't give argument to non-function")

    def command(self, cmd: _Cmd, dot: object, final: object) -> object:
        first = cmd.args[0]
        if isinstance(first, _Ident):
            return self.call(first.name, cmd.args[1:], dot, final)
        self.not_a_function(cmd.args, final)
        return self.arg(first, dot)

    def arg(self, node: object, dot: object) -> object:
        if isinstance(node, _Field):
            return self.fields(dot, node.idents)
        if isinstance(node, _Var):
            return self.fields(self.get_var(node.name), node.idents)
        if isinstance(node, _Lit):
            return node.value
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Nil):
            return None
        if isinstance(node, _SubPipe):
            return self.pipe(node.pipe, dot)
        if isinstance(node, _Chain):
            return self.fields(self.arg(node.node, dot), node.idents)
        if isinstance(node, _Ident):
            return self.call(node.name, [], dot, _MISSING)
        raise self.error("can't evaluate node")  # pragma: no cover

    def fields(self, value: object, idents: Sequence[str]) -> object:
        for name in idents:
            value = _get_field(value, name)
        return value

    def call(self, name: str, arg_nodes: list[object], dot: object, final: object) -> object:
        fn, lo, hi = _FUNCS[name]
        count = len(arg_nodes) + (final is not _MISSING)
        if count < lo or (hi is not None and count > hi):
            want = f"at least {lo}" if hi is None else str(lo)
            raise self.error(f"wrong number of args for {name}: want {want} got {count}")
        if name in ("and", "or"):
            val: object = None
            for node in arg_nodes:
                val = self.arg(node, dot)
                if _truth(val) != (name == "and"):
                    return val
            return final if final is not _MISSING else val
        argv = [self.arg(a, dot) for a in arg_nodes]
        if final is not _MISSING:
            argv.append(final)
        try:
            result = fn(*argv)
        except _TemplateError as e:
            raise self.error(str(e)) from None
        except (_Break, _Continue):
            raise
        except Exception as e:
            raise self.error(f"error calling {name}: {e}") from None
        if isinstance(result, str) and len(result) > _MAX_OUTPUT_CHARS:
            raise self.error(f"error calling {name}: result is too large")
        return result


# --------------------------------------------------------------------------------------------------------------
# Tree queries


def _pipe_idents(pipe: _Pipe | None) -> Iterable[str]:
    if pipe is None:
        return
    for cmd in pipe.cmds:
        for a in cmd.args:
            yield from _arg_idents(a)


def _arg_idents(a: object) -> Iterable[str]:
    if isinstance(a, _Field):
        yield from a.idents
    elif isinstance(a, _Var):
        yield a.name
        yield from a.idents
    elif isinstance(a, _SubPipe):
        yield from _pipe_idents(a.pipe)
    elif isinstance(a, _Chain):
        yield from _arg_idents(a.node)
        yield from a.idents


def _node_idents(nodes: Iterable[object]) -> Iterable[str]:
    for n in nodes:
        if isinstance(n, _Action):
            yield from _pipe_idents(n.pipe)
        elif isinstance(n, _Branch):
            yield from _pipe_idents(n.pipe)
            yield from _node_idents(n.body)
            if n.else_ is not None:
                yield from _node_idents(n.else_)
        elif isinstance(n, _TemplateCall):
            yield from _pipe_idents(n.pipe)


def _thinking_in_messages(nodes: Iterable[object], inside: bool) -> bool:
    for n in nodes:
        if isinstance(n, _Action):
            if inside and any(i.lower() == "thinking" for i in _pipe_idents(n.pipe)):
                return True
        elif isinstance(n, _Branch):
            pipe_ids = [i.lower() for i in _pipe_idents(n.pipe)]
            if inside and "thinking" in pipe_ids:
                return True
            body_inside = inside or (n.kind == "range" and "messages" in pipe_ids)
            if _thinking_in_messages(n.body, body_inside):
                return True
            if n.else_ is not None and _thinking_in_messages(n.else_, inside):
                return True
        elif isinstance(n, _TemplateCall) and inside and any(i.lower() == "thinking" for i in _pipe_idents(n.pipe)):
            return True
    return False


class _CutState:
    cut = False


def _cut_list(nodes: list[object], st: _CutState) -> list[object]:
    out = []
    for n in nodes:
        r = _cut_node(n, st)
        if r is not None:
            out.append(r)
    return out


def _cut_node(n: object, st: _CutState) -> object | None:
    if st.cut:
        return None
    if isinstance(n, _Action):
        pipe = _cut_pipe(n.pipe, st)
        return None if pipe is None else _Action(pipe, n.line)
    if isinstance(n, _Branch):
        body = _cut_list(n.body, st)
        else_ = None if n.else_ is None else _cut_list(n.else_, st)
        return _Branch(n.kind, n.pipe, body, else_, n.line)
    return n


def _cut_pipe(pipe: _Pipe, st: _CutState) -> _Pipe | None:
    cmds = []
    for c in pipe.cmds:
        args = []
        for a in c.args:
            r = _cut_arg(a, st)
            if r is not None:
                args.append(r)
        if not args:
            return None
        cmds.append(_Cmd(args))
    return _Pipe(pipe.decl, pipe.is_assign, cmds) if cmds else None


def _cut_arg(a: object, st: _CutState) -> object | None:
    if isinstance(a, _Field) and "Response" in a.idents:
        st.cut = True
        return a
    if st.cut:
        return None
    if isinstance(a, _SubPipe):
        pipe = _cut_pipe(a.pipe, st)
        return None if pipe is None else _SubPipe(pipe)
    return a


# --------------------------------------------------------------------------------------------------------------
# Public API


_RESPONSE_ACTION = _Action(_Pipe([], False, [_Cmd([_Field(("Response",))])]), 0)


class GoTemplate:
    """A parsed Go template. Syntax errors raise InvalidRequest("template error: ...")."""

    def __init__(self, source: str) -> None:
        self.source = source
        if len(source) > _MAX_SOURCE_CHARS:
            raise InvalidRequest("template error: template is too large")
        src = _Source(source)
        try:
            parser = _Parser(src, _lex(src))
            nodes = parser.parse()
        except _TemplateError as e:
            raise InvalidRequest(f"template error: {e}") from None
        except RecursionError:
            raise InvalidRequest("template error: template is nested too deeply") from None
        self._defines = parser.defines
        idents = list(_node_idents(nodes))
        for body in parser.defines.values():
            idents.extend(_node_idents(body))
        self._vars = frozenset(i.lower() for i in idents)
        self._thinking = _thinking_in_messages(nodes, False) or any(
            _thinking_in_messages(body, False) for body in parser.defines.values())
        if "messages" not in self._vars and "response" not in self._vars:
            nodes = [*nodes, _RESPONSE_ACTION]  # as Ollama does: the reply follows the prompt
        self._nodes = nodes
        self._legacy_last: list[object] | None = None

    def __repr__(self) -> str:
        return f"GoTemplate({self.source!r})"

    @property
    def identifiers(self) -> frozenset[str]:
        """Every field and variable name the template mentions, lowercased (Ollama's `Template.Vars`)."""
        return self._vars

    def render(self, data: Mapping[str, object]) -> str:
        return self._run(self._nodes, data)

    def _run(self, nodes: list[object], data: object) -> str:
        ex = _Exec(self._defines, data)
        try:
            ex.walk(nodes, data)
        except _TemplateError as e:
            raise InvalidRequest(f"template error: {e}") from None
        except (_Break, _Continue):  # pragma: no cover - the parser rejects these outside range
            raise InvalidRequest("template error: break or continue outside range") from None
        except RecursionError:
            raise InvalidRequest("template error: template is nested too deeply") from None
        except MemoryError:
            raise InvalidRequest("template error: out of memory") from None
        return "".join(ex.out)

    def _render_legacy_last(self, data: Mapping[str, object]) -> str:
        if self._legacy_last is None:
            self._legacy_last = _cut_list(self._nodes, _CutState())
        return self._run(self._legacy_last, data)


def uses_tools(t: GoTemplate) -> bool:
    return "tools" in t._vars


def uses_suffix(t: GoTemplate) -> bool:
    return "suffix" in t._vars


def uses_thinking(t: GoTemplate) -> bool:
    return t._thinking


def uses_messages(t: GoTemplate) -> bool:
    return "messages" in t._vars


def uses_response(t: GoTemplate) -> bool:
    return "response" in t._vars


@dataclass
class _Merged:
    role: str
    content: str
    thinking: str
    images: list[bytes] = field(default_factory=list)
    tool_calls: list[ToolCallLike] = field(default_factory=list)
    tool_name: str = ""
    tool_call_id: str = ""


def _collate(messages: Sequence[MessageLike]) -> tuple[str, list[_Merged]]:
    """Ollama's collate: all system contents joined, consecutive same-role messages merged (not tool)."""
    system: list[str] = []
    out: list[_Merged] = []
    for m in messages:
        role = m.role
        content = m.content or ""
        if role == "system":
            system.append(content)
        images = list(getattr(m, "images", ()) or ())
        calls = list(getattr(m, "tool_calls", ()) or ())
        thinking = getattr(m, "thinking", "") or ""
        if out and out[-1].role == role and role != "tool":
            prev = out[-1]
            prev.content += "\n\n" + content
            prev.images.extend(images)
            prev.tool_calls.extend(calls)
            if thinking:
                prev.thinking = prev.thinking + "\n\n" + thinking if prev.thinking else thinking
            continue
        out.append(_Merged(role, content, thinking, images, calls,
                           getattr(m, "tool_name", "") or "", getattr(m, "tool_call_id", "") or ""))
    return "\n\n".join(system), out


def _tool_call_value(c: ToolCallLike, position: int) -> _Struct:
    args = c.arguments
    arguments = _JsonMap(args) if isinstance(args, Mapping) else args
    index = getattr(c, "index", position)
    name = getattr(c, "name", "")
    call_id = getattr(c, "id", "") or ""
    fn_json = {"index": index, "name": name, "arguments": arguments}
    call_json: dict[str, object] = {"id": call_id} if call_id else {}
    call_json["function"] = fn_json
    fn = _Struct({"Index": index, "Name": name, "Arguments": arguments}, fn_json)
    return _Struct({"ID": call_id, "Function": fn}, call_json)


def _message_value(m: _Merged) -> _Struct:
    calls = [_tool_call_value(c, i) for i, c in enumerate(m.tool_calls)]
    js: dict[str, object] = {"role": m.role, "content": m.content}
    if m.thinking:
        js["thinking"] = m.thinking
    if m.images:
        js["images"] = m.images
    if calls:
        js["tool_calls"] = calls
    if m.tool_name:
        js["tool_name"] = m.tool_name
    if m.tool_call_id:
        js["tool_call_id"] = m.tool_call_id
    return _Struct({
        "Role": m.role,
        "Content": m.content,
        "Thinking": m.thinking,
        "Images": list(m.images),
        "ToolCalls": calls,
        "ToolName": m.tool_name,
        "ToolCallID": m.tool_call_id,
    }, js)


def _tool_value(t: ToolLike) -> _JsonView:
    raw = getattr(t, "raw", None)
    if not raw:
        raw = {"type": "function",
               "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
    return _JsonView(raw)


def render_chat(
    template: GoTemplate,
    messages: Sequence[MessageLike],
    tools: Sequence[ToolLike],
    *,
    think: bool | None = None,
    think_level: str = "",
) -> str:
    """Render a conversation with Ollama's Go-template data model (spec 7.2)."""
    system, merged = _collate(messages)
    thinking: dict[str, object] = {"Think": bool(think), "ThinkLevel": think_level, "IsThinkSet": think is not None}
    if uses_messages(template):
        data: dict[str, object] = {
            "System": system,
            "Messages": [_message_value(m) for m in merged],
            "Tools": _JsonList(_tool_value(t) for t in tools) if tools else None,
            "Response": "",
            **thinking,
        }
        return template.render(data)
    # Legacy form: one run per (system, user, assistant) turn; the last run stops right after .Response.
    parts: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        parts.append(template.render({**turn, **thinking}))
        turn.update(System="", Prompt="", Response="")

    for m in merged:
        if m.role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = m.content
        elif m.role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = m.content
        elif m.role == "assistant":
            turn["Response"] = m.content
    parts.append(template._render_legacy_last({**turn, **thinking}))
    return "".join(parts)
