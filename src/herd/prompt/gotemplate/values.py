"""Go values as templates see them: limits, errors, Go-like views of the data, and Go's printing (fmt %v,
encoding/json, printf)."""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal

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
