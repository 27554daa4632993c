"""Read the text form written by `printer.print_graph` back into a `Graph`.

`parse(print_graph(g), constants=g.constants) == g`; graphs whose constants are all small
(printed inline) need no constant store. Attribute values are read into the op's attrs
dataclass; lists become tuples, so attrs stay hashable.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from qcompiler.errors import ParseError, QCompilerError
from qcompiler.ir.graph import Graph, Value
from qcompiler.ir.printer import const_digest
from qcompiler.ir.registry import get_op
from qcompiler.ir.types import DType, QParams, TensorType

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<func>@[A-Za-z0-9_.]+)
  | (?P<digest>sha256:[0-9a-f]+)
  | (?P<number>-?(?:(?:inf|nan)(?![A-Za-z0-9_])|(?:\d+\.?\d*(?:[eE][-+]?\d+)?)))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<arrow>->)
  | (?P<punct>[()\[\]{},:=<>])
    """,
    re.VERBOSE,
)


class _Tokens:
    def __init__(self, text: str) -> None:
        self.toks: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise ParseError(f"unexpected character {text[pos]!r} at {self._where(text, pos)}")
            kind = m.lastgroup or ""
            if kind != "ws":
                self.toks.append((kind, m.group(), pos))
            pos = m.end()
        self.text = text
        self.i = 0

    @staticmethod
    def _where(text: str, pos: int) -> str:
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return f"line {line}, column {col}"

    def peek(self, k: int = 0) -> tuple[str, str]:
        j = self.i + k
        if j >= len(self.toks):
            return ("eof", "")
        kind, val, _ = self.toks[j]
        return kind, val

    def error(self, msg: str) -> ParseError:
        pos = self.toks[self.i][2] if self.i < len(self.toks) else len(self.text)
        return ParseError(f"{msg} at {self._where(self.text, pos)}")

    def next(self) -> tuple[str, str]:
        tok = self.peek()
        if tok[0] == "eof":
            raise self.error("unexpected end of input")
        self.i += 1
        return tok

    def expect(self, val: str) -> None:
        kind, v = self.next()
        if v != val:
            self.i -= 1
            raise self.error(f"expected {val!r}, found {v!r}")

    def accept(self, val: str) -> bool:
        if self.peek()[1] == val and self.peek()[0] in ("punct", "arrow", "ident"):
            self.i += 1
            return True
        return False


def _number(tok: str) -> int | float:
    if re.fullmatch(r"-?\d+", tok):
        return int(tok)
    return float(tok)


class _Parser:
    def __init__(self, text: str, constants: Mapping[str, np.ndarray] | None) -> None:
        self.t = _Tokens(text)
        self.constants = constants or {}
        self.env: dict[str, Value] = {}

    # --- types ---------------------------------------------------------------------------

    def parse_type(self) -> TensorType:
        kind, short = self.t.next()
        if kind != "ident":
            raise self.t.error(f"expected a dtype, found {short!r}")
        dtype = DType.from_short(short)
        self.t.expect("[")
        shape: list[int] = []
        while not self.t.accept("]"):
            kind, v = self.t.next()
            if kind != "number":
                raise self.t.error(f"expected a dimension, found {v!r}")
            shape.append(int(v))
            self.t.accept(",")
        qp = None
        if self.t.peek() == ("ident", "q") and self.t.peek(1)[1] == "(":
            qp = self.parse_qparams()
        return TensorType(tuple(shape), dtype, qp)

    def parse_qparams(self) -> QParams:
        self.t.expect("q")
        self.t.expect("(")
        if self.t.peek()[1] == "[":
            scales = self.parse_list()
            self.t.expect(",")
            zps = self.parse_list()
            self.t.expect(",")
            self.t.expect("axis")
            self.t.expect("=")
            axis = int(self.t.next()[1])
            scheme = "affine"
            if self.t.accept(","):
                scheme = self.t.next()[1]
            self.t.expect(")")
            return QParams(tuple(float(s) for s in scales), tuple(zps), axis, scheme)
        scale = float(self.t.next()[1])
        self.t.expect(",")
        zp = _number(self.t.next()[1])
        scheme = "affine"
        if self.t.accept(","):
            scheme = self.t.next()[1]
        self.t.expect(")")
        return QParams((scale,), (zp,), None, scheme)  # type: ignore[arg-type]

    # --- attribute values ----------------------------------------------------------------

    def parse_list(self) -> tuple[Any, ...]:
        self.t.expect("[")
        items: list[Any] = []
        while not self.t.accept("]"):
            items.append(self.parse_value())
            if not self.t.accept(","):
                self.t.expect("]")
                break
        return tuple(items)

    def parse_value(self) -> Any:
        kind, v = self.t.peek()
        if v == "[" and kind == "punct":
            return self.parse_list()
        if kind == "number":
            self.t.next()
            return _number(v)
        if kind == "string":
            self.t.next()
            return json.loads(v)
        if kind == "ident":
            if v == "q" and self.t.peek(1)[1] == "(":
                return self.parse_qparams()
            if v == "type" and self.t.peek(1)[1] == "<":
                self.t.next()
                self.t.expect("<")
                ty = self.parse_type()
                self.t.expect(">")
                return ty
            self.t.next()
            if v in ("true", "false"):
                return v == "true"
            if v == "none":
                return None
            return DType.from_short(v)
        raise self.t.error(f"expected an attribute value, found {v!r}")

    def parse_attrs(self, op: str) -> Any:
        opdef = get_op(op)
        values: dict[str, Any] = {}
        if self.t.accept("{"):
            while not self.t.accept("}"):
                kind, key = self.t.next()
                if kind != "ident":
                    raise self.t.error(f"expected an attribute name, found {key!r}")
                self.t.expect("=")
                values[key] = self.parse_value()
                self.t.accept(",")
        names = {f.name for f in dataclasses.fields(opdef.Attrs)}
        unknown = set(values) - names
        if unknown:
            raise self.t.error(
                f"op {op} has no attribute(s) {sorted(unknown)}; it takes {sorted(names)}"
            )
        try:
            return opdef.Attrs(**values)
        except (TypeError, QCompilerError) as e:
            raise self.t.error(f"bad attributes for op {op}: {e}") from None

    # --- graph ---------------------------------------------------------------------------

    def ref(self) -> Value:
        kind, v = self.t.next()
        if kind != "value":
            raise self.t.error(f"expected a %value, found {v!r}")
        try:
            return self.env[v[1:]]
        except KeyError:
            raise self.t.error(f"use of undefined value {v}") from None

    def define(self, name: str, value: Value) -> None:
        if name in self.env:
            raise self.t.error(f"value %{name} is defined twice")
        self.env[name] = value

    def parse_graph(self) -> Graph:
        self.t.expect("func")
        kind, fname = self.t.next()
        if kind != "func":
            raise self.t.error(f"expected @name, found {fname!r}")
        g = Graph(fname[1:])
        self.t.expect("(")
        while not self.t.accept(")"):
            kind, vname = self.t.next()
            if kind != "value":
                raise self.t.error(f"expected a parameter %name, found {vname!r}")
            self.t.expect(":")
            self.define(vname[1:], g.add_input(self.parse_type(), vname[1:]))
            self.t.accept(",")
        self.t.expect("->")
        self.t.expect("(")
        ret_types: list[TensorType] = []
        while not self.t.accept(")"):
            ret_types.append(self.parse_type())
            self.t.accept(",")
        self.t.expect("{")
        while self.t.peek() != ("ident", "return"):
            self.parse_node(g)
        self.t.expect("return")
        outs = [self.ref()]
        while self.t.accept(","):
            outs.append(self.ref())
        self.t.expect("}")
        if self.t.peek()[0] != "eof":
            raise self.t.error("trailing text after the function")
        if [v.type for v in outs] != ret_types:
            raise ParseError("the returned values' types do not match the function signature")
        g.set_outputs(outs)
        return g

    def parse_node(self, g: Graph) -> None:
        names: list[str] = []
        while True:
            kind, v = self.t.next()
            if kind != "value":
                raise self.t.error(f"expected a %result name, found {v!r}")
            names.append(v[1:])
            if not self.t.accept(","):
                break
        self.t.expect("=")
        kind, op = self.t.next()
        if kind != "ident":
            raise self.t.error(f"expected an op name, found {op!r}")
        if op == "const":
            self.parse_const(g, names)
            return
        self.t.expect("(")
        args: list[Value] = []
        while not self.t.accept(")"):
            args.append(self.ref())
            self.t.accept(",")
        attrs = self.parse_attrs(op)
        self.t.expect(":")
        types = [self.parse_type()]
        while self.t.accept(","):
            types.append(self.parse_type())
        loc = self.parse_loc()
        if len(types) != len(names):
            raise self.t.error(f"{len(names)} results but {len(types)} types")
        node = g.create_node(op, args, attrs, types, loc, names)
        for n, out in zip(names, node.outputs):
            self.define(n, out)

    def parse_loc(self) -> str | None:
        if self.t.peek() == ("ident", "loc"):
            self.t.next()
            self.t.expect("(")
            kind, v = self.t.next()
            if kind != "string":
                raise self.t.error("expected a string in loc(...)")
            self.t.expect(")")
            return str(json.loads(v))
        return None

    def parse_const(self, g: Graph, names: list[str]) -> None:
        kind, cname = self.t.next()
        if kind != "string":
            raise self.t.error("expected the constant's quoted name")
        key = json.loads(cname)
        kind, v = self.t.peek()
        payload: list[Any] | None = None
        digest = None
        if kind == "digest":
            self.t.next()
            digest = v.split(":", 1)[1]
        elif v == "dense":
            self.t.next()
            self.t.expect("<")
            payload = list(self.parse_list())
            self.t.expect(">")
        else:
            raise self.t.error("expected dense<[...]> or sha256:<digest> after the const name")
        self.t.expect(":")
        ty = self.parse_type()
        loc = self.parse_loc()
        if payload is not None:
            data = np.array(payload, dtype=ty.dtype.np).reshape(ty.shape)
        else:
            if key not in self.constants:
                raise self.t.error(f"constant {key!r} is not in the constant store")
            data = np.asarray(self.constants[key])
            if const_digest(data) != digest:
                raise self.t.error(f"constant {key!r} does not match its digest {digest}")
        if len(names) != 1:
            raise self.t.error("a const has one result")
        from qcompiler.ir.registry import ConstAttrs

        g.constants[key] = np.array(data, order="C")
        ty.check_array(g.constants[key], f"constant {key!r}")
        node = g.create_node("const", [], ConstAttrs(key), [ty], loc, names)
        self.define(names[0], node.output)


def parse(text: str, constants: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Parse the text form of one graph. `constants` supplies data printed as digests."""
    return _Parser(text, constants).parse_graph()
