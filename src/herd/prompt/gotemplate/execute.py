"""Running a parsed tree against data (with step, output and time budgets), and queries on the tree."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence

from herd.prompt.gotemplate.functions import _FUNCS, _truth
from herd.prompt.gotemplate.syntax import (
    _Action,
    _Branch,
    _BreakNode,
    _Chain,
    _Cmd,
    _ContinueNode,
    _Dot,
    _Field,
    _Ident,
    _Lit,
    _Nil,
    _Pipe,
    _SubPipe,
    _TemplateCall,
    _Text,
    _Var,
)
from herd.prompt.gotemplate.values import (
    _MAX_DEPTH,
    _MAX_OUTPUT_CHARS,
    _MAX_SECONDS,
    _MAX_STEPS,
    _MISSING,
    _Break,
    _Continue,
    _fmt_v,
    _go_quote,
    _JsonView,
    _sorted_items,
    _Struct,
    _TemplateError,
)

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
