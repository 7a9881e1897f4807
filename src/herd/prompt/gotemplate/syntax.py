"""Go template syntax: the node tree, the lexer and the parser."""

from __future__ import annotations

import re
from dataclasses import dataclass

from herd.prompt.gotemplate.functions import _FUNCS
from herd.prompt.gotemplate.values import _fmt_v, _go_quote, _TemplateError

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
